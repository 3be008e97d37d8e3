"""TinySSD of *Dive into Deep Learning* (single-shot multibox detection): small, from scratch, for teaching and speed.

Down-sampling blocks 3 -> 16 -> 32 -> 64, three more to 128 channels, global max pool; 5 levels, 4 anchors per cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detkit.config.sections import DetectConfig
from detkit.models.detector import child_params
from detkit.models.meta import ModelMeta, normalization_from_info
from detkit.models.registry import register_detector
from detkit.models.single_shot import (
    SingleShotDetector,
    SSDPredictionHead,
    loss_config_kwargs,
)
from detkit.models.stages import Stages
from detkit.models.weights import load_weights_file
from detkit.ops import MultiboxPriorGenerator

__all__ = ["TINY_SSD_RATIOS", "TINY_SSD_SIZES", "TinySSD", "down_sample_block", "tiny_ssd", "tiny_ssd_config_kwargs"]

#: the textbook's anchor sizes per level, fractions of the feature map (two sizes each)
TINY_SSD_SIZES = ((0.2, 0.272), (0.37, 0.447), (0.54, 0.619), (0.71, 0.79), (0.88, 0.961))
#: the textbook's width/height ratios, the same on every level
TINY_SSD_RATIOS = ((1.0, 2.0, 0.5),) * 5


def down_sample_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two (3x3 conv, BN, ReLU) then 2x2 max pooling: ``Tensor[B, in, H, W] -> Tensor[B, out, H/2, W/2]``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class TinySSD(SingleShotDetector):
    """The textbook's TinySSD behind the detkit detector interface.

    Levels: the base net's output (stride 8, 64 channels), three down-sampling blocks (128 channels, strides
    16, 32, 64) and a global max pool (1 x 1); at 256 px that is 32, 16, 8, 4 and 1 cells per side and
    ``(1024 + 256 + 64 + 16 + 1) * 4 = 5444`` anchors. Anchors are :func:`detkit.ops.multibox_prior` of
    each level, scaled to the input's pixels, cached per (feature shapes, image size, device).

    Args:
        num_classes: number of object classes C.
        sizes: per-level anchor sizes (fractions of the map).
        ratios: per-level width/height ratios (``len(sizes[l]) + len(ratios[l]) - 1`` anchors per cell).
        **kwargs: loss and post-processing options of :class:`~detkit.models.ssd.SingleShotDetector`.
    """

    min_input_size = 64  # six halvings before the global pool

    def __init__(
        self,
        *,
        num_classes: int,
        sizes: Sequence[Sequence[float]] = TINY_SSD_SIZES,
        ratios: Sequence[Sequence[float]] = TINY_SSD_RATIOS,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        if len(sizes) != 5 or len(ratios) != 5:
            raise ValueError(f"sizes and ratios need one entry per level (5), got {len(sizes)} and {len(ratios)}")
        self.anchor_generator = MultiboxPriorGenerator(sizes, ratios)
        self.base = nn.Sequential(down_sample_block(3, 16), down_sample_block(16, 32), down_sample_block(32, 64))
        self.blocks = nn.ModuleList(
            [
                down_sample_block(64, 128),
                down_sample_block(128, 128),
                down_sample_block(128, 128),
                nn.AdaptiveMaxPool2d(1),
            ]
        )
        self.head = SSDPredictionHead(
            in_channels=[64, 128, 128, 128, 128],
            num_anchors=self.anchor_generator.num_anchors_per_location(),
            num_columns=self.num_columns,
            prior_probability=None if self.loss_fn.has_background_column else 0.01,
        )

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """Five maps: base net output, three down-sampling blocks, global max pool."""
        x = self.base(images)
        features = [x]
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features

    @property
    def sizes(self) -> list[list[float]]:
        """Per-level anchor sizes (fractions of the map)."""
        return self.anchor_generator.sizes

    @property
    def ratios(self) -> list[list[float]]:
        """Per-level width/height ratios."""
        return self.anchor_generator.ratios

    def anchors_for(self, features: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        return self.anchor_generator.grid_anchors(
            [tuple(f.shape[-2:]) for f in features], image_size, dtype=torch.float32, device=features[0].device
        )

    def detkit_stages(self) -> Stages:
        """``base`` (down-sampling to stride 8), ``extras`` (the later blocks), ``head`` (predictors)."""
        return {
            "base": child_params(self, "base"),
            "extras": child_params(self, "blocks"),
            "head": child_params(self, "head"),
        }


def tiny_ssd(*, num_classes: int, weights: str = "auto", input_size: int = 256, **kwargs: Any) -> TinySSD:
    """Build a TinySSD.

    Args:
        num_classes: number of object classes C.
        weights: ``none`` / ``auto`` (random init: there are no published weights), ``imagenet`` (an error,
            for the same reason) or a TinySSD detection checkpoint file.
        input_size: the side in pixels the model is meant to run at (the textbook uses 256).
        **kwargs: options of :class:`TinySSD`.
    """
    if weights in ("imagenet", "coco"):
        raise ValueError(f"tiny_ssd has no published {weights} weights; use weights='none' or a checkpoint PATH")
    model = TinySSD(num_classes=num_classes, **kwargs)
    normalization = None
    if weights not in ("auto", "none"):
        normalization = normalization_from_info(load_weights_file(model, weights)["info"])
    model.detkit_meta = ModelMeta.create("tiny_ssd", num_classes, weights, pretrained=weights not in ("auto", "none"),
                                         normalization=normalization, input_size=input_size)
    return model


def tiny_ssd_config_kwargs(detect: DetectConfig) -> dict[str, Any]:
    """TinySSD's keywords from the ``detect`` section: the loss options (it has no ``first_level`` choice)."""
    if detect.first_level not in ("layer3", "auto"):
        raise ValueError("detect.first_level: only ResNet-SSDs have a layer2 level, not tiny_ssd; leave it at layer3")
    return loss_config_kwargs(detect)


register_detector("tiny_ssd", config_kwargs=tiny_ssd_config_kwargs)(tiny_ssd)
