"""Augmentation options: the ``data.augment`` (classification) and ``detect.augment`` (detection) config sections.

Plain dataclasses with range checks; ``detkit.data.transforms`` and ``detkit.data.det_transforms`` build pipelines from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ClassificationAugment", "DetectionAugment"]


@dataclass
class ClassificationAugment:
    """Train-time augmentation options (probabilities ``*_p`` in [0, 1]) and the eval resize ratio.

    The defaults suit fine-tuning on photos: a milder crop than ImageNet's ``scale=(0.08, 1)`` because
    small datasets often have off-centre objects, a little colour, geometry, blur, noise and dropout.
    """

    scale: tuple[float, float] = (0.25, 1.0)  # RandomResizedCrop: range of the crop's area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop: range of the crop's aspect ratio (width / height)
    hflip_p: float = 0.5  # probability of a horizontal flip
    vflip_p: float = 0.0  # probability of a vertical flip (for aerial/microscopy images; off for photos)
    color_jitter_p: float = 0.5  # probability of colour jitter
    brightness: float = 0.3  # colour jitter: brightness factor drawn from [1 - b, 1 + b]
    contrast: float = 0.3  # colour jitter: contrast factor drawn from [1 - c, 1 + c]
    saturation: float = 0.3  # colour jitter: saturation factor drawn from [1 - s, 1 + s]
    hue: float = 0.05  # colour jitter: hue shift drawn from [-h, h], as a fraction of the hue circle (<= 0.5)
    affine_p: float = 0.3  # probability of a random affine transform (rotation, shear, translation)
    rotate: float = 15.0  # affine: rotation drawn from [-rotate, rotate] degrees
    shear: float = 5.0  # affine: shear drawn from [-shear, shear] degrees
    translate: float = 0.05  # affine: shift drawn from [-t, t] as a fraction of the image size
    blur_p: float = 0.1  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # Gaussian blur: sigma range in pixels
    noise_p: float = 0.1  # probability of additive Gaussian noise
    noise_std: tuple[float, float] = (0.02, 0.08)  # Gaussian noise: std range as a fraction of 255
    dropout_p: float = 0.25  # probability of CoarseDropout (rectangles filled with the mean colour)
    dropout_holes: tuple[int, int] = (1, 4)  # CoarseDropout: range of the number of rectangles
    dropout_size: tuple[float, float] = (0.05, 0.2)  # CoarseDropout: rectangle side range as a fraction of img_size
    eval_resize_ratio: float = 0.875  # eval: resize the shorter side to img_size / ratio, then centre-crop img_size

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value is out of range."""
        for name in ("hflip_p", "vflip_p", "color_jitter_p", "affine_p", "blur_p", "noise_p", "dropout_p"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_pair("scale", self.scale, 0.0, 1.0, open_low=True)
        _check_pair("ratio", self.ratio, 0.0, math.inf, open_low=True)
        for name in ("brightness", "contrast", "saturation"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("hue", self.hue, 0.0, 0.5)
        _check_range("rotate", self.rotate, 0.0, 180.0)
        _check_range("shear", self.shear, 0.0, 45.0)
        _check_range("translate", self.translate, 0.0, 0.5)
        _check_pair("blur_sigma", self.blur_sigma, 0.0, math.inf, open_low=True)
        _check_pair("noise_std", self.noise_std, 0.0, 1.0)
        _check_pair("dropout_holes", self.dropout_holes, 1, 1000)
        if any(int(v) != v for v in self.dropout_holes):
            raise ValueError(f"augment.dropout_holes must be two integers, got {self.dropout_holes!r}")
        _check_pair("dropout_size", self.dropout_size, 0.0, 1.0, open_low=True)
        _check_range("eval_resize_ratio", self.eval_resize_ratio, 0.0, 1.0, open_low=True)


@dataclass
class DetectionAugment:
    """Training-time augmentation for detection; every probability 0 turns its step off."""

    crop_p: float = 0.5  # probability of a box-safe random crop (keeps every box whole), resized to the square
    crop_erosion: float = 0.0  # fraction of the union of boxes the safe crop may cut away (0 = never cut a box)
    scale_p: float = 0.5  # probability of a zoom (scale jitter) with a shift on the letterboxed square
    scale_range: tuple[float, float] = (0.75, 1.25)  # zoom factors; < 1 shrinks (adds padding), > 1 enlarges
    translate: float = 0.1  # largest shift with the zoom, as a fraction of the side
    hflip_p: float = 0.5  # probability of a horizontal flip
    vflip_p: float = 0.0  # probability of a vertical flip
    color_p: float = 0.8  # probability of colour jitter
    brightness: float = 0.2  # colour jitter: brightness factor range 1 ± brightness
    contrast: float = 0.2  # colour jitter: contrast factor range 1 ± contrast
    saturation: float = 0.2  # colour jitter: saturation factor range 1 ± saturation
    hue: float = 0.02  # colour jitter: hue shift range ± hue (fraction of the colour circle)
    min_visibility: float = 0.3  # a box keeping less than this fraction of its area after cropping is dropped
    min_area: float = 4.0  # a box smaller than this many output pixels² after the transform is dropped
    fill: int = 114  # grey level of letterbox padding and of areas uncovered by the zoom

    def __post_init__(self) -> None:
        for name in ("crop_p", "scale_p", "hflip_p", "vflip_p", "color_p", "min_visibility", "crop_erosion"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DetectionAugment.{name} must be in [0, 1], got {value}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(
                f"DetectionAugment.scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}"
            )
        for name in ("translate", "brightness", "contrast", "saturation", "min_area"):
            if getattr(self, name) < 0:
                raise ValueError(f"DetectionAugment.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"DetectionAugment.hue must be in [0, 0.5], got {self.hue}")


def _check_range(name: str, value: float, low: float, high: float, *, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if open_low else low <= value) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"augment.{name} must be in {bracket}{low}, {high}], got {value!r}")


def _check_pair(name: str, value: Sequence[float], low: float, high: float, *, open_low: bool = False) -> None:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"augment.{name} must be a (min, max) pair, got {value!r}")
    for v in value:
        _check_range(name, v, low, high, open_low=open_low)
    if value[0] > value[1]:
        raise ValueError(f"augment.{name} must be (min, max) with min <= max, got {tuple(value)!r}")
