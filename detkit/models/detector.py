"""The common detector interface (``Detector``) and ``create_detector``, a factory over a readable registry.

SSDs (``resnet18_ssd`` ..., ``tiny_ssd``) and torchvision detectors (``torchvision:NAME``) share one forward contract.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DETECTOR_WEIGHT_MODES",
    "Detector",
    "check_detection_inputs",
    "check_weights_arg",
    "child_params",
    "create_detector",
    "list_detectors",
    "register_detector",
]

#: the ``weights`` values that are not file paths; ``coco`` only applies to torchvision detectors
DETECTOR_WEIGHT_MODES = ("imagenet", "auto", "none", "coco")

Stages = dict[str, list[tuple[str, nn.Parameter]]]


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
    ``topk_candidates`` at every call, so they can be changed on a built model.

    Attributes:
        num_classes: number of object classes C (background not counted).
        detkit_meta: ``{"name", "num_classes", "weights" (as given), "pretrained" (bool), "mean", "std"
            (3 floats in [0, 1] units, or None when no pretrained normalisation applies), "input_size"
            (the side in pixels the detector is designed for)}``.
    """

    num_classes: int
    detkit_meta: dict[str, Any]

    def detkit_stages(self) -> Stages:
        """Parameters by stage, input to output, ``head`` (the new class/box predictors) last.

        Read by :func:`detkit.models.param_stages` for per-stage learning rates and freezing.
        """
        raise NotImplementedError(f"{type(self).__name__} must define detkit_stages()")


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


# ----------------------------------------------------------------------------------------------------------
# Registry. Entry functions are 3-5 lines: they import their module lazily, because those modules import
# ``Detector`` from here.

_ENTRIES: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    """Decorator adding ``fn(num_classes, weights, **kwargs) -> Detector`` to the registry under ``name``."""

    def decorator(fn: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in _ENTRIES:
            raise ValueError(f"detector name {name!r} is already registered")
        _ENTRIES[name] = fn
        return fn

    return decorator


def list_detectors() -> list[str]:
    """Sorted names accepted by :func:`create_detector`."""
    return sorted(_ENTRIES)


def create_detector(
    name: str, num_classes: int, weights: str | os.PathLike | None = "auto", **kwargs: Any
) -> Detector:
    """Build detector ``name`` for ``num_classes`` object classes.

    Args:
        name: one of :func:`list_detectors`: ``resnet18_ssd``, ``resnet34_ssd``, ``resnet50_ssd``,
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
    if name not in _ENTRIES:
        close = difflib.get_close_matches(name, list(_ENTRIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown detector name {name!r}.{hint} Valid names: {', '.join(list_detectors())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    weights = check_weights_arg(weights)
    return _ENTRIES[name](num_classes=num_classes, weights=weights, **kwargs)


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


@register_detector("resnet18_ssd")
def _resnet18_ssd(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """SSD on an ImageNet ResNet-18: 6 levels (strides 16 .. 512), ~15M parameters."""
    from detkit.models.ssd import resnet_ssd

    return resnet_ssd("resnet18", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("resnet34_ssd")
def _resnet34_ssd(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """SSD on an ImageNet ResNet-34: 6 levels (strides 16 .. 512)."""
    from detkit.models.ssd import resnet_ssd

    return resnet_ssd("resnet34", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("resnet50_ssd")
def _resnet50_ssd(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """SSD on an ImageNet ResNet-50: 6 levels (strides 16 .. 512)."""
    from detkit.models.ssd import resnet_ssd

    return resnet_ssd("resnet50", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("tiny_ssd")
def _tiny_ssd(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """The textbook's TinySSD (from scratch, 5 levels, 4 anchors per cell)."""
    from detkit.models.tiny_ssd import tiny_ssd

    return tiny_ssd(num_classes=num_classes, weights=weights, **kwargs)


@register_detector("torchvision:fasterrcnn_resnet50_fpn")
def _fasterrcnn_resnet50_fpn(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """torchvision Faster R-CNN, ResNet-50 FPN (COCO weights when available)."""
    from detkit.models.tv_detection import torchvision_detector

    return torchvision_detector("fasterrcnn_resnet50_fpn", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("torchvision:retinanet_resnet50_fpn")
def _retinanet_resnet50_fpn(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """torchvision RetinaNet, ResNet-50 FPN (COCO weights when available)."""
    from detkit.models.tv_detection import torchvision_detector

    return torchvision_detector("retinanet_resnet50_fpn", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("torchvision:ssd300_vgg16")
def _ssd300_vgg16(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """torchvision SSD300, VGG-16 (COCO weights when available)."""
    from detkit.models.tv_detection import torchvision_detector

    return torchvision_detector("ssd300_vgg16", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("torchvision:ssdlite320_mobilenet_v3_large")
def _ssdlite320_mobilenet_v3_large(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """torchvision SSDlite 320, MobileNetV3-Large (COCO weights when available)."""
    from detkit.models.tv_detection import torchvision_detector

    return torchvision_detector("ssdlite320_mobilenet_v3_large", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn")
def _fasterrcnn_mobilenet_v3_large_320_fpn(num_classes: int, weights: str, **kwargs: Any) -> Detector:
    """torchvision Faster R-CNN, MobileNetV3-Large FPN at 320 px (COCO weights when available)."""
    from detkit.models.tv_detection import torchvision_detector

    return torchvision_detector(
        "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=num_classes, weights=weights, **kwargs
    )
