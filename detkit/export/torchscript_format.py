"""TorchScript exports: trace the network, script the post-processing, save with detkit metadata; load and run.

``torch.jit.script`` cannot compile detkit's SSDs (dynamic Python in the backbone and head), so their network is
traced at the export size and only the selection (threshold, top-k, NMS) is scripted; torchvision detectors are
scripted whole, classifiers traced. A TorchScript file is a program of TorchScript ops (no Python pickles run).
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision  # noqa: F401  (registers torchvision::nms, which scripted detectors call)
from torch import Tensor, nn

from detkit.export.graphs import ClassifierGraph, SingleShotGraph, TorchvisionGraph
from detkit.export.meta import ExportMeta

__all__ = ["TorchScriptSession", "is_torchscript_file", "torchscript_bytes"]

_META_FILE = "detkit.json"


def _compile(graph: nn.Module, example: Sequence[Tensor]) -> torch.jit.ScriptModule:
    """The graph as TorchScript: traced network + scripted selection, scripted whole, or traced whole."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notes: the export is checked by running it
        if isinstance(graph, SingleShotGraph):
            graph.net = torch.jit.trace(graph.net, (example[0],), check_trace=False)  # parity is checked after
            return torch.jit.script(graph)
        if isinstance(graph, TorchvisionGraph):
            return torch.jit.script(graph)
        if isinstance(graph, ClassifierGraph):
            return torch.jit.trace(graph, (example[0],), check_trace=False)
    raise TypeError(f"graph: expected a detkit.export.graphs module, got {type(graph).__name__}")


def torchscript_bytes(graph: nn.Module, example: Sequence[Tensor], meta: ExportMeta) -> bytes:
    """``graph`` compiled to TorchScript with ``meta`` as the extra file ``detkit.json``; the saved archive's bytes.

    Args:
        graph: a :mod:`detkit.export.graphs` module in eval mode (a ``SingleShotGraph``'s ``net`` is replaced by
            its trace).
        example: example inputs, ``example[0]`` the ``Tensor[B, 3, S, S]`` images.
        meta: the export metadata.
    """
    module = _compile(graph, example)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        torch.jit.save(module, buf, _extra_files={_META_FILE: meta.to_json()})
    return buf.getvalue()


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``code/`` and ``constants.pkl``), not a checkpoint."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


class TorchScriptSession:
    """A loaded detkit TorchScript export.

    Args:
        model: the file, or its bytes.
        device: where the module and its inputs go.

    Attributes:
        meta: the export's :class:`ExportMeta`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a TorchScript archive, or one without detkit metadata.
    """

    def __init__(self, model: str | os.PathLike | bytes, device: str | torch.device = "cpu") -> None:
        source = "(bytes)" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise FileNotFoundError(f"export {model} does not exist")
        self.device = torch.device(device)
        extra = {_META_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
                self.module = torch.jit.load(io.BytesIO(model) if isinstance(model, bytes) else str(model),
                                             map_location=self.device, _extra_files=extra)
        except Exception as err:  # torch raises several types for truncated or foreign archives
            raise ValueError(f"export {source} cannot be loaded as TorchScript: {type(err).__name__}: "
                             f"{str(err)[:300]}") from None
        if not extra[_META_FILE]:
            raise ValueError(f"export {source} holds no detkit metadata ({_META_FILE}); export models with "
                             "tools/export.py")
        self.meta = ExportMeta.from_json(extra[_META_FILE], source)
        self.module.eval()

    @torch.no_grad()
    def run(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        """Run the module on ``inputs`` (``images`` first, then the thresholds of a detector); CPU tensors out."""
        args = [inputs["images"].to(self.device)]
        if self.meta.task == "detect":
            args += [inputs[name].to(self.device) for name in ("score_threshold", "iou_threshold", "max_detections")]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="RCNN always returns")  # torchvision's scripted-mode notice
            out = self.module(*args)
        return [t.cpu() for t in (out if isinstance(out, (tuple, list)) else (out,))]
