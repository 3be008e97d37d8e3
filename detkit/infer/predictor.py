"""Batched detection on images of any size: letterbox (or resize), normalise, detect, map boxes back.

A :class:`Predictor` comes from a detkit detection checkpoint or from a COCO-pretrained torchvision detector.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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

__all__ = ["Predictor"]


class Predictor:
    """Batched detection on images of any size: letterbox (or resize), normalise, detect, map back.

    Args:
        model: a detkit detector (``detkit.models.Detector``); set to eval mode and moved to ``device``.
        classes: class names; label ``i`` names ``classes[i]``.
        category_ids: dataset category id of each label (default ``0..C-1``).
        mean, std: input normalisation in [0, 1] units (3 floats each).
        img_size: side of the square network input in pixels.
        resize_mode: ``"letterbox"`` (keep aspect, pad) or ``"resize"`` (stretch).
        device: where the model runs.
        batch_size: images per forward pass.
        conf: score below which detections are dropped.
        iou: class-aware NMS IoU threshold.
        max_det: detections kept per image.
    """

    def __init__(
        self,
        model: nn.Module,
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
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean/std: expected 3 values each in [0, 1] units with std > 0, got {mean}, {std}")
        if resize_mode not in ("letterbox", "resize"):
            raise ValueError(f"resize_mode: expected 'letterbox' or 'resize', got {resize_mode!r}")
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size: expected a positive int, got {img_size!r}")
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
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        set_postprocess(self.model, score_thresh=conf, nms_thresh=iou, detections_per_img=max_det)
        self.img_size = img_size
        self.resize_mode = resize_mode
        self.batch_size = batch_size
        # normalisation as one multiply-add on the uint8 batch: (x / 255 - mean) / std
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=self.device).view(1, 3, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=self.device).view(1, 3, 1, 1)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, *, img_size: int | None = None,
                        device: str | torch.device = "cpu", **kwargs: Any) -> Predictor:
        """A predictor for a detkit detection checkpoint (``best.pt``/``last.pt`` of a ``task: detect`` run).

        The checkpoint gives the architecture, weights, class names, category ids, normalisation, input
        size and eval resize mode; ``img_size`` overrides the input size.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a detkit detection checkpoint.
        """
        ckpt = load_checkpoint(checkpoint)
        cfg = checkpoint_config(ckpt)
        meta = ModelMeta.from_dict(ckpt.get("model_meta") or {})
        name = meta.name or cfg.model.name
        task = (ckpt.get("config") or {}).get("task", "detect")  # a bare checkpoint is judged by its model
        if task != "detect" or not is_detector(name):
            raise ValueError(f"checkpoint {checkpoint} is not a detection checkpoint (task {task!r}, "
                             f"model {name!r}); train one with task: detect")
        classes = list(ckpt.get("classes") or meta.classes or [])
        if not classes:
            raise ValueError(f"checkpoint {checkpoint} holds no class names")
        norm = ckpt.get("normalization") or {}
        mean, std = norm.get("mean") or meta.mean, norm.get("std") or meta.std
        if not mean or not std:
            raise ValueError(f"checkpoint {checkpoint} holds no normalisation mean/std")
        model = model_from_checkpoint(ckpt)
        size = img_size or cfg.data.img_size or meta.input_size
        return cls(model, classes, meta.category_ids, mean=mean, std=std, img_size=int(size),
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
        return cls(model, classes, category_ids, mean=meta.mean, std=meta.std, img_size=img_size or meta.input_size,
                   device=device, **kwargs)

    # ------------------------------------------------------------------ inference

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Tensor, list[Any]]:
        """Letterbox/resize RGB uint8 images into ``Tensor[B, 3, S, S]`` float32 (normalised) and their geometry."""
        arrays, params = [], []
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images[{i}]: expected an ndarray[H, W, 3] uint8 RGB (detkit.data.read_image "
                                 f"gives one), got {getattr(image, 'dtype', type(image).__name__)} "
                                 f"{getattr(image, 'shape', '')}")
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
            ``category_ids`` ``Tensor[K]`` int64 (the training set's ids), all on the CPU.
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
                results.append({"boxes": boxes, "scores": det["scores"].float().cpu(), "labels": labels,
                                "category_ids": ids[labels]})
        return results
