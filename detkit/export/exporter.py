"""``export_checkpoint``: a detkit checkpoint to a verified ONNX or TorchScript file with its metadata inside.

The export is built in memory, run against the PyTorch model on sample inputs and on validation images, and
written (atomically) only when both agree; otherwise ``ExportMismatchError`` says by how much they differ.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.data.images import is_image_file
from detkit.export.graphs import (
    DETECTION_INPUTS,
    DETECTION_OUTPUTS,
    ClassifierGraph,
    SingleShotGraph,
    TorchvisionGraph,
)
from detkit.export.meta import FORMATS, ExportMeta
from detkit.export.onnx_format import MIN_OPSET, onnx_bytes
from detkit.export.runtime import ExportedClassifier, ExportedDetector, open_export
from detkit.export.torchscript_format import torchscript_bytes
from detkit.export.verify import Parity, compare_detections, compare_logits
from detkit.infer.classifier import DEFAULT_IMG_SIZE, ClassificationPredictor
from detkit.infer.predictor import Predictor, checkpoint_preprocessing
from detkit.infer.sources import find_sources
from detkit.infer.writers import read_batch
from detkit.io import atomic_write_bytes
from detkit.models.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from detkit.models.detector import set_postprocess
from detkit.models.registry import is_detector
from detkit.models.single_shot import SingleShotDetector
from detkit.models.tv_detection import TorchvisionDetector

__all__ = ["ExportMismatchError", "ExportReport", "default_export_path", "export_checkpoint"]

logger = logging.getLogger(__name__)

#: score threshold of the sample-input comparison of detectors: low, so that many boxes reach NMS
SAMPLE_SCORE_THRESH = 0.01
#: score threshold of the image comparison of detectors whose thresholds are graph inputs (at most the default)
IMAGES_SCORE_THRESH = 0.05
#: validation images compared by default
VERIFY_IMAGES = 8


class ExportMismatchError(ValueError):
    """An export whose outputs differ from the PyTorch model's; nothing was written."""


@dataclass
class ExportReport:
    """What :func:`export_checkpoint` wrote and how closely it matches PyTorch."""

    path: Path
    meta: ExportMeta
    size_bytes: int = 0
    parity: list[Parity] = field(default_factory=list)
    images_source: str = ""  # where the compared images came from

    def lines(self) -> list[str]:
        """The report as printable lines."""
        batch = "any batch" if self.meta.batch_size is None else f"batch {self.meta.batch_size}"
        head = (f"wrote {self.path} ({self.meta.format}, {self.meta.task}, {self.meta.model}, "
                f"{self.meta.input_size} px, {batch}, {self.size_bytes / 1e6:.1f} MB)")
        return [head] + [f"  parity {p}" for p in self.parity] + [f"  images: {self.images_source}"]


def default_export_path(checkpoint: str | os.PathLike, format: str) -> Path:
    """Beside the checkpoint: ``best.pt`` -> ``best.onnx`` / ``best.torchscript.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + (".onnx" if format == "onnx" else ".torchscript.pt"))


def _layout(model: nn.Module, task: str, format: str, dynamic_batch: bool) -> tuple[str, int | None]:
    """``(postprocess kind, fixed batch or None)`` of ``model``'s export; ``ValueError`` when it has none."""
    any_batch = dynamic_batch or format == "torchscript"  # a traced or scripted module takes any batch
    if isinstance(model, SingleShotDetector):
        return "inputs", None if any_batch else 1
    if isinstance(model, TorchvisionDetector):
        if format == "onnx" and dynamic_batch:
            raise ValueError(f"dynamic_batch: torchvision detectors export to ONNX one image per call; drop "
                             f"--dynamic-batch for {type(model.model).__name__}")
        return "fixed", 1 if format == "onnx" else None
    if task == "detect":
        raise ValueError(f"{type(model).__name__} has no export graph (single-shot and torchvision detectors do)")
    return "none", None if any_batch else 1


def _build_graph(model: nn.Module, meta: ExportMeta) -> nn.Module:
    """The export module of ``model``, in eval mode (exporters restore a module's mode, submodules included)."""
    if isinstance(model, SingleShotDetector):
        return SingleShotGraph(model, meta.input_size).eval()
    return (TorchvisionGraph(model) if isinstance(model, TorchvisionDetector) else ClassifierGraph(model)).eval()


def _example(meta: ExportMeta, batch: int) -> list[torch.Tensor]:
    images = torch.randn(batch, 3, meta.input_size, meta.input_size, generator=torch.Generator().manual_seed(0))
    if meta.task == "classify":
        return [images]
    return [images, torch.tensor([meta.score_thresh], dtype=torch.float32),
            torch.tensor([meta.nms_thresh], dtype=torch.float32), torch.tensor([meta.max_det], dtype=torch.int64)]


def _serialise(graph: nn.Module, meta: ExportMeta, opset: int) -> bytes:
    example = _example(meta, 2 if meta.batch_size is None else meta.batch_size)
    if meta.format == "torchscript":
        return torchscript_bytes(graph, example, meta)
    names = (DETECTION_INPUTS, DETECTION_OUTPUTS) if meta.task == "detect" else (("images",), ("logits",))
    return onnx_bytes(graph, example, names[0], names[1], meta, dynamic_batch=meta.batch_size is None, opset=opset)


def _verification_images(cfg: Any, source: str | os.PathLike | None, limit: int) -> tuple[list[np.ndarray], str]:
    """Up to ``limit`` images to compare on: ``source``, else the checkpoint's validation split, else generated."""
    if source is not None:
        files = find_sources(source)
        where = str(source)
    else:
        split = Path(cfg.data.root) / (cfg.data.val_split or "val")
        files = sorted(Path(p) for p in glob.glob(str(split / "**" / "*"), recursive=True) if is_image_file(p))
        where = f"validation split {split}"
    images = read_batch(files, range(min(len(files), limit)), [])[1] if files else []
    if images:
        return images, f"{len(images)} images of {where}"
    rng = np.random.default_rng(0)
    generated = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((120, 160), (97, 64), (64, 64))]
    return generated, f"{len(generated)} generated images ({where} has no readable images)"


def _check_samples(model: nn.Module, exported: Any, meta: ExportMeta) -> Parity:
    """Raw outputs on random normalised inputs: logits, or detections at a low threshold (many boxes reach NMS)."""
    images = _example(meta, 2)[0]
    with torch.no_grad():
        if meta.task == "classify":
            return compare_logits(model(images), exported(images), "logits on 2 sample inputs")
        thresh = meta.score_thresh if meta.postprocess == "fixed" else SAMPLE_SCORE_THRESH
        set_postprocess(model, score_thresh=thresh)
        exported.score_thresh = thresh
        parity = compare_detections(model(images), exported(images), f"detections on 2 sample inputs "
                                    f"(score > {thresh})", threshold=thresh)
        set_postprocess(model, score_thresh=meta.score_thresh)
        exported.score_thresh = meta.score_thresh
        return parity


def _check_images(model: nn.Module, exported: Any, meta: ExportMeta, images: list[np.ndarray]) -> Parity:
    """The full inference path (preprocessing, model, mapping back) on real images, with the export's defaults."""
    common = {"mean": meta.mean, "std": meta.std, "img_size": meta.input_size}
    if meta.task == "classify":
        ref = ClassificationPredictor(model, meta.classes, eval_resize_ratio=meta.eval_resize_ratio, **common)
        got = ClassificationPredictor(exported, meta.classes, eval_resize_ratio=meta.eval_resize_ratio, **common)
        return compare_logits(ref.predict(images), got.predict(images), f"probabilities on {len(images)} images")
    # a low threshold where the graph takes it as an input: more detections compared than a run's default keeps
    conf = meta.score_thresh if meta.postprocess == "fixed" else min(meta.score_thresh, IMAGES_SCORE_THRESH)
    options = {"resize_mode": meta.resize_mode, "conf": conf, "iou": meta.nms_thresh, "max_det": meta.max_det,
               **common}
    ref = Predictor(model, meta.classes, meta.category_ids, **options)
    got = Predictor(exported, meta.classes, meta.category_ids, **options)
    scale = max(max(im.shape[:2]) for im in images) / meta.input_size  # input pixels -> original pixels
    what = f"detections on {len(images)} images (score > {conf})"
    return compare_detections(ref.predict(images), got.predict(images), what, threshold=conf,
                              box_tol=0.05 * max(1.0, scale))


def _export_meta(ckpt: dict[str, Any], source: Path, model: nn.Module, format: str, size: int | None,
                 thresholds: dict[str, Any]) -> ExportMeta:
    cfg = checkpoint_config(ckpt)
    classes, meta, mean, std = checkpoint_preprocessing(ckpt, source)
    detect = is_detector(meta.name or cfg.model.name)
    if size is None:
        size = cfg.data.img_size or meta.input_size or (None if detect else DEFAULT_IMG_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"img_size: expected a positive int, got {size!r}")
    return ExportMeta(task="detect" if detect else "classify", format=format, model=meta.name or cfg.model.name,
                      classes=classes, mean=mean, std=std, input_size=size,
                      category_ids=(meta.category_ids or list(range(len(classes)))) if detect else None,
                      resize_mode=cfg.detect.resize_mode, eval_resize_ratio=cfg.data.augment.eval_resize_ratio,
                      topk_candidates=int(getattr(model, "topk_candidates", cfg.detect.topk_candidates)),
                      source=source.name, **thresholds)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    format: str,
    output: str | os.PathLike | None = None,
    *,
    img_size: int | None = None,
    dynamic_batch: bool = False,
    conf: float = 0.25,
    iou: float = 0.5,
    max_det: int = 100,
    opset: int = MIN_OPSET,
    verify_images: str | os.PathLike | None = None,
) -> ExportReport:
    """Export a detkit checkpoint (classifier or detector) to ONNX or TorchScript, verified against PyTorch.

    Detectors export with decode, score threshold, top-k, class-aware NMS and the per-image cap in the graph
    (:mod:`detkit.export.graphs`): single-shot detectors take the thresholds as graph inputs, torchvision
    detectors keep the ones given here (``conf`` is then the lowest a run may ask, ``iou`` the NMS IoU).
    Classifiers export their logits. The metadata (:class:`ExportMeta`: classes, category ids, normalisation,
    input size, thresholds) is stored in the file. Before writing, the export runs on two random inputs and on
    validation images (``verify_images``, else the checkpoint's ``data.root``/``val_split``, else generated
    images) beside the PyTorch model; it is written only if every output matches.

    Args:
        checkpoint: a detkit checkpoint (``best.pt``).
        format: ``"onnx"`` or ``"torchscript"``.
        output: the file to write (default :func:`default_export_path`); never the checkpoint itself.
        img_size: input side (default: the checkpoint's); the export takes only this size.
        dynamic_batch: ONNX: any batch size (default: batch 1). TorchScript exports take any batch.
        conf, iou, max_det: default score threshold, NMS IoU and detections per image (detectors).
        opset: ONNX opset (>= 17).
        verify_images: images (file, folder, glob) to compare detections or probabilities on.

    Returns:
        An :class:`ExportReport`.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: a bad option, a model without an export graph; :class:`ExportMismatchError` when the
            export disagrees with PyTorch (nothing is written).
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else default_export_path(checkpoint, format)
    if output.resolve() == checkpoint.resolve():
        raise ValueError(f"output: {output} is the checkpoint itself; choose another file")
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    meta = _export_meta(ckpt, checkpoint, model, format, img_size, {"score_thresh": float(conf),
                        "nms_thresh": float(iou), "max_det": int(max_det)})
    postprocess, batch = _layout(model, meta.task, format, dynamic_batch)
    meta = dataclasses.replace(meta, postprocess=postprocess, batch_size=batch,
                               opset=opset if format == "onnx" else None)
    if meta.task == "detect":
        set_postprocess(model, score_thresh=conf, nms_thresh=iou, detections_per_img=max_det)
    graph = _build_graph(model, meta)
    data = _serialise(graph, meta, opset)
    exported = (ExportedDetector if meta.task == "detect" else ExportedClassifier)(open_export(data, format))
    images, where = _verification_images(checkpoint_config(ckpt), verify_images, VERIFY_IMAGES)
    report = ExportReport(path=output, meta=meta, size_bytes=len(data), images_source=where,
                          parity=[_check_samples(model, exported, meta), _check_images(model, exported, meta, images)])
    bad = [p for p in report.parity if not p.agrees]
    if bad:
        raise ExportMismatchError(f"the {format} export of {checkpoint} disagrees with PyTorch: "
                                  + "; ".join(str(p) for p in bad) + f"; nothing written to {output}")
    atomic_write_bytes(output, data)
    logger.info("%s", "\n".join(report.lines()))
    return report
