"""Adapter putting torchvision detectors (Faster R-CNN, RetinaNet, SSD, SSDlite) behind detkit's detector interface.

Class predictors are swapped for ``num_classes``; labels are 0..C-1 outside, shifted past the background inside.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.ssd import SSD

from detkit.models.detector import Detector, check_detection_inputs
from detkit.models.meta import ModelMeta, normalization_from_info
from detkit.models.pretrained import (
    OFFLINE_ENV,
    WeightsUnavailableError,
    download_file,
    hub_cache_path,
    network_available,
)
from detkit.models.registry import register_detector
from detkit.models.stages import Stages
from detkit.models.weights import load_weights_file, read_state_dict, strip_prefixes

__all__ = ["TORCHVISION_DETECTORS", "TorchvisionDetector", "coco_pretrained_detector", "coco_weights_path",
           "swap_class_predictors", "torchvision_detector"]

#: the torchvision detection models registered as ``torchvision:NAME``
TORCHVISION_DETECTORS = ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "ssd300_vgg16",
                         "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn")

logger = logging.getLogger(__name__)


def swap_class_predictors(model: nn.Module, num_columns: int) -> list[str]:
    """Replace the class predictors of a torchvision detector, in place, for ``num_columns`` class columns.

    Only the last layers that depend on the class count are new (pretrained towers stay): Faster R-CNN's
    ``roi_heads.box_predictor`` (class scores and class-specific boxes), RetinaNet's
    ``head.classification_head.cls_logits`` (prior-probability bias 0.01), SSD's per-level class convs and
    SSDlite's final 1x1 class convs. Box-regression heads of RetinaNet/SSD are class-agnostic and kept.

    Args:
        model: a torchvision ``FasterRCNN``, ``RetinaNet`` or ``SSD`` (SSDlite included).
        num_columns: class columns, background included where the model has one.

    Returns:
        Names (relative to ``model``) of the new modules.

    Raises:
        TypeError: for another kind of model.
    """
    if isinstance(model, FasterRCNN):
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_columns)
        return ["roi_heads.box_predictor"]
    if isinstance(model, RetinaNet):
        head = model.head.classification_head
        old = head.cls_logits
        new = nn.Conv2d(old.in_channels, head.num_anchors * num_columns, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(new.weight, std=0.01)
        nn.init.constant_(new.bias, -math.log((1 - 0.01) / 0.01))
        head.cls_logits, head.num_classes = new, num_columns
        return ["head.classification_head.cls_logits"]
    if isinstance(model, SSD):
        head = model.head.classification_head
        names = []
        for i, block in enumerate(head.module_list):
            # SSD: each level's predictor is one 3x3 conv; SSDlite: a block ending in a 1x1 conv
            container, key = (head.module_list, i) if isinstance(block, nn.Conv2d) else (block, len(block) - 1)
            old = container[key]
            anchors = old.out_channels // head.num_columns
            new = nn.Conv2d(old.in_channels, anchors * num_columns, kernel_size=old.kernel_size, padding=old.padding)
            if container is head.module_list:
                nn.init.xavier_uniform_(new.weight)  # torchvision's SSD init
            else:
                nn.init.normal_(new.weight, std=0.03)  # torchvision's SSDlite init
            nn.init.zeros_(new.bias)
            container[key] = new
            suffix = "" if container is head.module_list else f".{key}"
            names.append(f"head.classification_head.module_list.{i}{suffix}")
        head.num_columns = num_columns
        return names
    raise TypeError(
        f"cannot swap the class predictors of {type(model).__name__}: expected FasterRCNN, RetinaNet or SSD"
    )


def coco_weights_path(tv_name: str, mode: str, timeout: float = 10.0) -> Path | None:
    """Local copy of torchvision's COCO weights for ``tv_name``, downloaded when not cached and online.

    Follows :func:`detkit.models.pretrained.locate_pretrained`'s conventions (cache under
    ``torch.hub.get_dir()/checkpoints``, a short network probe, ``DETKIT_OFFLINE`` honoured).

    Args:
        tv_name: torchvision model name (``ssdlite320_mobilenet_v3_large``).
        mode: ``"coco"``/``"imagenet"`` (required) or ``"auto"`` (fall back to random init with a WARNING).
        timeout: seconds for the probe and each socket operation of the download.

    Returns:
        The file (torchvision reads it from the same cache), or None in ``auto`` mode when unavailable.

    Raises:
        WeightsUnavailableError: in required mode when the weights are neither cached nor downloadable; the
            message names the cache path and the ``--weights PATH`` / ``--weights none`` alternatives.
    """
    url = tvm.get_model_weights(tv_name)["DEFAULT"].url
    cache = hub_cache_path(url)
    if cache.is_file():
        return cache
    reason = "the network is unreachable" + (f" ({OFFLINE_ENV} is set)" if os.environ.get(OFFLINE_ENV) else "")
    if network_available(url, timeout=min(timeout, 3.0)):
        try:
            logger.info("downloading %s to %s", url, cache)
            return download_file(url, cache, timeout=timeout)
        except (OSError, ValueError) as err:
            reason = f"the download failed ({err})"
    if mode != "auto":
        raise WeightsUnavailableError(
            f"COCO weights for torchvision:{tv_name} are not available: they are not cached at {cache} and "
            f"{reason}. Put the file from {url} at that path (TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')} "
            f"selects the torch cache), or pass a local file with --weights PATH (model.weights=PATH), or use "
            f"--weights none."
        )
    logger.warning(
        "weights=auto: COCO weights for torchvision:%s are not cached at %s and %s; the detector starts from "
        "RANDOM INITIALISATION (pretrained: false in the run metadata). To fine-tune from COCO, put %s at that "
        "path or pass --weights PATH.",
        tv_name,
        cache,
        reason,
        url,
    )
    return None


class TorchvisionDetector(Detector):
    """A torchvision detector taking detkit batches and returning detkit formats.

    The wrapped model keeps its own resizing (e.g. Faster R-CNN scales the shorter side to 800 px, SSDlite to
    320 x 320) and maps its boxes back, so detections are in the input's pixels. Its internal normalisation is
    switched off: inputs are normalised by the data pipeline with ``detkit_meta["mean"/"std"]`` (torchvision's
    values when pretrained). Post-processing is torchvision's own; ``score_thresh``, ``nms_thresh``,
    ``detections_per_img`` and ``topk_candidates`` are forwarded to it (Faster R-CNN has no
    ``topk_candidates``: the value is kept but unused).

    Args:
        model: a torchvision ``FasterRCNN``, ``RetinaNet`` or ``SSD`` whose class predictors already have
            ``num_classes + label_offset`` columns.
        num_classes: number of object classes C.
        head_modules: names (relative to ``model``) of the new class predictors: the ``head`` stage.
        label_offset: 1 where torchvision reserves column 0 for the background (Faster R-CNN, SSD), 0 for
            RetinaNet (sigmoid classes).
    """

    def __init__(self, *, model: nn.Module, num_classes: int, head_modules: list[str], label_offset: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.head_modules = list(head_modules)
        self.label_offset = int(label_offset)
        # torchvision normalises inside; detkit's data pipeline already has, so make it the identity
        self.model.transform.image_mean = [0.0, 0.0, 0.0]
        self.model.transform.image_std = [1.0, 1.0, 1.0]

    def _postprocessor(self) -> nn.Module:
        return self.model.roi_heads if isinstance(self.model, FasterRCNN) else self.model

    @property
    def score_thresh(self) -> float:
        return self._postprocessor().score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self._postprocessor().score_thresh = float(value)

    @property
    def nms_thresh(self) -> float:
        return self._postprocessor().nms_thresh

    @nms_thresh.setter
    def nms_thresh(self, value: float) -> None:
        self._postprocessor().nms_thresh = float(value)

    @property
    def detections_per_img(self) -> int:
        return self._postprocessor().detections_per_img

    @detections_per_img.setter
    def detections_per_img(self, value: int) -> None:
        self._postprocessor().detections_per_img = int(value)

    @property
    def topk_candidates(self) -> int:
        return getattr(self._postprocessor(), "topk_candidates", 0)

    @topk_candidates.setter
    def topk_candidates(self, value: int) -> None:
        self._postprocessor().topk_candidates = int(value)

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode (see :class:`~detkit.models.detector.Detector`).

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised images.
            targets: in training, one dict per image: ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` input
                pixels, ``labels`` ``Tensor[K]`` int64 in ``0..C-1``.

        Returns:
            Training: torchvision's losses (e.g. ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
            ``loss_rpn_box_reg``) plus ``"loss"``, their sum. Eval: one dict per image, ``boxes`` ``Tensor[K, 4]``
            in input pixels, ``scores`` ``Tensor[K]``, ``labels`` ``Tensor[K]`` int64 in ``0..C-1``.
        """
        images, targets = check_detection_inputs(images, targets, self.num_classes, self.training)
        image_list = list(images.unbind(0))
        if self.training:
            tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + self.label_offset} for t in targets]
            losses = self.model(image_list, tv_targets)
            return {**losses, "loss": sum(losses.values())}
        detections = self.model(image_list)
        return [
            {"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - self.label_offset} for d in detections
        ]

    def detkit_stages(self) -> Stages:
        """``backbone``, ``neck`` (FPN, when present), ``extras`` (RPN, RoI box head, regression heads), ``head``.

        ``head`` holds the swapped class predictors only; empty stages are left out.
        """
        head_prefixes = tuple(f"model.{name}." for name in self.head_modules)
        stages: Stages = {"backbone": [], "neck": [], "extras": [], "head": []}
        for name, param in self.named_parameters():
            if name.startswith(head_prefixes):
                stages["head"].append((name, param))
            elif name.startswith("model.backbone.fpn."):
                stages["neck"].append((name, param))
            elif name.startswith("model.backbone."):
                stages["backbone"].append((name, param))
            else:
                stages["extras"].append((name, param))
        return {stage: params for stage, params in stages.items() if params or stage == "head"}


def _loads_strictly(model: nn.Module, state: dict[str, Tensor]) -> bool:
    """Whether ``state`` has exactly ``model``'s keys and shapes (``num_batches_tracked`` optional)."""
    target = model.state_dict()
    needed = {k for k in target if not k.endswith("num_batches_tracked")}
    if not needed <= set(state) or not set(state) <= set(target):
        return False
    return all(state[k].shape == target[k].shape for k in state)


def torchvision_detector(
    tv_name: str, *, num_classes: int, weights: str = "auto", **kwargs: Any
) -> TorchvisionDetector:
    """Build torchvision detector ``tv_name`` with its class predictors swapped for ``num_classes``.

    Args:
        tv_name: a torchvision detection model building a FasterRCNN, RetinaNet or SSD
            (``fasterrcnn_resnet50_fpn``, ``retinanet_resnet50_fpn``, ``ssd300_vgg16``,
            ``ssdlite320_mobilenet_v3_large``, ``fasterrcnn_mobilenet_v3_large_320_fpn``, ...).
        num_classes: number of object classes C.
        weights: ``coco``/``imagenet`` (torchvision's COCO weights, required), ``auto`` (COCO when cached or
            downloadable, else random), ``none`` (random; no ImageNet backbone either), or a file: torchvision's
            own weights file for ``tv_name`` or a detkit checkpoint of this detector.
        **kwargs: passed to the torchvision builder (``min_size``, ``max_size``, ``trainable_backbone_layers``,
            ``score_thresh`` ...).

    Returns:
        A :class:`TorchvisionDetector` with ``detkit_meta`` set.
    """
    path: Path | None = None
    is_file = weights not in ("coco", "imagenet", "auto", "none")
    if weights in ("coco", "imagenet", "auto"):
        path = coco_weights_path(tv_name, weights)
    # with the weights enum torchvision builds as it does for fine-tuning (frozen BN, trainable layers) and
    # reads the file from the torch.hub cache that coco_weights_path filled
    tv_weights = tvm.get_model_weights(tv_name)["DEFAULT"] if path is not None else None
    model = tvm.get_model(tv_name, weights=tv_weights, weights_backbone=None, **kwargs)
    if not isinstance(model, (FasterRCNN, RetinaNet, SSD)):
        raise ValueError(
            f"torchvision model {tv_name!r} is a {type(model).__name__}; expected FasterRCNN, RetinaNet or SSD"
        )
    normalization, input_size = _preprocessing(model)
    raw_file = is_file and _load_raw_torchvision_file(model, tv_name, weights)
    label_offset = _label_offset(model)
    head_modules = swap_class_predictors(model, num_classes + label_offset)
    detector = TorchvisionDetector(
        model=model, num_classes=num_classes, head_modules=head_modules, label_offset=label_offset
    )
    if is_file and not raw_file:
        normalization = normalization_from_info(load_weights_file(detector, weights)["info"]) or normalization
    pretrained = path is not None or is_file
    detector.detkit_meta = ModelMeta.create(f"torchvision:{tv_name}", num_classes, weights, pretrained=pretrained,
                                            normalization=normalization if pretrained else None,
                                            input_size=input_size)
    return detector


def _preprocessing(model: nn.Module) -> tuple[tuple[tuple[float, ...], tuple[float, ...]], int]:
    """``((mean, std), input side)`` of a torchvision detector's own transform (its COCO weights')."""
    transform = model.transform
    mean = tuple(float(m) for m in transform.image_mean)
    std = tuple(float(s) for s in transform.image_std)
    return (mean, std), int(transform.fixed_size[0] if transform.fixed_size else transform.min_size[0])


def _label_offset(model: nn.Module) -> int:
    # torchvision reserves class column 0 for the background, except RetinaNet (sigmoid classes)
    return 0 if isinstance(model, RetinaNet) else 1


def _load_raw_torchvision_file(model: nn.Module, tv_name: str, path: str) -> bool:
    """Load ``path`` before the class predictors are swapped when it is torchvision's own layout and class
    count (e.g. the COCO release); a detkit checkpoint of this adapter ("model."-prefixed keys) is not."""
    file_state, _ = read_state_dict(path)
    state = strip_prefixes(file_state, set(model.state_dict()))
    if any(k.startswith("model.") for k in file_state) or not _loads_strictly(model, state):
        return False
    model.load_state_dict(state, strict=False)
    logger.info("loaded torchvision weights for %s from %s", tv_name, path)
    return True


def coco_pretrained_detector(tv_name: str) -> tuple[TorchvisionDetector, list[str], list[int]]:
    """torchvision's COCO-pretrained detector ``tv_name`` with its own COCO head, ready for inference.

    The weights must be in the torch hub cache (or downloadable).

    Returns:
        ``(detector, classes, category_ids)``: labels ``0..C-1`` name ``classes[i]`` and map to COCO
        category ``category_ids[i]`` (torchvision's label = COCO category id).

    Raises:
        WeightsUnavailableError: the weights are neither cached nor downloadable; the message names the cache
            path to put the file at.
    """
    coco_weights_path(tv_name, "coco")  # raises with the cache path when the weights are missing
    weights = tvm.get_model_weights(tv_name)["DEFAULT"]
    tv_model = tvm.get_model(tv_name, weights=weights, weights_backbone=None)
    normalization, input_size = _preprocessing(tv_model)
    offset = _label_offset(tv_model)
    categories = list(weights.meta["categories"])
    classes = categories[offset:]
    model = TorchvisionDetector(model=tv_model, num_classes=len(classes), head_modules=[], label_offset=offset)
    model.detkit_meta = ModelMeta.create(f"torchvision:{tv_name}", len(classes), "coco", pretrained=True,
                                         normalization=normalization, input_size=input_size)
    return model, classes, [i + offset for i in range(len(classes))]


def _register(tv_name: str) -> None:
    def build(*, num_classes: int, weights: str, **kwargs: Any) -> TorchvisionDetector:
        return torchvision_detector(tv_name, num_classes=num_classes, weights=weights, **kwargs)

    build.__doc__ = f"torchvision {tv_name} (COCO weights when available)."
    register_detector(f"torchvision:{tv_name}")(build)


for _name in TORCHVISION_DETECTORS:
    _register(_name)
