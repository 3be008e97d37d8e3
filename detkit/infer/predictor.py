"""Batched detection on images of any size: letterbox (or resize), normalise, detect, map boxes back.

A :class:`Predictor` comes from a detkit detection checkpoint, a COCO-pretrained torchvision detector or, through
:func:`detkit.export.load_predictor`, an ONNX / TorchScript export; class filters and per-class thresholds apply to all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkit.data.det_transforms import letterbox_image, resize_image, unletterbox_boxes
from detkit.models.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    model_from_checkpoint,
)
from detkit.models.detector import set_postprocess
from detkit.models.meta import ModelMeta
from detkit.models.registry import is_detector, list_detectors
from detkit.models.tv_detection import coco_pretrained_detector

__all__ = ["Predictor", "check_image_batch", "checkpoint_preprocessing", "normalizer"]


def check_image_batch(images: Sequence[np.ndarray]) -> None:
    """Raise ``ValueError`` naming the first entry of ``images`` that is not an ``ndarray[H, W, 3]`` uint8 RGB image."""
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images[{i}]: expected an ndarray[H, W, 3] uint8 RGB (detkit.data.read_image "
                             f"gives one), got {getattr(image, 'dtype', type(image).__name__)} "
                             f"{getattr(image, 'shape', '')}")


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` ``Tensor[1, 3, 1, 1]`` each so that ``x * scale + shift = (x / 255 - mean) / std``."""
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean/std: expected 3 values each in [0, 1] units with std > 0, got {mean}, {std}")
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return scale, shift


def checkpoint_preprocessing(ckpt: dict[str, Any],
                             source: Any) -> tuple[list[str], ModelMeta, list[float], list[float]]:
    """``(classes, model meta, mean, std)`` a detkit checkpoint stores; ``ValueError`` naming ``source`` when absent."""
    meta = ModelMeta.from_dict(ckpt.get("model_meta") or {})
    classes = list(ckpt.get("classes") or meta.classes or [])
    if not classes:
        raise ValueError(f"checkpoint {source} holds no class names")
    norm = ckpt.get("normalization") or {}
    mean, std = norm.get("mean") or meta.mean, norm.get("std") or meta.std
    if not mean or not std:
        raise ValueError(f"checkpoint {source} holds no normalisation mean/std")
    return classes, meta, list(mean), list(std)


def _check_size(img_size: Any) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size: expected a positive int, got {img_size!r}")
    return img_size


class Predictor:
    """Batched detection on images of any size: letterbox (or resize), normalise, detect, map back.

    Args:
        model: a detkit detector (``detkit.models.Detector``; set to eval mode and moved to ``device``) or any
            callable with the same eval-mode contract and post-processing attributes (an exported model from
            :func:`detkit.export.load_predictor`): ``Tensor[B, 3, S, S]`` -> one dict per image with ``boxes``
            ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` input pixels, ``scores`` ``Tensor[K]``, ``labels`` ``Tensor[K]``.
        classes: class names; label ``i`` names ``classes[i]``.
        category_ids: dataset category id of each label (default ``0..C-1``).
        mean, std: input normalisation in [0, 1] units (3 floats each).
        img_size: side of the square network input in pixels.
        resize_mode: ``"letterbox"`` (keep aspect, pad) or ``"resize"`` (stretch).
        device: where the inputs (and a module ``model``) go.
        batch_size: images per forward pass.
        conf: score below which detections are dropped.
        iou: class-aware NMS IoU threshold.
        max_det: detections kept per image.
        class_conf: per-class score thresholds by class name (``{"person": 0.5}``); other classes use ``conf``.
        keep_classes: class names to keep (None: all).
    """

    def __init__(
        self,
        model: nn.Module | Any,
        classes: Sequence[str],
        category_ids: Sequence[int] | None = None,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        img_size: int,
        resize_mode: str = "letterbox",
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        conf: float = 0.25,
        iou: float = 0.5,
        max_det: int = 100,
        class_conf: Mapping[str, float] | None = None,
        keep_classes: Sequence[str] | None = None,
    ) -> None:
        if resize_mode not in ("letterbox", "resize"):
            raise ValueError(f"resize_mode: expected 'letterbox' or 'resize', got {resize_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if not 0.0 <= conf <= 1.0 or not 0.0 < iou <= 1.0:
            raise ValueError(f"conf and iou: expected conf in [0, 1] and iou in (0, 1], got {conf} and {iou}")
        if max_det < 1:
            raise ValueError(f"max_det: expected >= 1, got {max_det}")
        self.classes = list(classes)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(len(self.classes)))
        if len(self.category_ids) != len(self.classes):
            raise ValueError(f"category_ids: expected {len(self.classes)} ids (one per class), got {self.category_ids}")
        self.img_size = _check_size(img_size)
        self.device = torch.device(device)
        self._scale, self._shift = normalizer(mean, std, self.device)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.resize_mode = resize_mode
        self.batch_size = batch_size
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self._thresholds, self._keep = self._class_filters(class_conf, keep_classes)
        self.model = model.to(self.device).eval() if isinstance(model, nn.Module) else model
        model_conf = min([self.conf, *(class_conf or {}).values()])
        # with filters after NMS the model keeps every candidate, so that max_det counts what survives them
        filtering = self._thresholds is not None or self._keep is not None
        model_max = max_det
        if filtering:
            model_max = max(max_det, getattr(model, "topk_candidates", max_det) * len(self.classes))
        set_postprocess(self.model, score_thresh=model_conf, nms_thresh=iou, detections_per_img=model_max)

    def _class_filters(self, class_conf: Mapping[str, float] | None,
                       keep_classes: Sequence[str] | None) -> tuple[Tensor | None, Tensor | None]:
        """Per-label thresholds ``Tensor[C]`` (or None) and the kept labels as a bool ``Tensor[C]`` (or None)."""
        def index(name: str, what: str) -> int:
            if name not in self.classes:
                raise ValueError(f"{what}: unknown class {name!r}; expected one of {self.classes}")
            return self.classes.index(name)

        thresholds = None
        if class_conf:
            thresholds = torch.full((len(self.classes),), self.conf)
            for name, value in class_conf.items():
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"class_conf[{name!r}]: expected a score threshold in [0, 1], got {value}")
                thresholds[index(name, "class_conf")] = float(value)
        keep = None
        if keep_classes is not None:
            if not keep_classes:
                raise ValueError("keep_classes: expected at least one class name (None keeps all)")
            keep = torch.zeros(len(self.classes), dtype=torch.bool)
            keep[[index(name, "keep_classes") for name in keep_classes]] = True
        return thresholds, keep

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, *, img_size: int | None = None,
                        device: str | torch.device = "cpu", **kwargs: Any) -> Predictor:
        """A predictor for a detkit detection checkpoint (``best.pt``/``last.pt`` of a ``task: detect`` run).

        The checkpoint gives the architecture, weights, class names, category ids, normalisation, input
        size and eval resize mode; ``img_size`` overrides the input size.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a detkit detection checkpoint, or ``img_size`` < 1.
        """
        ckpt = load_checkpoint(checkpoint)
        cfg = checkpoint_config(ckpt)
        classes, meta, mean, std = checkpoint_preprocessing(ckpt, checkpoint)
        name = meta.name or cfg.model.name
        task = (ckpt.get("config") or {}).get("task", "detect")  # a bare checkpoint is judged by its model
        if task != "detect" or not is_detector(name):
            raise ValueError(f"checkpoint {checkpoint} is not a detection checkpoint (task {task!r}, "
                             f"model {name!r}); train one with task: detect, or run tools/predict.py on a classifier")
        model = model_from_checkpoint(ckpt)
        size = img_size if img_size is not None else (cfg.data.img_size or meta.input_size)
        return cls(model, classes, meta.category_ids, mean=mean, std=std, img_size=_check_size(size),
                   resize_mode=cfg.detect.resize_mode, device=device, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, *, img_size: int | None = None, device: str | torch.device = "cpu",
                        **kwargs: Any) -> Predictor:
        """A predictor for torchvision's COCO-pretrained detector ``name`` (``torchvision:fasterrcnn_resnet50_fpn``).

        The COCO weights must be in the torch hub cache (or downloadable); labels map to COCO category ids.

        Raises:
            ValueError: ``name`` is not a ``torchvision:`` detector.
            WeightsUnavailableError: the weights are neither cached nor downloadable; the message names the
                cache path to put the file at.
        """
        if not name.startswith("torchvision:") or name not in list_detectors():
            valid = [n for n in list_detectors() if n.startswith("torchvision:")]
            raise ValueError(f"model: expected one of {valid} for COCO-pretrained detection, got {name!r}")
        model, classes, category_ids = coco_pretrained_detector(name.split(":", 1)[1])
        meta = model.detkit_meta
        size = img_size if img_size is not None else meta.input_size
        return cls(model, classes, category_ids, mean=meta.mean, std=meta.std, img_size=_check_size(size),
                   device=device, **kwargs)

    # ------------------------------------------------------------------ inference

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Tensor, list[Any]]:
        """Letterbox/resize RGB uint8 images into ``Tensor[B, 3, S, S]`` float32 (normalised) and their geometry."""
        check_image_batch(images)
        arrays, params = [], []
        for image in images:
            if self.resize_mode == "letterbox":
                out, p = letterbox_image(image, self.img_size)
            else:
                out, p = resize_image(image, self.img_size)
            arrays.append(out)
            params.append(p)
        batch = torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2).float()  # [B, 3, S, S]
        return batch * self._scale + self._shift, params

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, Tensor]]:
        """Detect objects in RGB images of any sizes.

        Args:
            images: ``ndarray[H, W, 3]`` uint8 RGB images (sizes may differ).

        Returns:
            One dict per image: ``boxes`` ``Tensor[K, 4]`` float32 ``(x1, y1, x2, y2)`` in that image's original
            pixels, ``scores`` ``Tensor[K]`` (decreasing), ``labels`` ``Tensor[K]`` int64 in ``0..C-1`` and
            ``category_ids`` ``Tensor[K]`` int64 (the training set's), all on the CPU; at most ``max_det`` per
            image, each above ``conf`` (or its class's ``class_conf``) and of a kept class.
        """
        results: list[dict[str, Tensor]] = []
        ids = torch.tensor(self.category_ids, dtype=torch.int64)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch, params = self.preprocess(chunk)
            detections = self.model(batch)
            for det, p, image in zip(detections, params, chunk):
                boxes = unletterbox_boxes(det["boxes"].float().cpu(), p, clip_hw=image.shape[:2])
                labels = det["labels"].cpu().long()
                result = {"boxes": boxes, "scores": det["scores"].float().cpu(), "labels": labels}
                results.append(self._filter(result, ids))
        return results

    def _filter(self, det: dict[str, Tensor], ids: Tensor) -> dict[str, Tensor]:
        """Apply the class filter, the per-class thresholds and ``max_det``; add ``category_ids``."""
        if self._thresholds is not None or self._keep is not None:
            keep = torch.ones_like(det["scores"], dtype=torch.bool)
            if self._thresholds is not None:
                keep &= det["scores"] > self._thresholds[det["labels"]]
            if self._keep is not None:
                keep &= self._keep[det["labels"]]
            det = {k: v[keep][: self.max_det] for k, v in det.items()}
        det["category_ids"] = ids[det["labels"]]
        return det
