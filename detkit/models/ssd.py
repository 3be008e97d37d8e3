"""ResNet-SSD: an ImageNet ResNet without its classifier, extra down-sampling blocks and per-level 3x3 predictors.

``SingleShotDetector`` holds the forward shared with TinySSD: features -> predictors -> anchors -> loss or detections.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import ResNet

from detkit.models.classifier import create_classifier
from detkit.models.detection_losses import MultiboxLoss
from detkit.models.detector import Detector, Stages, check_detection_inputs, child_params
from detkit.models.weights import load_weights_file, read_state_dict, strip_prefixes
from detkit.ops import DefaultBoxGenerator, postprocess_detections

__all__ = ["ResNetSSD", "SSDPredictionHead", "SingleShotDetector", "resnet_ssd"]

RESNET_SSD_ARCHS = ("resnet18", "resnet34", "resnet50")
FIRST_LEVELS = ("layer2", "layer3")  # the finest feature level of a ResNet-SSD: stride 8 or stride 16


class SSDPredictionHead(nn.Module):
    """Per-level 3x3 convolutions predicting class logits and box offsets for every anchor.

    Args:
        in_channels: channels of each feature level.
        num_anchors: anchors per cell of each level.
        num_columns: class-logit columns per anchor (``C + 1`` with a background column, ``C`` without).
        prior_probability: if given, the class biases start at ``-log((1 - p) / p)`` (RetinaNet's prior,
            for sigmoid/focal heads); otherwise at 0.

    Shapes:
        ``forward(features)``: one ``Tensor[B, C_l, h_l, w_l]`` per level -> ``(class_logits Tensor[B, A,
        num_columns], box_regression Tensor[B, A, 4])``, ``A = sum_l h_l * w_l * k_l``, anchors ordered
        level, row, column, anchor (the order of :mod:`detkit.ops.anchors`).
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_anchors: Sequence[int],
        num_columns: int,
        prior_probability: float | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(
                f"in_channels and num_anchors need one entry per level, got {len(in_channels)} and {len(num_anchors)}"
            )
        self.num_columns = num_columns
        self.cls_predictors = nn.ModuleList(
            nn.Conv2d(c, k * num_columns, kernel_size=3, padding=1) for c, k in zip(in_channels, num_anchors)
        )
        self.box_predictors = nn.ModuleList(
            nn.Conv2d(c, k * 4, kernel_size=3, padding=1) for c, k in zip(in_channels, num_anchors)
        )
        bias = 0.0 if prior_probability is None else -math.log((1 - prior_probability) / prior_probability)
        for conv in [*self.cls_predictors, *self.box_predictors]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        for conv in self.cls_predictors:
            nn.init.constant_(conv.bias, bias)

    @staticmethod
    def _flatten(x: Tensor, columns: int) -> Tensor:
        # [B, k * X, h, w] -> [B, h, w, k * X] -> [B, h * w * k, X]; contiguous for channels_last inputs
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, columns)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if len(features) != len(self.cls_predictors):
            raise ValueError(f"expected {len(self.cls_predictors)} feature levels, got {len(features)}")
        logits = [self._flatten(p(f), self.num_columns) for p, f in zip(self.cls_predictors, features)]
        boxes = [self._flatten(p(f), 4) for p, f in zip(self.box_predictors, features)]
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1)


class SingleShotDetector(Detector):
    """Forward, loss and post-processing shared by single-shot detectors (ResNet-SSD, TinySSD).

    Subclasses build ``self.head`` (an :class:`SSDPredictionHead` with ``self.loss_fn.num_columns(C)``
    columns) and implement ``extract_features(images) -> list[Tensor]`` and
    ``anchors_for(features, image_size) -> Tensor[A, 4]`` (pixel ``(x1, y1, x2, y2)``, cached).

    Args:
        num_classes: number of object classes C.
        cls_loss, box_loss, neg_pos_ratio, min_negatives, iou_threshold, bg_iou_threshold, focal_alpha,
            focal_gamma, box_weight: options of :class:`~detkit.models.detection_losses.MultiboxLoss`.
        score_thresh: per-class score below which detections are dropped.
        nms_thresh: IoU above which class-aware NMS suppresses the lower-scoring box.
        detections_per_img: detections kept per image.
        topk_candidates: candidates kept per image and class before NMS.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        cls_loss: str = "ce",
        box_loss: str = "smooth_l1",
        neg_pos_ratio: float = 3.0,
        min_negatives: int = 0,
        iou_threshold: float = 0.5,
        bg_iou_threshold: float | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_weight: float = 1.0,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 200,
        topk_candidates: int = 400,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.loss_fn = MultiboxLoss(
            cls_loss=cls_loss,
            box_loss=box_loss,
            neg_pos_ratio=neg_pos_ratio,
            min_negatives=min_negatives,
            iou_threshold=iou_threshold,
            bg_iou_threshold=bg_iou_threshold,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            box_weight=box_weight,
        )
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    @property
    def num_columns(self) -> int:
        """Class-logit columns per anchor: ``C + 1`` (column 0 background) for ``ce``, ``C`` for ``focal``."""
        return self.loss_fn.num_columns(self.num_classes)

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """Feature maps ``Tensor[B, C_l, h_l, w_l]``, one per level, finest first."""
        raise NotImplementedError

    def anchors_for(self, features: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        """``Tensor[A, 4]`` pixel anchors ``(x1, y1, x2, y2)`` for these feature maps and ``(H, W)``."""
        raise NotImplementedError

    def head_outputs(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw predictions for a batch.

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised images.

        Returns:
            ``(class_logits Tensor[B, A, K], box_regression Tensor[B, A, 4], anchors Tensor[A, 4])``, with
            ``K = num_columns`` and anchors in the input's pixels ``(x1, y1, x2, y2)``.
        """
        features = self.extract_features(images)
        class_logits, box_regression = self.head(features)
        anchors = self.anchors_for(features, (int(images.shape[-2]), int(images.shape[-1])))
        return class_logits, box_regression, anchors

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode (see :class:`~detkit.models.detector.Detector`).

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised images (any size; multiples of 32 for ResNet-SSD).
            targets: in training, one dict per image: ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` in
                the input's pixels, ``labels`` ``Tensor[K]`` int64 in ``0..C-1``.

        Returns:
            Training: ``{"loss_cls", "loss_box", "loss"}`` scalars (``"loss"`` is the total). Eval: one dict
            per image with ``boxes`` ``Tensor[K, 4]`` (input pixels), ``scores`` ``Tensor[K]``, ``labels``
            ``Tensor[K]`` int64 in ``0..C-1``.
        """
        images, targets = check_detection_inputs(images, targets, self.num_classes, self.training)
        class_logits, box_regression, anchors = self.head_outputs(images)
        if self.training:
            return self.loss_fn(class_logits, box_regression, anchors, targets)
        return self.postprocess(class_logits, box_regression, anchors, (int(images.shape[-2]), int(images.shape[-1])))

    def postprocess(
        self, class_logits: Tensor, box_regression: Tensor, anchors: Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        """Detections from head outputs via :func:`detkit.ops.postprocess_detections`.

        Args:
            class_logits: ``Tensor[B, A, K]``.
            box_regression: ``Tensor[B, A, 4]``.
            anchors: ``Tensor[A, 4]`` pixel ``(x1, y1, x2, y2)``.
            image_size: ``(H, W)`` of the input; boxes are clipped to it.

        Returns:
            One dict per image: ``boxes`` ``Tensor[K, 4]``, ``scores`` ``Tensor[K]``, ``labels`` ``Tensor[K]``
            int64 in ``0..C-1``.
        """
        background = self.loss_fn.has_background_column
        detections = postprocess_detections(
            class_logits.float(),
            box_regression.float(),
            anchors.float(),
            [image_size] * class_logits.shape[0],
            box_coder=self.loss_fn.box_coder,
            score_thresh=self.score_thresh,
            topk_candidates=self.topk_candidates,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
            activation="softmax" if background else "sigmoid",
            background_class=0 if background else None,
        )
        if background:
            for det in detections:
                det["labels"] = det["labels"] - 1  # column k + 1 is class k
        return detections


EXTRA_NORMS = ("group", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.GroupNorm(math.gcd(32, channels), channels) if kind == "group" else nn.BatchNorm2d(channels)


def _extra_block(in_channels: int, out_channels: int, norm: str = "group") -> nn.Sequential:
    """conv1x1 -> norm -> ReLU -> conv3x3 stride 2 -> norm -> ReLU: halves the resolution.

    The last levels are 1 x 1 (e.g. at 256 px): BatchNorm there sees only ``B`` values per channel (its
    input gradient vanishes for ``B = 2`` and training fails for ``B = 1``), hence GroupNorm by default.
    """
    mid = out_channels // 2
    block = nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=1, bias=False),
        _norm(norm, mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return block


def _layer_out_channels(layer: nn.Sequential) -> int:
    """Output channels of a ResNet layer (BasicBlock ends with bn2, Bottleneck with bn3)."""
    last = layer[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


def default_aspect_ratios(num_levels: int) -> list[list[float]]:
    """SSD's pattern: ``[2]`` on the first level and the last two, ``[2, 3]`` in between."""
    return [[2.0] if i == 0 or i >= num_levels - 2 else [2.0, 3.0] for i in range(num_levels)]


class ResNetSSD(SingleShotDetector):
    """SSD on a torchvision ResNet: levels from layer3 (stride 16), layer4 (stride 32) and extra blocks.

    With the default 4 extra blocks there are 6 levels of strides 16, 32, 64, 128, 256, 512; e.g. 20, 10, 5,
    3, 2, 1 cells per side at 320 px (a 1-cell level stays 1 cell). ``first_level="layer2"`` adds
    layer2's stride-8 map as a finer first level (as SSD300's stride-8 conv4_3): small inputs, small objects.
    Any input size works; multiples of 32 keep the grid aligned with the anchors. Default boxes come from
    :class:`detkit.ops.DefaultBoxGenerator` (cached per feature shapes / image size), so their sizes are
    fractions of the input's width and height.

    Args:
        backbone: a torchvision ``ResNet`` (its ``fc``/``avgpool`` are not used); modules are taken, not copied.
        num_classes: number of object classes C.
        extra_channels: output channels of each extra block (one level each).
        aspect_ratios: per-level width/height ratios of the default boxes (default: SSD's pattern).
        min_ratio: smallest default-box scale, as a fraction of the image.
        max_ratio: largest default-box scale.
        extra_norm: normalisation in the extra blocks, ``"group"`` (GroupNorm, works at any batch size) or
            ``"batch"`` (BatchNorm; needs several images per batch once levels are 1 x 1).
        first_level: the finest feature level, ``"layer3"`` (stride 16) or ``"layer2"`` (stride 8, one more
            level; ``aspect_ratios`` then needs ``3 + len(extra_channels)`` entries).
        **kwargs: loss and post-processing options of :class:`SingleShotDetector`.
    """

    def __init__(
        self,
        *,
        backbone: ResNet,
        num_classes: int,
        extra_channels: Sequence[int] = (512, 256, 256, 256),
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        min_ratio: float = 0.1,
        max_ratio: float = 0.9,
        extra_norm: str = "group",
        first_level: str = "layer3",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        if not isinstance(backbone, ResNet):
            raise TypeError(f"backbone must be a torchvision ResNet, got {type(backbone).__name__}")
        if extra_norm not in EXTRA_NORMS:
            raise ValueError(f"extra_norm must be one of {EXTRA_NORMS}, got {extra_norm!r}")
        if first_level not in FIRST_LEVELS:
            raise ValueError(f"first_level must be one of {FIRST_LEVELS}, got {first_level!r}")
        self.first_level = first_level
        self.stem = nn.Sequential(
            OrderedDict(conv1=backbone.conv1, bn1=backbone.bn1, relu=backbone.relu, maxpool=backbone.maxpool)
        )
        self.layer1, self.layer2 = backbone.layer1, backbone.layer2
        self.layer3, self.layer4 = backbone.layer3, backbone.layer4
        level_channels = [_layer_out_channels(self.layer3), _layer_out_channels(self.layer4)]
        if first_level == "layer2":
            level_channels.insert(0, _layer_out_channels(self.layer2))
        extras = []
        for out_channels in extra_channels:
            extras.append(_extra_block(level_channels[-1], int(out_channels), extra_norm))
            level_channels.append(int(out_channels))
        self.extras = nn.ModuleList(extras)
        num_levels = len(level_channels)
        aspect_ratios = default_aspect_ratios(num_levels) if aspect_ratios is None else [list(r) for r in aspect_ratios]
        if len(aspect_ratios) != num_levels:
            raise ValueError(
                f"aspect_ratios must have one entry per feature level ({num_levels} = "
                f"{num_levels - len(extra_channels)} + len(extra_channels)), "
                f"got {len(aspect_ratios)}"
            )
        self.anchor_generator = DefaultBoxGenerator(aspect_ratios, min_ratio=min_ratio, max_ratio=max_ratio)
        self.head = SSDPredictionHead(
            in_channels=level_channels,
            num_anchors=self.anchor_generator.num_anchors_per_location(),
            num_columns=self.num_columns,
            prior_probability=None if self.loss_fn.has_background_column else 0.01,
        )

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """Feature maps of layer3, layer4 and each extra block (strides 16, 32, 64, ...), after layer2's
        (stride 8) when ``first_level`` is ``"layer2"``."""
        x = self.layer2(self.layer1(self.stem(images)))
        features = [x] if self.first_level == "layer2" else []
        x = self.layer3(x)
        features.append(x)
        x = self.layer4(x)
        features.append(x)
        for block in self.extras:
            x = block(x)
            features.append(x)
        return features

    def anchors_for(self, features: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        return self.anchor_generator.grid_anchors(
            [tuple(f.shape[-2:]) for f in features], image_size, dtype=torch.float32, device=features[0].device
        )

    def detkit_stages(self) -> Stages:
        """``stem``, ``layer1`` .. ``layer4`` (the ResNet), ``extras``, ``head`` (class and box predictors)."""
        stages: Stages = {name: child_params(self, name) for name in ("stem", "layer1", "layer2", "layer3", "layer4")}
        stages["extras"] = child_params(self, "extras")
        stages["head"] = child_params(self, "head")
        return stages


def _holds_detector_weights(path: str) -> bool:
    """Whether a weights file is an SSD detector's (has ``extras.`` keys) rather than a backbone's."""
    state, _ = read_state_dict(path)
    keys = strip_prefixes(state, set())  # drop wrapper prefixes shared by every key
    return any(k.startswith("extras.") for k in keys) and any(k.startswith("head.") for k in keys)


def resnet_ssd(
    arch: str, *, num_classes: int, weights: str = "auto", input_size: int = 320, **kwargs: Any
) -> ResNetSSD:
    """Build a ResNet-SSD with the classifier factory's weight handling.

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        num_classes: number of object classes C.
        weights: ``imagenet`` / ``auto`` / ``none`` for the backbone (as :func:`create_classifier`), or a
            file: a ResNet-SSD detection checkpoint (loaded whole; a head with another class count is skipped)
            or a ResNet classifier weights file (backbone only).
        input_size: the side in pixels the detector is meant to run at (recorded in ``detkit_meta``).
        **kwargs: options of :class:`ResNetSSD` / :class:`SingleShotDetector`.

    Returns:
        The detector with ``detkit_meta`` set (``mean``/``std`` of the ImageNet weights, None when random).
    """
    if arch not in RESNET_SSD_ARCHS:
        raise ValueError(f"arch must be one of {RESNET_SSD_ARCHS}, got {arch!r}")
    if weights == "coco":
        raise ValueError(f"weights='coco' is for torchvision detectors; {arch}_ssd takes imagenet, auto, none or PATH")
    is_file = weights not in ("imagenet", "auto", "none")
    whole_detector = is_file and _holds_detector_weights(weights)
    backbone = create_classifier(arch, 1, "none" if whole_detector else weights)
    model = ResNetSSD(backbone=backbone, num_classes=num_classes, **kwargs)
    meta = backbone.detkit_meta
    mean, std = meta["mean"], meta["std"]
    if whole_detector:
        info = load_weights_file(model, weights)["info"]
        normalization = info.get("normalization") or {}
        mean = tuple(normalization["mean"]) if "mean" in normalization else None
        std = tuple(normalization["std"]) if "std" in normalization else None
    model.detkit_meta = {
        "name": f"{arch}_ssd",
        "num_classes": num_classes,
        "weights": weights,
        "pretrained": whole_detector or bool(meta["pretrained"]),
        "mean": mean,
        "std": std,
        "input_size": int(input_size),
    }
    return model
