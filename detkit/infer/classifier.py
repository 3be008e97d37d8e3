"""Batched classification of images of any size with the eval transform the model was validated with.

A :class:`ClassificationPredictor` comes from a detkit classification checkpoint or, through
:func:`detkit.export.load_predictor`, an ONNX / TorchScript export of one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkit.config.augment import ClassificationAugment
from detkit.data.transforms import build_classification_transforms
from detkit.infer.predictor import check_image_batch, checkpoint_preprocessing
from detkit.models.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
from detkit.models.registry import is_detector

__all__ = ["DEFAULT_IMG_SIZE", "ClassificationPredictor"]

#: input side when neither the checkpoint's ``data.img_size`` nor its model gives one (the trainer's fallback,
#: ``detkit.engine.experiment.DEFAULT_IMG_SIZE``)
DEFAULT_IMG_SIZE = 224


class ClassificationPredictor:
    """Class probabilities for RGB images: shorter-side resize, centre crop, normalise, classify, softmax.

    The preprocessing is the eval pipeline of training (:func:`detkit.data.build_classification_transforms`
    with ``train=False``), so a checkpoint scores the same here as in its validation.

    Args:
        model: a classifier ``nn.Module`` (set to eval mode and moved to ``device``) or any callable mapping
            ``Tensor[B, 3, S, S]`` normalised images to ``Tensor[B, C]`` logits (an export).
        classes: class names; logit ``i`` names ``classes[i]``.
        mean, std: normalisation in [0, 1] units (3 floats each).
        img_size: side of the square network input (the centre crop) in pixels.
        eval_resize_ratio: the shorter side is resized to ``img_size / eval_resize_ratio`` before the crop.
        device: where the inputs (and a module ``model``) go.
        batch_size: images per forward pass.
    """

    def __init__(self, model: nn.Module | Any, classes: Sequence[str], *, mean: Sequence[float], std: Sequence[float],
                 img_size: int, eval_resize_ratio: float = 0.875, device: str | torch.device = "cpu",
                 batch_size: int = 16) -> None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size: expected a positive int, got {img_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.classes = list(classes)
        if not self.classes:
            raise ValueError("classes: expected at least one class name")
        self.img_size, self.batch_size = img_size, batch_size
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.eval_resize_ratio = float(eval_resize_ratio)
        self.transform = build_classification_transforms(
            train=False, img_size=img_size, mean=mean, std=std,
            aug=ClassificationAugment(eval_resize_ratio=self.eval_resize_ratio))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, nn.Module) else model

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, *, img_size: int | None = None,
                        device: str | torch.device = "cpu", **kwargs: Any) -> ClassificationPredictor:
        """A predictor for a detkit classification checkpoint (``best.pt``/``last.pt`` of a ``task: classify`` run).

        The checkpoint gives the architecture, weights, class names, normalisation, input size and eval
        resize ratio; ``img_size`` overrides the input size.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a detkit classification checkpoint, or ``img_size`` < 1.
        """
        ckpt = load_checkpoint(checkpoint)
        cfg = checkpoint_config(ckpt)
        classes, meta, mean, std = checkpoint_preprocessing(ckpt, checkpoint)
        name = meta.name or cfg.model.name
        if cfg.task != "classify" or is_detector(name):
            raise ValueError(f"checkpoint {checkpoint} is not a classification checkpoint (task {cfg.task!r}, model "
                             f"{name!r}); run tools/detect.py on a detector")
        size = img_size if img_size is not None else (cfg.data.img_size or meta.input_size or DEFAULT_IMG_SIZE)
        return cls(model_from_checkpoint(ckpt), classes, mean=mean, std=std, img_size=size,
                   eval_resize_ratio=cfg.data.augment.eval_resize_ratio, device=device, **kwargs)

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """``Tensor[B, 3, S, S]`` float32 normalised inputs from ``ndarray[H, W, 3]`` uint8 RGB images."""
        check_image_batch(images)
        return torch.stack([self.transform(image=image)["image"] for image in images]).to(self.device)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> Tensor:
        """Class probabilities ``Tensor[B, C]`` float32 on the CPU (softmax of the logits), one row per image."""
        rows = []
        for start in range(0, len(images), self.batch_size):
            logits = self.model(self.preprocess(images[start:start + self.batch_size]))
            rows.append(torch.as_tensor(logits).float().softmax(dim=1).cpu())
        return torch.cat(rows) if rows else torch.zeros(0, len(self.classes))
