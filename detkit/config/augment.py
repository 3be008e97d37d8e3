"""Augmentation options: the ``data.augment`` (classification) and ``detect.augment`` (detection) config sections.

Plain dataclasses with range checks and the presets (``none | light | standard | strong``) that fill every key left
null; ``detkit.data.transforms`` and ``detkit.data.det_transforms`` build pipelines from the resolved values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUGMENT_PRESETS",
    "CLASSIFICATION_PRESETS",
    "DETECTION_PRESETS",
    "ClassificationAugment",
    "DetectionAugment",
    "presets_markdown",
]

#: the preset names; ``auto`` (the default) lets the start policy choose one (``standard`` outside an experiment)
AUGMENT_PRESETS = ("none", "light", "standard", "strong")

# What each classification preset sets. "light" keeps every label-changing or content-destroying step off (no
# mirror: it changes the label of text, digits and left/right classes; no cut-outs, no mixing); "standard" is
# the usual fine-tuning pipeline for photos; "strong" adds more of everything and mixup/cutmix for long runs.
CLASSIFICATION_PRESETS: dict[str, dict[str, Any]] = {
    "none": dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, vflip_p=0.0, color_jitter_p=0.0, brightness=0.0,
                 contrast=0.0, saturation=0.0, hue=0.0, affine_p=0.0, rotate=0.0, shear=0.0, translate=0.0,
                 blur_p=0.0, blur_sigma=(0.1, 1.5), noise_p=0.0, noise_std=(0.02, 0.08), dropout_p=0.0,
                 dropout_holes=(1, 4), dropout_size=(0.05, 0.2), mixup_alpha=0.0, cutmix_alpha=0.0, mix_p=0.0,
                 eval_resize_ratio=1.0),
    "light": dict(scale=(0.8, 1.0), ratio=(0.9, 1.1), hflip_p=0.0, vflip_p=0.0, color_jitter_p=0.3, brightness=0.2,
                  contrast=0.2, saturation=0.2, hue=0.02, affine_p=0.3, rotate=10.0, shear=0.0, translate=0.05,
                  blur_p=0.0, blur_sigma=(0.1, 1.5), noise_p=0.0, noise_std=(0.02, 0.08), dropout_p=0.0,
                  dropout_holes=(1, 4), dropout_size=(0.05, 0.2), mixup_alpha=0.0, cutmix_alpha=0.0, mix_p=0.0,
                  eval_resize_ratio=1.0),
    "standard": dict(scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), hflip_p=0.5, vflip_p=0.0, color_jitter_p=0.5,
                     brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, affine_p=0.3, rotate=15.0, shear=5.0,
                     translate=0.05, blur_p=0.1, blur_sigma=(0.1, 1.5), noise_p=0.1, noise_std=(0.02, 0.08),
                     dropout_p=0.25, dropout_holes=(1, 4), dropout_size=(0.05, 0.2), mixup_alpha=0.0,
                     cutmix_alpha=0.0, mix_p=0.0, eval_resize_ratio=0.875),
    "strong": dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip_p=0.5, vflip_p=0.0, color_jitter_p=0.8,
                   brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, affine_p=0.5, rotate=20.0, shear=10.0,
                   translate=0.1, blur_p=0.2, blur_sigma=(0.1, 2.0), noise_p=0.2, noise_std=(0.02, 0.1),
                   dropout_p=0.5, dropout_holes=(1, 6), dropout_size=(0.05, 0.25), mixup_alpha=0.2,
                   cutmix_alpha=1.0, mix_p=0.5, eval_resize_ratio=0.875),
}  # fmt: skip

# Detection presets: "light" keeps every box and its label as they are (no crop, no mirror, no mosaic), only a
# mild zoom/shift and colour; "standard" is the previous default (box-safe crops, zoom, mirror, colour);
# "strong" adds wider zooms and mosaic.
DETECTION_PRESETS: dict[str, dict[str, Any]] = {
    "none": dict(crop_p=0.0, crop_erosion=0.0, scale_p=0.0, scale_range=(1.0, 1.0), translate=0.0, hflip_p=0.0,
                 vflip_p=0.0, color_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, mosaic_p=0.0),
    "light": dict(crop_p=0.0, crop_erosion=0.0, scale_p=0.5, scale_range=(0.9, 1.1), translate=0.05, hflip_p=0.0,
                  vflip_p=0.0, color_p=0.5, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, mosaic_p=0.0),
    "standard": dict(crop_p=0.5, crop_erosion=0.0, scale_p=0.5, scale_range=(0.75, 1.25), translate=0.1,
                     hflip_p=0.5, vflip_p=0.0, color_p=0.8, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02,
                     mosaic_p=0.0),
    "strong": dict(crop_p=0.5, crop_erosion=0.0, scale_p=0.7, scale_range=(0.5, 1.5), translate=0.2, hflip_p=0.5,
                   vflip_p=0.0, color_p=0.8, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, mosaic_p=0.5),
}  # fmt: skip


class _Preset:
    """Shared behaviour of the two augmentation sections: a preset name and fields left null until resolved."""

    preset: str
    PRESETS: dict[str, dict[str, Any]] = {}

    def resolved(self, preset: str | None = None) -> Any:
        """A copy with a concrete preset (``preset``, else this one's; ``auto`` means ``standard``) and every
        null field filled from it; fields already set keep their values (explicit keys win)."""
        name = preset or self.preset
        name = "standard" if name == "auto" else name
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"augment.preset must be auto or one of {AUGMENT_PRESETS}, got {name!r}")
        values = {k: (self.PRESETS[name][k] if v is None else v) for k, v in self._preset_fields().items()}
        return dataclasses.replace(self, preset=name, **values)

    def _preset_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.PRESETS["standard"]}

    def _check_preset(self) -> None:
        if self.preset not in ("auto", *AUGMENT_PRESETS):
            raise ValueError(f"augment.preset must be auto or one of {AUGMENT_PRESETS}, got {self.preset!r}")


@dataclass
class ClassificationAugment(_Preset):
    """Train-time augmentation options (probabilities ``*_p`` in [0, 1]) and the eval resize ratio.

    Every option left null takes its value from ``preset`` (see :data:`CLASSIFICATION_PRESETS` and the preset
    table in ``configs/README.md``); an option that is set wins over the preset.
    """

    PRESETS = CLASSIFICATION_PRESETS

    preset: str = "auto"  # none, light, standard or strong fills every key below left null (auto: the start policy's choice)
    scale: tuple[float, float] | None = None  # RandomResizedCrop: range of the crop's area as a fraction of the image
    ratio: tuple[float, float] | None = None  # RandomResizedCrop: range of the crop's aspect ratio (width / height)
    hflip_p: float | None = None  # probability of a horizontal flip (a mirror changes the label of text, digits, left/right classes)
    vflip_p: float | None = None  # probability of a vertical flip (for aerial/microscopy images; off for photos)
    color_jitter_p: float | None = None  # probability of colour jitter
    brightness: float | None = None  # colour jitter: brightness factor drawn from [1 - b, 1 + b]
    contrast: float | None = None  # colour jitter: contrast factor drawn from [1 - c, 1 + c]
    saturation: float | None = None  # colour jitter: saturation factor drawn from [1 - s, 1 + s]
    hue: float | None = None  # colour jitter: hue shift drawn from [-h, h], as a fraction of the hue circle (<= 0.5)
    affine_p: float | None = None  # probability of a random affine transform (rotation, shear, translation)
    rotate: float | None = None  # affine: rotation drawn from [-rotate, rotate] degrees
    shear: float | None = None  # affine: shear drawn from [-shear, shear] degrees
    translate: float | None = None  # affine: shift drawn from [-t, t] as a fraction of the image size
    blur_p: float | None = None  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] | None = None  # Gaussian blur: sigma range in pixels
    noise_p: float | None = None  # probability of additive Gaussian noise
    noise_std: tuple[float, float] | None = None  # Gaussian noise: std range as a fraction of 255
    dropout_p: float | None = None  # probability of CoarseDropout (rectangles filled with the mean colour)
    dropout_holes: tuple[int, int] | None = None  # CoarseDropout: range of the number of rectangles
    dropout_size: tuple[float, float] | None = None  # CoarseDropout: rectangle side range as a fraction of img_size
    mixup_alpha: float | None = None  # mixup: Beta(alpha, alpha) mixing of two images and their labels (0: off)
    cutmix_alpha: float | None = None  # cutmix: Beta(alpha, alpha) area of a pasted rectangle, labels by area (0: off)
    mix_p: float | None = None  # probability that a training batch is mixed (mixup or cutmix, one at random when both are on)
    eval_resize_ratio: float | None = None  # eval: resize the shorter side to img_size / ratio, then centre-crop img_size

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value is out of range (null fields are not checked)."""
        self._check_preset()
        for name in ("hflip_p", "vflip_p", "color_jitter_p", "affine_p", "blur_p", "noise_p", "dropout_p", "mix_p"):
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
        if self.dropout_holes is not None and any(int(v) != v for v in self.dropout_holes):
            raise ValueError(f"augment.dropout_holes must be two integers, got {self.dropout_holes!r}")
        _check_pair("dropout_size", self.dropout_size, 0.0, 1.0, open_low=True)
        for name in ("mixup_alpha", "cutmix_alpha"):
            _check_range(name, getattr(self, name), 0.0, math.inf)
        _check_range("eval_resize_ratio", self.eval_resize_ratio, 0.0, 1.0, open_low=True)


@dataclass
class DetectionAugment(_Preset):
    """Training-time augmentation for detection; every probability 0 turns its step off.

    Every option left null takes its value from ``preset`` (:data:`DETECTION_PRESETS`); a set option wins.
    """

    PRESETS = DETECTION_PRESETS

    preset: str = "auto"  # none, light, standard or strong fills every key below left null (auto: the start policy's choice)
    crop_p: float | None = None  # probability of a box-safe random crop (keeps every box whole), resized to the square
    crop_erosion: float | None = None  # fraction of the union of boxes the safe crop may cut away (0 = never cut a box)
    scale_p: float | None = None  # probability of a zoom (scale jitter) with a shift on the letterboxed square
    scale_range: tuple[float, float] | None = None  # zoom factors; < 1 shrinks (adds padding), > 1 enlarges
    translate: float | None = None  # largest shift with the zoom, as a fraction of the side
    hflip_p: float | None = None  # probability of a horizontal flip (a mirror changes the label of text, digits, left/right classes)
    vflip_p: float | None = None  # probability of a vertical flip
    color_p: float | None = None  # probability of colour jitter
    brightness: float | None = None  # colour jitter: brightness factor range 1 ± brightness
    contrast: float | None = None  # colour jitter: contrast factor range 1 ± contrast
    saturation: float | None = None  # colour jitter: saturation factor range 1 ± saturation
    hue: float | None = None  # colour jitter: hue shift range ± hue (fraction of the colour circle)
    mosaic_p: float | None = None  # probability of a mosaic: 4 train images on a 2 x 2 grid, cropped around a random centre (boxes kept)
    min_visibility: float = 0.3  # a box keeping less than this fraction of its area after cropping is dropped
    min_area: float = 4.0  # a box smaller than this many output pixels² after the transform is dropped
    fill: int = 114  # grey level of letterbox padding and of areas uncovered by the zoom

    def __post_init__(self) -> None:
        self._check_preset()
        for name in ("crop_p", "scale_p", "hflip_p", "vflip_p", "color_p", "min_visibility", "crop_erosion",
                     "mosaic_p"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"DetectionAugment.{name} must be in [0, 1], got {value}")
        if self.scale_range is not None:
            lo, hi = self.scale_range
            if not 0 < lo <= hi:
                raise ValueError(
                    f"DetectionAugment.scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}"
                )
        for name in ("translate", "brightness", "contrast", "saturation", "min_area"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"DetectionAugment.{name} must be >= 0, got {value}")
        if self.hue is not None and not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"DetectionAugment.hue must be in [0, 0.5], got {self.hue}")


def presets_markdown() -> str:
    """Markdown tables of what every preset sets, one per section (embedded in ``configs/README.md``)."""
    out = []
    for section, presets in (("data.augment", CLASSIFICATION_PRESETS), ("detect.augment", DETECTION_PRESETS)):
        lines = [f"| `{section}` key | " + " | ".join(f"`{p}`" for p in AUGMENT_PRESETS) + " |",
                 "| --- |" + " --- |" * len(AUGMENT_PRESETS)]
        for key in presets["standard"]:
            cells = [_format_value(presets[p][key]) for p in AUGMENT_PRESETS]
            lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _check_range(name: str, value: float | None, low: float, high: float, *, open_low: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if open_low else low <= value) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"augment.{name} must be in {bracket}{low}, {high}], got {value!r}")


def _check_pair(name: str, value: Sequence[float] | None, low: float, high: float, *, open_low: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"augment.{name} must be a (min, max) pair, got {value!r}")
    for v in value:
        _check_range(name, v, low, high, open_low=open_low)
    if value[0] > value[1]:
        raise ValueError(f"augment.{name} must be (min, max) with min <= max, got {tuple(value)!r}")
