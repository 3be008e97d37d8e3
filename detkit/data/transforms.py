"""Classification augmentation: albumentations pipelines for training (random crops, flips, colour, ...) and eval.

Both pipelines take an ``ndarray[H, W, 3]`` uint8 RGB image and end with Normalize and ToTensorV2.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from detkit.config.augment import ClassificationAugment

__all__ = ["ClassificationAugment", "build_classification_transforms", "eval_resize_size"]


def eval_resize_size(img_size: int, eval_resize_ratio: float) -> int:
    """Shorter-side length the eval pipeline resizes to before the ``img_size`` centre crop (at least ``img_size``)."""
    return max(img_size, int(round(img_size / eval_resize_ratio)))


def build_classification_transforms(
    train: bool,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    aug: ClassificationAugment | None = None,
) -> A.Compose:
    """Compose the train or eval pipeline for classification.

    Train: RandomResizedCrop → flips → Affine → ColorJitter → GaussianBlur → GaussNoise → CoarseDropout
    (each only when its probability is > 0) → Normalize → ToTensorV2. Eval: resize the shorter side to
    ``img_size / aug.eval_resize_ratio`` (aspect kept) → centre crop → Normalize → ToTensorV2.

    Args:
        train: build the training pipeline (random) or the eval pipeline (deterministic).
        img_size: output side length in pixels.
        mean: per-channel RGB mean in [0, 1] units (ImageNet: ``(0.485, 0.456, 0.406)``).
        std: per-channel RGB std in [0, 1] units (ImageNet: ``(0.229, 0.224, 0.225)``).
        aug: augmentation options; ``None`` uses the defaults.

    Returns:
        A ``Compose`` mapping ``image=ndarray[H, W, 3]`` uint8 RGB (any H, W) to
        ``{"image": Tensor[3, img_size, img_size] float32}``, normalised as ``(x / 255 - mean) / std``.
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    mean, std = _check_mean_std(mean, std)
    aug = ClassificationAugment() if aug is None else aug
    if not isinstance(aug, ClassificationAugment):
        raise TypeError(f"aug must be a ClassificationAugment or None, got {type(aug).__name__}")
    aug.validate()
    steps = _train_steps(img_size, mean, aug) if train else _eval_steps(img_size, aug)
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)


def _train_steps(img_size: int, mean: tuple[float, ...], aug: ClassificationAugment) -> list[A.BasicTransform]:
    steps: list[A.BasicTransform] = [
        A.RandomResizedCrop(size=(img_size, img_size), scale=tuple(aug.scale), ratio=tuple(aug.ratio))
    ]
    if aug.hflip_p > 0:
        steps.append(A.HorizontalFlip(p=aug.hflip_p))
    if aug.vflip_p > 0:
        steps.append(A.VerticalFlip(p=aug.vflip_p))
    if aug.affine_p > 0:
        steps.append(
            A.Affine(
                rotate=(-aug.rotate, aug.rotate),
                shear=(-aug.shear, aug.shear),
                translate_percent=(-aug.translate, aug.translate),
                border_mode=cv2.BORDER_REFLECT_101,  # no black corners for the model to learn from
                p=aug.affine_p,
            )
        )
    if aug.color_jitter_p > 0:
        steps.append(
            A.ColorJitter(
                brightness=aug.brightness,
                contrast=aug.contrast,
                saturation=aug.saturation,
                hue=aug.hue,
                p=aug.color_jitter_p,
            )
        )
    if aug.blur_p > 0:
        steps.append(A.GaussianBlur(sigma_limit=tuple(aug.blur_sigma), blur_limit=0, p=aug.blur_p))
    if aug.noise_p > 0:
        steps.append(A.GaussNoise(std_range=tuple(aug.noise_std), p=aug.noise_p))
    if aug.dropout_p > 0:
        steps.append(
            A.CoarseDropout(
                num_holes_range=(int(aug.dropout_holes[0]), int(aug.dropout_holes[1])),
                hole_height_range=tuple(aug.dropout_size),
                hole_width_range=tuple(aug.dropout_size),
                # the mean colour becomes 0 after Normalize: a hole carries no signal either way
                fill=tuple(round(m * 255.0) for m in mean),
                p=aug.dropout_p,
            )
        )
    return steps


def _eval_steps(img_size: int, aug: ClassificationAugment) -> list[A.BasicTransform]:
    return [
        A.SmallestMaxSize(max_size=eval_resize_size(img_size, aug.eval_resize_ratio), area_for_downscale="image"),
        A.CenterCrop(height=img_size, width=img_size),
    ]


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    for name, value in (("mean", mean), ("std", std)):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
            raise ValueError(f"{name} must be 3 per-channel RGB values, got {value!r}")
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if any(not 0.0 <= m <= 1.0 for m in mean_t):
        raise ValueError(f"mean must be in [0, 1] units (ImageNet: (0.485, 0.456, 0.406)), got {mean_t}")
    if any(not 0.0 < s <= 1.0 for s in std_t):
        raise ValueError(f"std must be in (0, 1] units (ImageNet: (0.229, 0.224, 0.225)), got {std_t}")
    return mean_t, std_t
