"""Classification augmentation: albumentations pipelines for training (random crops, flips, colour, ...) and eval,
the presets' summary in words, and batch mixing (mixup / cutmix with soft labels).

Both pipelines take an ``ndarray[H, W, 3]`` uint8 RGB image and end with Normalize and ToTensorV2.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor
from torchvision.transforms import v2

from detkit.config.augment import ClassificationAugment

__all__ = [
    "MIRROR_NOTE",
    "BatchMix",
    "ClassificationAugment",
    "build_batch_mix",
    "build_classification_transforms",
    "describe_classification_augment",
    "eval_resize_size",
    "step_line",
]

#: what the run summary says next to an enabled flip
MIRROR_NOTE = "a mirror changes the label of text, digits and left/right classes"


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
    ``img_size / aug.eval_resize_ratio`` (aspect kept) → centre crop → Normalize → ToTensorV2. Options left null
    come from ``aug.preset`` (``auto``: ``standard``). Mixup / cutmix act on batches: :func:`build_batch_mix`.

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
    aug = aug.resolved()  # null keys from the preset (auto outside an experiment: standard)
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


def describe_classification_augment(aug: ClassificationAugment, prefix: str = "data.augment") -> list[str]:
    """The enabled training transforms in words, each with the key that turns it off (for the run summary).

    Args:
        aug: the options (null keys are read from its preset).
        prefix: the config section the keys live in.

    Returns:
        One line per enabled step, e.g. ``"HorizontalFlip p=0.5 (off: data.augment.hflip_p=0; a mirror ...)"``.
    """
    a = aug.resolved()
    steps = [
        (tuple(a.scale) != (1.0, 1.0) or tuple(a.ratio) != (1.0, 1.0),
         f"RandomResizedCrop area {_pair(a.scale)}, aspect {_pair(a.ratio)}", ("scale=[1, 1]", "ratio=[1, 1]"), ""),
        (a.hflip_p > 0, f"HorizontalFlip p={a.hflip_p:g}", "hflip_p=0", MIRROR_NOTE),
        (a.vflip_p > 0, f"VerticalFlip p={a.vflip_p:g}", "vflip_p=0", MIRROR_NOTE),
        (a.affine_p > 0, f"Affine p={a.affine_p:g} (rotate {a.rotate:g} deg, shear {a.shear:g} deg, "
                         f"shift {a.translate:g})", "affine_p=0", ""),
        (a.color_jitter_p > 0, f"ColorJitter p={a.color_jitter_p:g}", "color_jitter_p=0", ""),
        (a.blur_p > 0, f"GaussianBlur p={a.blur_p:g}", "blur_p=0", ""),
        (a.noise_p > 0, f"GaussNoise p={a.noise_p:g}", "noise_p=0", ""),
        (a.dropout_p > 0, f"CoarseDropout p={a.dropout_p:g}", "dropout_p=0", ""),
        (a.mix_p > 0 and a.mixup_alpha > 0, f"mixup alpha {a.mixup_alpha:g} (batches, p={a.mix_p:g})",
         "mixup_alpha=0", "soft labels"),
        (a.mix_p > 0 and a.cutmix_alpha > 0, f"cutmix alpha {a.cutmix_alpha:g} (batches, p={a.mix_p:g})",
         "cutmix_alpha=0", "soft labels"),
    ]
    return [step_line(text, off, note, prefix) for on, text, off, note in steps if on]


def step_line(text: str, off: str | Sequence[str], note: str, prefix: str) -> str:
    """``"TEXT (off: PREFIX.KEY=V ...; NOTE)"``: one enabled augmentation step and the keys that turn it off."""
    keys = " ".join(f"{prefix}.{k}" for k in ((off,) if isinstance(off, str) else off))
    return f"{text} (off: {keys}" + (f"; {note})" if note else ")")


def _pair(values: Sequence[float]) -> str:
    return f"[{values[0]:.3g}, {values[1]:.3g}]"


class BatchMix:
    """Mixup / cutmix of a training batch (torchvision's ``v2.MixUp`` / ``v2.CutMix``) with soft labels.

    With probability ``p`` a batch is mixed (cutmix or mixup, one at random when both are on); otherwise its labels
    become one-hot. Draws from torch's global generator, which the trainer seeds every epoch.

    Args:
        num_classes: C.
        mixup_alpha: Beta(alpha, alpha) parameter of mixup (0: off).
        cutmix_alpha: Beta(alpha, alpha) parameter of cutmix (0: off).
        p: probability that a batch is mixed.
    """

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float, p: float) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes: mixing needs at least 2 classes, got {num_classes}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.num_classes = int(num_classes)
        self.p = float(p)
        self.mixers = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) + \
                      ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mix a batch.

        Args:
            images: ``Tensor[B, 3, H, W]`` float.
            labels: ``Tensor[B]`` int64 in ``0..C-1``.

        Returns:
            ``(images Tensor[B, 3, H, W], soft labels Tensor[B, C] float32)``; every row of the labels sums to 1.
        """
        if self.mixers and len(labels) > 1 and float(torch.rand(())) < self.p:
            mixer = self.mixers[int(torch.randint(len(self.mixers), ()))]
            images, soft = mixer(images, labels)
            return images, soft.float()
        return images, torch.nn.functional.one_hot(labels, self.num_classes).float()


def build_batch_mix(aug: ClassificationAugment, num_classes: int) -> BatchMix | None:
    """The batch mixing ``aug`` asks for (its ``mix_p``, ``mixup_alpha``, ``cutmix_alpha``), or None when off."""
    a = aug.resolved()
    if a.mix_p <= 0 or (a.mixup_alpha <= 0 and a.cutmix_alpha <= 0):
        return None
    return BatchMix(num_classes, a.mixup_alpha, a.cutmix_alpha, a.mix_p)
