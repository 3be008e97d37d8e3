"""Running exports like the models they came from: ``load_predictor`` gives the inference predictors for any model file.

An :class:`ExportedDetector` is called like a detkit ``Detector`` in eval mode, an :class:`ExportedClassifier` like a
classifier, so :class:`~detkit.infer.Predictor` and :class:`~detkit.infer.ClassificationPredictor` run them unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detkit.export.meta import ExportMeta
from detkit.export.onnx_format import OnnxSession
from detkit.export.torchscript_format import TorchScriptSession, is_torchscript_file
from detkit.infer.classifier import ClassificationPredictor
from detkit.infer.predictor import Predictor

__all__ = ["ExportedClassifier", "ExportedDetector", "load_predictor", "model_file_kind", "open_export"]

Session = OnnxSession | TorchScriptSession


def model_file_kind(path: str | os.PathLike) -> str:
    """``"onnx"`` (an ``.onnx`` file), ``"torchscript"`` (a TorchScript archive) or ``"checkpoint"`` (anything else).

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    return "torchscript" if is_torchscript_file(path) else "checkpoint"


def open_export(path: str | os.PathLike | bytes, format: str, device: str | torch.device = "cpu") -> Session:
    """The session of an export file (or its bytes) in ``format`` (``onnx`` or ``torchscript``) on ``device``."""
    if format == "onnx":
        return OnnxSession(path, device)
    if format == "torchscript":
        return TorchScriptSession(path, device)
    raise ValueError(f"format: expected onnx or torchscript, got {format!r}")


def _check_images(images: Tensor, meta: ExportMeta) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, meta.input_size, meta.input_size):
        raise ValueError(f"images: this export takes Tensor[B, 3, {meta.input_size}, {meta.input_size}], got "
                         f"{list(images.shape)}")


def _chunks(images: Tensor, meta: ExportMeta) -> list[Tensor]:
    """The batch split into the graph's fixed batch size (a dynamic-batch graph takes it whole)."""
    return [images] if meta.batch_size is None else list(images.split(meta.batch_size))


class ExportedDetector:
    """An exported detector called like a detkit ``Detector`` in eval mode.

    ``detector(images)`` with ``images`` ``Tensor[B, 3, S, S]`` normalised returns one dict per image: ``boxes``
    ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` input pixels, ``scores`` ``Tensor[K]`` (decreasing) and ``labels``
    ``Tensor[K]`` int64 in ``0..C-1``. ``score_thresh``, ``nms_thresh`` and ``detections_per_img`` are read at
    every call (graph inputs); for an export whose post-processing is fixed (torchvision detectors) a lower
    score threshold or another NMS IoU than it was made with is a ``ValueError``, and the cap is at most its own.

    Args:
        session: an :class:`OnnxSession` or :class:`TorchScriptSession` of a detection export.
    """

    def __init__(self, session: Session) -> None:
        self.session, self.meta = session, session.meta
        if self.meta.task != "detect":
            raise ValueError(f"export of {self.meta.model} is a classifier; run it with tools/predict.py")
        self.num_classes = len(self.meta.classes)
        self._score, self._iou, self._max_det = self.meta.score_thresh, self.meta.nms_thresh, self.meta.max_det
        self.topk_candidates = self.meta.topk_candidates
        out = self(torch.zeros(1, 3, self.meta.input_size, self.meta.input_size))  # rejects a graph of another kind
        if out[0]["boxes"].dim() != 2 or out[0]["boxes"].shape[1] != 4:
            raise ValueError(f"export of {self.meta.model}: its graph does not return detections (boxes "
                             f"{list(out[0]['boxes'].shape)})")

    @property
    def fixed(self) -> bool:
        """Whether the NMS IoU and the lowest score threshold are fixed in the graph."""
        return self.meta.postprocess == "fixed"

    @property
    def score_thresh(self) -> float:
        return self._score

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        if self.fixed and value < self.meta.score_thresh - 1e-9:
            raise ValueError(f"conf: this export of {self.meta.model} keeps detections above {self.meta.score_thresh} "
                             f"only; re-export with tools/export.py --conf {value} for a lower threshold")
        self._score = float(value)

    @property
    def nms_thresh(self) -> float:
        return self._iou

    @nms_thresh.setter
    def nms_thresh(self, value: float) -> None:
        if self.fixed and abs(value - self.meta.nms_thresh) > 1e-6:
            raise ValueError(f"iou: this export of {self.meta.model} applies NMS at IoU {self.meta.nms_thresh}; "
                             f"re-export with tools/export.py --iou {value}, or run it with "
                             f"--iou {self.meta.nms_thresh}")
        self._iou = float(value)

    @property
    def detections_per_img(self) -> int:
        return self._max_det

    @detections_per_img.setter
    def detections_per_img(self, value: int) -> None:
        self._max_det = min(int(value), self.meta.max_det) if self.fixed else int(value)

    def __call__(self, images: Tensor) -> list[dict[str, Tensor]]:
        _check_images(images, self.meta)
        thresholds = {"score_threshold": torch.tensor([self._score], dtype=torch.float32),
                      "iou_threshold": torch.tensor([self._iou], dtype=torch.float32),
                      "max_detections": torch.tensor([self._max_det], dtype=torch.int64)}
        results: list[dict[str, Tensor]] = []
        for chunk in _chunks(images, self.meta):
            boxes, scores, labels, index = self.session.run({"images": chunk.float(), **thresholds})
            for i in range(chunk.shape[0]):
                mine = index == i
                results.append({"boxes": boxes[mine].float(), "scores": scores[mine].float(),
                                "labels": labels[mine].long()})
        return results


class ExportedClassifier:
    """An exported classifier: ``classifier(images Tensor[B, 3, S, S])`` -> ``logits Tensor[B, C]`` (CPU).

    Args:
        session: an :class:`OnnxSession` or :class:`TorchScriptSession` of a classification export.
    """

    def __init__(self, session: Session) -> None:
        self.session, self.meta = session, session.meta
        if self.meta.task != "classify":
            raise ValueError(f"export of {self.meta.model} is a detector; run it with tools/detect.py")
        logits = self(torch.zeros(1, 3, self.meta.input_size, self.meta.input_size))
        if tuple(logits.shape) != (1, len(self.meta.classes)):
            raise ValueError(f"export of {self.meta.model}: its graph returns logits of shape {list(logits.shape)} "
                             f"for one image, but its metadata lists {len(self.meta.classes)} classes")

    def __call__(self, images: Tensor) -> Tensor:
        _check_images(images, self.meta)
        return torch.cat([self.session.run({"images": chunk.float()})[0] for chunk in _chunks(images, self.meta)])


def _size_matches(meta: ExportMeta, img_size: int | None, path: Any) -> None:
    if img_size is not None and img_size != meta.input_size:
        raise ValueError(f"img_size: the export {path} takes {meta.input_size} px inputs, got --img-size {img_size}; "
                         f"re-export with tools/export.py --img-size {img_size}")


def load_predictor(path: str | os.PathLike, task: str, *, device: str | torch.device = "cpu",
                   img_size: int | None = None, **kwargs: Any) -> Predictor | ClassificationPredictor:
    """The inference predictor of any detkit model file: a checkpoint, an ONNX export or a TorchScript export.

    Args:
        path: ``best.pt`` (checkpoint), ``best.onnx`` or ``best.torchscript.pt``.
        task: ``"detect"`` (a :class:`Predictor`) or ``"classify"`` (a :class:`ClassificationPredictor`).
        device: ``cpu``, ``cuda[:N]`` or ``auto``; ONNX exports run on ONNX Runtime's provider for it (``auto``:
            CUDA when onnxruntime has the CUDA provider and a GPU is present, else CPU).
        img_size: network input side; an export only takes the size it was made for.
        **kwargs: further options of the predictor (``batch_size``; detection: ``conf``, ``iou``, ``max_det``,
            ``class_conf``, ``keep_classes``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file of the other task, a corrupt or foreign file, an unsupported option.
    """
    if task not in ("detect", "classify"):
        raise ValueError(f"task: expected detect or classify, got {task!r}")
    kind = model_file_kind(path)
    if str(device) == "auto" and kind != "onnx":  # ONNX Runtime picks its own provider for "auto"
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "checkpoint":
        cls = Predictor if task == "detect" else ClassificationPredictor
        return cls.from_checkpoint(path, img_size=img_size, device=device, **kwargs)
    session = open_export(path, kind, device)
    meta = session.meta
    _size_matches(meta, img_size, path)
    # an ONNX session takes CPU tensors whatever its provider; a TorchScript module moves them itself
    if task == "detect":
        return Predictor(ExportedDetector(session), meta.classes, meta.category_ids, mean=meta.mean, std=meta.std,
                         img_size=meta.input_size, resize_mode=meta.resize_mode, **kwargs)
    return ClassificationPredictor(ExportedClassifier(session), meta.classes, mean=meta.mean, std=meta.std,
                                   img_size=meta.input_size, eval_resize_ratio=meta.eval_resize_ratio, **kwargs)
