"""ONNX exports: write a graph (opset >= 17, TorchScript-based exporter) with detkit metadata, run it with ONNX Runtime.

``onnx`` and ``onnxruntime`` are optional (``pip install detkit[export]``): they are imported when first needed.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkit.export.meta import ExportMeta

__all__ = ["MIN_OPSET", "OnnxSession", "onnx_bytes"]

#: the lowest opset detkit exports (NonMaxSuppression, Unsqueeze/Squeeze with axes inputs)
MIN_OPSET = 17
_META_KEY = "detkit"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'detkit[export]'") from None
    return onnx


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("running an ONNX export needs onnxruntime: pip install 'detkit[export]' (or "
                         "onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def onnx_bytes(graph: nn.Module, example: Sequence[Tensor], input_names: Sequence[str], output_names: Sequence[str],
               meta: ExportMeta, *, dynamic_batch: bool, opset: int = MIN_OPSET) -> bytes:
    """Trace ``graph`` on ``example`` into an ONNX model holding ``meta``; returns the serialised model.

    Args:
        graph: the module to export (eval mode), e.g. :class:`detkit.export.graphs.SingleShotGraph`.
        example: example inputs, ``example[0]`` the ``Tensor[B, 3, S, S]`` images.
        input_names, output_names: graph input and output names.
        meta: the metadata stored as ``metadata_props["detkit"]``.
        dynamic_batch: make the image batch dimension dynamic (else it is ``example[0]``'s).
        opset: ONNX opset (>= 17).

    Raises:
        ValueError: an opset below 17, or the model fails the ONNX checker.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset: expected >= {MIN_OPSET}, got {opset}")
    onnx = _onnx()
    # every output has a dynamic first dimension (detections per call); images a dynamic batch when asked
    axes: dict[str, dict[int, str]] = {name: {0: f"{name}_rows"} for name in output_names}
    if dynamic_batch:
        axes[input_names[0]] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notes: the export is checked by running it
        torch.onnx.export(graph, tuple(example), buf, dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names), dynamic_axes=axes)
    model = onnx.load_from_string(buf.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = _META_KEY, meta.to_json()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ValueError(f"the exported ONNX graph is invalid: {err}") from None
    return model.SerializeToString()


def _providers(ort: Any, device: str | torch.device) -> list[str]:
    """ONNX Runtime providers for ``device``; ``"auto"`` is CUDA when onnxruntime has it and a GPU is present."""
    if str(device) == "auto":
        cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
        device = "cuda" if cuda else "cpu"
    device = torch.device(device)
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device: onnxruntime here has no provider for {device} (available: "
                     f"{ort.get_available_providers()}); install onnxruntime-gpu for CUDA or use --device cpu")


class OnnxSession:
    """An ONNX Runtime session on a detkit ONNX export, taking and returning torch tensors.

    Args:
        model: the ``.onnx`` file, or its bytes.
        device: ``cpu``, ``cuda[:N]`` (needs onnxruntime-gpu) or ``auto`` (CUDA when available, else CPU).
        threads: intra-op threads (default: torch's, so that comparisons run alike).

    Attributes:
        meta: the export's :class:`ExportMeta`.
        input_names: the graph's inputs, in order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX model ONNX Runtime can load, or one without detkit metadata.
    """

    def __init__(self, model: str | os.PathLike | bytes, device: str | torch.device = "cpu",
                 threads: int | None = None) -> None:
        ort = _onnxruntime()
        source = "(bytes)" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise FileNotFoundError(f"export {model} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        providers = _providers(ort, device)
        self.device = torch.device("cuda" if providers[0] == "CUDAExecutionProvider" else "cpu")
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for corrupt or foreign files
            raise ValueError(f"export {source} cannot be loaded by ONNX Runtime: {type(err).__name__}: "
                             f"{str(err)[:300]}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if _META_KEY not in props:
            raise ValueError(f"export {source} holds no detkit metadata; export models with tools/export.py")
        self.meta = ExportMeta.from_json(props[_META_KEY], source)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = self.session.get_inputs()[0].shape  # [B, 3, S, S]; B is a name when dynamic
        if len(shape) != 4 or shape[1] != 3 or shape[2:] != [self.meta.input_size] * 2:
            raise ValueError(f"export {source}: its graph takes images of shape {shape}, but its metadata says "
                             f"{self.meta.input_size} px squares; the file does not match its metadata")

    def run(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        """Run the graph on the named ``inputs`` it has (others are ignored); outputs as CPU tensors."""
        feeds = {name: np.ascontiguousarray(inputs[name].detach().cpu().numpy()) for name in self.input_names}
        return [torch.from_numpy(np.asarray(v)) for v in self.session.run(None, feeds)]
