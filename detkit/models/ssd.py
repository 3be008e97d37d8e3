"""ResNet-SSD: an ImageNet ResNet without its classifier, extra down-sampling blocks and per-level 3x3 predictors.

Registers ``resnet18_ssd``, ``resnet34_ssd`` and ``resnet50_ssd``; the forward is :class:`SingleShotDetector`'s.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import ResNet

from detkit.config.sections import FIRST_LEVELS, DetectConfig
from detkit.models.classifier import create_classifier
from detkit.models.detector import child_params
from detkit.models.meta import ModelMeta, normalization_from_info
from detkit.models.registry import register_detector
from detkit.models.single_shot import (
    SingleShotDetector,
    SSDPredictionHead,
    loss_config_kwargs,
)
from detkit.models.stages import Stages
from detkit.models.weights import load_weights_file, read_state_dict, strip_prefixes
from detkit.ops import DefaultBoxGenerator

__all__ = ["FIRST_LEVELS", "RESNET_SSD_ARCHS", "ResNetSSD", "resnet_ssd", "resnet_ssd_config_kwargs"]

RESNET_SSD_ARCHS = ("resnet18", "resnet34", "resnet50")


EXTRA_NORMS = ("group", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.GroupNorm(math.gcd(32, channels), channels) if kind == "group" else nn.BatchNorm2d(channels)


class _StridedConv(nn.Conv2d):
    """A 3x3 stride-2 convolution (padding 1) that runs as a 1x1 convolution on a 1 x 1 input.

    On a 1 x 1 input only the kernel's centre meets the data (the other taps see the zero padding), so the two
    give the same output and gradients. The short path also avoids a CPU bfloat16 kernel (``train.amp`` on the
    CPU) whose weight gradient for this shape holds NaN about every other call (torch 2.14, oneDNN).

    Shapes: ``Tensor[B, C_in, H, W]`` -> ``Tensor[B, C_out, ceil(H / 2), ceil(W / 2)]``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (1, 1):
            return nn.functional.conv2d(x, self.weight[:, :, 1:2, 1:2], self.bias)
        return super().forward(x)


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
        _StridedConv(mid, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
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
        anchor_scales: ``levels + 1`` explicit default-box scales (fractions of the image, e.g. fitted to a train
            set by :func:`detkit.data.box_stats.fit_ssd_anchors`); overrides ``min_ratio``/``max_ratio``.
        extra_norm: normalisation in the extra blocks, ``"group"`` (GroupNorm, works at any batch size) or
            ``"batch"`` (BatchNorm; needs several images per batch once levels are 1 x 1).
        first_level: the finest feature level, ``"layer3"`` (stride 16) or ``"layer2"`` (stride 8, one more
            level; ``aspect_ratios`` then needs ``3 + len(extra_channels)`` entries).
        **kwargs: loss and post-processing options of :class:`SingleShotDetector`.
    """

    min_input_size = 32  # one cell at the stride-32 level

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
        anchor_scales: Sequence[float] | None = None,
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
        if anchor_scales is not None and len(anchor_scales) != num_levels + 1:
            raise ValueError(f"anchor_scales must have one entry per feature level plus one ({num_levels + 1}), "
                             f"got {len(anchor_scales)}")
        self.anchor_generator = DefaultBoxGenerator(aspect_ratios, min_ratio=min_ratio, max_ratio=max_ratio,
                                                    scales=None if anchor_scales is None else list(anchor_scales))
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
    normalization = (meta.mean, meta.std) if meta.mean is not None else None
    if whole_detector:
        normalization = normalization_from_info(load_weights_file(model, weights)["info"])
    model.detkit_meta = ModelMeta.create(f"{arch}_ssd", num_classes, weights,
                                         pretrained=whole_detector or meta.pretrained,
                                         normalization=normalization, input_size=input_size)
    # with a backbone's weights the extra blocks start random: freezing the backbone must not freeze them
    model.detkit_new_stages = () if whole_detector else ("extras",)
    return model


def resnet_ssd_config_kwargs(detect: DetectConfig) -> dict[str, Any]:
    """A ResNet-SSD's keywords from the ``detect`` section: the loss options, ``first_level`` (``auto``, which an
    experiment resolves from the train boxes, means ``layer3`` here) and the default boxes' ``anchor_scales`` /
    ``anchor_ratios`` when set."""
    kwargs = {**loss_config_kwargs(detect), "first_level": "layer3" if detect.first_level == "auto" else
              detect.first_level}
    if detect.anchor_scales is not None:
        kwargs["anchor_scales"] = list(detect.anchor_scales)
    if detect.anchor_ratios is not None:
        kwargs["aspect_ratios"] = [list(r) for r in detect.anchor_ratios]
    return kwargs


@register_detector("resnet18_ssd", config_kwargs=resnet_ssd_config_kwargs)
def resnet18_ssd(*, num_classes: int, weights: str = "auto", **kwargs: Any) -> ResNetSSD:
    """SSD on an ImageNet ResNet-18: 6 levels (strides 16 .. 512), ~15M parameters."""
    return resnet_ssd("resnet18", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("resnet34_ssd", config_kwargs=resnet_ssd_config_kwargs)
def resnet34_ssd(*, num_classes: int, weights: str = "auto", **kwargs: Any) -> ResNetSSD:
    """SSD on an ImageNet ResNet-34: 6 levels (strides 16 .. 512)."""
    return resnet_ssd("resnet34", num_classes=num_classes, weights=weights, **kwargs)


@register_detector("resnet50_ssd", config_kwargs=resnet_ssd_config_kwargs)
def resnet50_ssd(*, num_classes: int, weights: str = "auto", **kwargs: Any) -> ResNetSSD:
    """SSD on an ImageNet ResNet-50: 6 levels (strides 16 .. 512)."""
    return resnet_ssd("resnet50", num_classes=num_classes, weights=weights, **kwargs)
