"""The common detector interface (``Detector``), its input checks, and ``create_detector`` / ``build_detector``.

SSDs (``resnet18_ssd`` ..., ``tiny_ssd``) and torchvision detectors (``torchvision:NAME``) share one forward contract;
each registers itself in :mod:`detkit.models.registry` from its own module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkit.config.sections import DetectConfig
from detkit.models.meta import ModelMeta
from detkit.models.registry import detector_entry, list_detectors
from detkit.models.stages import Stages

__all__ = [
    "DETECTOR_WEIGHT_MODES",
    "Detector",
    "build_detector",
    "check_detection_inputs",
    "check_weights_arg",
    "child_params",
    "create_detector",
    "list_detectors",
    "set_postprocess",
]

#: the ``weights`` values that are not file paths; ``coco`` only applies to torchvision detectors
DETECTOR_WEIGHT_MODES = ("imagenet", "auto", "none", "coco")


class Detector(nn.Module):
    """What every detkit detector provides, whatever its architecture.

    ``forward(images, targets=None)``:

    - ``images``: ``Tensor[B, 3, H, W]`` float, normalised with ``detkit_meta["mean"/"std"]`` (when set).
    - training mode, with ``targets`` (one dict per image: ``boxes`` ``Tensor[K, 4]`` float
      ``(x1, y1, x2, y2)`` in the input's pixels, ``labels`` ``Tensor[K]`` int64 in ``0..C-1``; ``K`` may
      be 0): a ``dict[str, Tensor]`` of scalar losses. ``"loss"`` is the total to back-propagate; the other
      entries are its components, for logging only (**do not sum the dict**).
    - eval mode: one dict per image with ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` in the input
      image's pixels, ``scores`` ``Tensor[K]`` (decreasing) and ``labels`` ``Tensor[K]`` int64 in
      ``0..C-1``. Mapping back to the original image (letterbox inverse) is the data layer's job.

    Post-processing reads the attributes ``score_thresh``, ``nms_thresh``, ``detections_per_img`` and
    ``topk_candidates`` at every call, so they can be changed on a built model (:meth:`set_postprocess`).

    A new detector subclasses this, implements ``forward`` and :meth:`detkit_stages`, optionally
    :meth:`predict_with_losses` (validation losses), sets ``detkit_meta`` with :meth:`ModelMeta.create`, and
    registers its builder with :func:`detkit.models.registry.register_detector` in its own module.

    Attributes:
        num_classes: number of object classes C (background not counted).
        detkit_meta: a :class:`~detkit.models.meta.ModelMeta` (name, weights, pretrained, mean/std in [0, 1]
            units or None when no pretrained normalisation applies, the input side the detector is designed
            for; classes and category ids once trained).
    """

    num_classes: int
    detkit_meta: ModelMeta
    #: stages that start from random weights even when the backbone is pretrained (``head`` always is); the
    #: freezer never freezes them
    detkit_new_stages: tuple[str, ...] = ()
    #: the smallest square input side (pixels) the architecture can take
    min_input_size: int = 1
    score_thresh: float
    nms_thresh: float
    detections_per_img: int
    topk_candidates: int

    def detkit_stages(self) -> Stages:
        """Parameters by stage, input to output, ``head`` (the new class/box predictors) last.

        Read by :func:`detkit.models.param_stages` for per-stage learning rates and freezing.
        """
        raise NotImplementedError(f"{type(self).__name__} must define detkit_stages()")

    def set_postprocess(self, *, score_thresh: float | None = None, nms_thresh: float | None = None,
                        detections_per_img: int | None = None, topk_candidates: int | None = None) -> None:
        """Set the post-processing thresholds read at every eval-mode call (None keeps a value)."""
        set_postprocess(self, score_thresh=score_thresh, nms_thresh=nms_thresh,
                        detections_per_img=detections_per_img, topk_candidates=topk_candidates)

    def predict_with_losses(
        self, images: Tensor, targets: list[dict[str, Tensor]]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Eval-mode detections for a batch and, where the model computes them in the same pass, its losses.

        The validation loop calls this (in eval mode, under ``no_grad``). The default returns ``self(images)``
        and no losses; single-shot detectors override it to share one forward between both.

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised images.
            targets: one dict per image with ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` input pixels and
                ``labels`` ``Tensor[K]`` int64 in ``0..C-1``.

        Returns:
            ``(detections, losses)``: detections as from ``forward`` in eval mode, and scalar losses
            (``"loss"`` the total) or ``{}``.
        """
        return self(images), {}


def set_postprocess(model: nn.Module, *, score_thresh: float | None = None, nms_thresh: float | None = None,
                    detections_per_img: int | None = None, topk_candidates: int | None = None) -> None:
    """Set a detector's post-processing attributes (any module following the :class:`Detector` contract).

    None keeps a value. ``score_thresh``: per-class score below which detections are dropped;
    ``nms_thresh``: class-aware NMS IoU; ``detections_per_img``: detections kept per image;
    ``topk_candidates``: candidates kept per image and class before NMS.
    """
    if score_thresh is not None:
        model.score_thresh = float(score_thresh)
    if nms_thresh is not None:
        model.nms_thresh = float(nms_thresh)
    if detections_per_img is not None:
        model.detections_per_img = int(detections_per_img)
    if topk_candidates is not None:
        model.topk_candidates = int(topk_candidates)


def child_params(module: nn.Module, *names: str) -> list[tuple[str, nn.Parameter]]:
    """``(qualified name, parameter)`` pairs of the named top-level children of ``module``, in order."""
    params: list[tuple[str, nn.Parameter]] = []
    for name in names:
        child = getattr(module, name)
        params += [(f"{name}.{p_name}", p) for p_name, p in child.named_parameters()]
    return params


def check_detection_inputs(
    images: object, targets: object, num_classes: int, training: bool
) -> tuple[Tensor, list[dict[str, Tensor]] | None]:
    """Validate a detector's inputs; raise with a message naming what is wrong.

    Args:
        images: expected ``Tensor[B, 3, H, W]`` floating point.
        targets: ``None`` or one dict per image with ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` with
            ``x1 < x2`` and ``y1 < y2``, and ``labels`` ``Tensor[K]`` integers in ``[0, num_classes)``.
        num_classes: C.
        training: whether the model is in training mode (then targets are required).

    Returns:
        ``(images, targets)`` with boxes as float tensors and labels as int64 (same devices).

    Raises:
        TypeError: if ``images`` is not a tensor or a target is not a dict of tensors.
        ValueError: on wrong shapes, missing targets in training, or invalid boxes/labels.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a Tensor[B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"images must be a floating Tensor[B, 3, H, W], got {images.dtype} of shape {list(images.shape)}"
        )
    if targets is None:
        if training:
            raise ValueError("targets are required in training mode (one dict with boxes and labels per image)")
        return images, None
    if not isinstance(targets, Sequence) or len(targets) != images.shape[0]:
        count = len(targets) if isinstance(targets, Sequence) else type(targets).__name__
        raise ValueError(f"targets must be a list of {images.shape[0]} dicts (one per image), got {count}")
    checked = []
    for i, target in enumerate(targets):
        if not isinstance(target, dict) or not isinstance(target.get("boxes"), Tensor) or not isinstance(
            target.get("labels"), Tensor
        ):
            raise TypeError(f"targets[{i}] must be a dict with Tensor 'boxes' and 'labels', got {target!r:.200}")
        boxes, labels = target["boxes"], target["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must have shape [K, 4], got {list(boxes.shape)}")
        if labels.shape != (boxes.shape[0],) or labels.is_floating_point():
            raise ValueError(
                f"targets[{i}]['labels'] must be an integer Tensor[K] with K = {boxes.shape[0]}, "
                f"got {labels.dtype} of shape {list(labels.shape)}"
            )
        if labels.numel() and (bool((labels < 0).any()) or bool((labels >= num_classes).any())):
            raise ValueError(
                f"targets[{i}]['labels'] must be in [0, {num_classes}) (contiguous class indices), "
                f"got values {sorted(set(labels.tolist()))}"
            )
        boxes = boxes if boxes.is_floating_point() else boxes.float()
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]) | ~torch.isfinite(boxes).all(dim=1)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"targets[{i}]['boxes'] must be (x1, y1, x2, y2) with x1 < x2, y1 < y2 and finite values; "
                f"box {first} is {boxes[first].tolist()}"
            )
        checked.append({**target, "boxes": boxes, "labels": labels.long()})
    return images, checked


def create_detector(
    name: str, num_classes: int, weights: str | os.PathLike | None = "auto", **kwargs: Any
) -> Detector:
    """Build detector ``name`` for ``num_classes`` object classes.

    Args:
        name: one of :func:`~detkit.models.registry.list_detectors`: ``resnet18_ssd``, ``resnet34_ssd``, ``resnet50_ssd``,
            ``tiny_ssd``, ``torchvision:fasterrcnn_resnet50_fpn``, ``torchvision:retinanet_resnet50_fpn``,
            ``torchvision:ssd300_vgg16``, ``torchvision:ssdlite320_mobilenet_v3_large``,
            ``torchvision:fasterrcnn_mobilenet_v3_large_320_fpn``.
        num_classes: number of object classes C (background not counted); labels are ``0..C-1``.
        weights: as for classifiers: ``"imagenet"`` (pretrained weights required: the ImageNet backbone of
            an SSD, the COCO detector of a torchvision model; ``WeightsUnavailableError`` offline),
            ``"auto"`` (pretrained when cached or downloadable, else a WARNING and random init), ``"none"``
            or None (random init), ``"coco"`` (torchvision detectors only, as ``"imagenet"``), or a weights
            file: a detkit detection checkpoint of the same architecture (a head with another class count is
            skipped) or, for SSDs, a backbone (classifier) weights file.
        **kwargs: keyword arguments of the architecture (see :func:`detkit.models.ssd.resnet_ssd`,
            :class:`detkit.models.tiny_ssd.TinySSD`, :func:`detkit.models.tv_detection.torchvision_detector`).

    Returns:
        A :class:`Detector` with ``detkit_meta`` set.

    Raises:
        ValueError: for an unknown ``name`` (the message lists the valid names) or ``num_classes`` < 1.
        TypeError: if ``weights`` is neither a string nor a path.
        FileNotFoundError: if ``weights`` is neither a mode nor an existing file.
    """
    entry = detector_entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    weights = check_weights_arg(weights)
    return entry.build(num_classes=num_classes, weights=weights, **kwargs)


def build_detector(
    name: str, num_classes: int, weights: str | os.PathLike | None, detect: DetectConfig
) -> Detector:
    """The detector a ``detect`` config section describes: the model's own keywords and the thresholds.

    One mapping for training, evaluation, inference and export: the detector's registry entry says which
    ``detect`` keys it takes (loss choices change an SSD's head, ``first_level`` a ResNet-SSD's levels;
    torchvision detectors take none), and every detector gets ``score_thresh``, ``nms_thresh``, ``max_det``
    and ``topk_candidates`` through :meth:`Detector.set_postprocess`.

    Args:
        name: one of :func:`list_detectors`.
        num_classes: number of object classes C.
        weights: as for :func:`create_detector`.
        detect: the ``detect`` section (a checkpoint's, for a rebuild).
    """
    entry = detector_entry(name)
    model = create_detector(name, num_classes, weights, **entry.config_kwargs(detect))
    model.set_postprocess(score_thresh=detect.score_thresh, nms_thresh=detect.nms_thresh,
                          detections_per_img=detect.max_det, topk_candidates=detect.topk_candidates)
    return model


def check_weights_arg(weights: str | os.PathLike | None) -> str:
    """``weights`` as a string: a mode of :data:`DETECTOR_WEIGHT_MODES` or the path of an existing file."""
    if weights is None:
        return "none"
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be one of {DETECTOR_WEIGHT_MODES} or a file path, got {type(weights).__name__}")
    weights = str(weights)
    if weights not in DETECTOR_WEIGHT_MODES and not Path(weights).is_file():
        raise FileNotFoundError(f"weights must be one of {DETECTOR_WEIGHT_MODES} or an existing file, got {weights!r}")
    return weights
