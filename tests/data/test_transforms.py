"""Tests for detkit.data.transforms: output shape/dtype/normalisation, eval geometry, options and validation,
presets, the summary in words, and mixup / cutmix."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from detkit.config.augment import AUGMENT_PRESETS, CLASSIFICATION_PRESETS, presets_markdown
from detkit.data.transforms import (
    BatchMix,
    ClassificationAugment,
    build_batch_mix,
    build_classification_transforms,
    describe_classification_augment,
    eval_resize_size,
)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(40, 60), (75, 30), (17, 17)])
def test_output_is_float_tensor_of_img_size(train: bool, shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    tf = build_classification_transforms(train, 24, *IMAGENET)
    for _ in range(3):
        out = tf(image=image)["image"]
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 24, 24)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("train", [True, False])
def test_constant_image_is_normalised_per_channel(train: bool) -> None:
    # Every geometric/pixel op keeps a constant image constant except colour/noise/blur/dropout: turn those off.
    aug = ClassificationAugment(color_jitter_p=0.0, noise_p=0.0, dropout_p=0.0, blur_p=0.0)
    rgb = np.array([200, 100, 30], dtype=np.uint8)
    image = np.broadcast_to(rgb, (50, 70, 3)).copy()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.1)
    out = build_classification_transforms(train, 16, mean, std, aug)(image=image)["image"]
    expected = (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(out, expected[:, None, None].expand(3, 16, 16), atol=1e-5, rtol=0)


def test_eval_resizes_shorter_side_then_centre_crops() -> None:
    # A 40x120 image of three 40x40 colour blocks: after the shorter side goes to 20 (img_size 20, ratio 1)
    # the image is 20x60 and the centre crop is exactly the middle block.
    image = np.zeros((40, 120, 3), np.uint8)
    image[:, :40] = (255, 0, 0)
    image[:, 40:80] = (0, 255, 0)
    image[:, 80:] = (0, 0, 255)
    tf = build_classification_transforms(False, 20, (0, 0, 0), (1, 1, 1), ClassificationAugment(eval_resize_ratio=1.0))
    out = tf(image=image)["image"]
    expected = torch.zeros(3, 20, 20)
    expected[1] = 1.0
    torch.testing.assert_close(out, expected)


def test_eval_resize_ratio_sets_the_resize_before_crop() -> None:
    assert eval_resize_size(224, 0.875) == 256
    assert eval_resize_size(64, 1.0) == 64
    # With ratio 0.5 a centred square covers the middle half: a border of width 1/4 never shows.
    image = np.zeros((80, 80, 3), np.uint8)
    image[20:60, 20:60] = 255
    tf = build_classification_transforms(False, 16, (0, 0, 0), (1, 1, 1), ClassificationAugment(eval_resize_ratio=0.5))
    out = tf(image=image)["image"]
    assert out.shape == (3, 16, 16) and float(out.min()) > 0.99


def test_eval_is_deterministic_train_is_random() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    eval_tf = build_classification_transforms(False, 32, *IMAGENET)
    assert torch.equal(eval_tf(image=image)["image"], eval_tf(image=image)["image"])
    train_tf = build_classification_transforms(True, 32, *IMAGENET)
    outs = [train_tf(image=image)["image"] for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    train_tf.set_random_seed(7)
    first = train_tf(image=image)["image"]
    train_tf.set_random_seed(7)
    assert torch.equal(first, train_tf(image=image)["image"])


def test_train_pipeline_includes_only_enabled_augmentations() -> None:
    default = build_classification_transforms(True, 32, *IMAGENET)
    names = [type(t).__name__ for t in default.transforms]
    assert names == [
        "RandomResizedCrop", "HorizontalFlip", "Affine", "ColorJitter", "GaussianBlur",
        "GaussNoise", "CoarseDropout", "Normalize", "ToTensorV2",
    ]  # fmt: skip
    off = ClassificationAugment(hflip_p=0, affine_p=0, color_jitter_p=0, blur_p=0, noise_p=0, dropout_p=0, vflip_p=1.0)
    names = [type(t).__name__ for t in build_classification_transforms(True, 32, *IMAGENET, off).transforms]
    assert names == ["RandomResizedCrop", "VerticalFlip", "Normalize", "ToTensorV2"]
    crop = default.transforms[0]
    assert tuple(crop.size) == (32, 32) and tuple(crop.scale) == (0.25, 1.0)
    eval_names = [type(t).__name__ for t in build_classification_transforms(False, 32, *IMAGENET).transforms]
    assert eval_names == ["SmallestMaxSize", "CenterCrop", "Normalize", "ToTensorV2"]


def test_vertical_flip_only_pipeline_flips() -> None:
    aug = ClassificationAugment(
        scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0, vflip_p=1.0, affine_p=0, color_jitter_p=0, blur_p=0,
        noise_p=0, dropout_p=0,
    )
    image = np.zeros((16, 16, 3), np.uint8)
    image[:8] = 255  # white top half
    out = build_classification_transforms(True, 16, (0, 0, 0), (1, 1, 1), aug)(image=image)["image"]
    assert float(out[:, 8:].mean()) == 1.0 and float(out[:, :8].mean()) == 0.0


def test_coarse_dropout_fills_with_the_mean_colour() -> None:
    aug = ClassificationAugment(
        scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0, affine_p=0, color_jitter_p=0, blur_p=0, noise_p=0,
        dropout_p=1.0, dropout_holes=(3, 3), dropout_size=(0.25, 0.25),
    )
    image = np.full((32, 32, 3), 255, np.uint8)
    out = build_classification_transforms(True, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), aug)(image=image)["image"]
    holes = out.abs() < 0.01  # the mean colour normalises to ~0 (127.5 rounds to 128)
    white = (out - 1.0).abs() < 1e-5
    assert bool((holes | white).all()) and 0 < int(holes[0].sum()) <= 3 * 8 * 8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hflip_p": 1.5}, "hflip_p"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (0.9, 0.5)}, "min <= max"),
        ({"ratio": (1.0,)}, "ratio"),
        ({"hue": 0.7}, "hue"),
        ({"dropout_holes": (1.5, 2)}, "dropout_holes"),
        ({"eval_resize_ratio": 0.0}, "eval_resize_ratio"),
    ],
)
def test_augment_rejects_out_of_range_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClassificationAugment(**kwargs)


def test_augment_fields_set_after_construction_are_checked_by_the_builder() -> None:
    aug = ClassificationAugment()
    aug.noise_std = [0.1, 0.05]  # e.g. a dotted config override
    with pytest.raises(ValueError, match="noise_std"):
        build_classification_transforms(True, 32, *IMAGENET, aug)
    aug.noise_std = [0.01, 0.05]  # lists (as YAML gives them) work
    assert isinstance(build_classification_transforms(True, 32, *IMAGENET, aug), A.Compose)


@pytest.mark.parametrize(
    ("img_size", "mean", "std", "match"),
    [
        (0, IMAGENET[0], IMAGENET[1], "img_size"),
        (32, (124.0, 116.0, 104.0), IMAGENET[1], r"\[0, 1\] units"),
        (32, IMAGENET[0], (0.2, 0.0, 0.2), "std"),
        (32, (0.5, 0.5), IMAGENET[1], "3 per-channel"),
    ],
)
def test_builder_rejects_bad_arguments(img_size: int, mean: tuple, std: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_classification_transforms(True, img_size, mean, std)
    with pytest.raises(TypeError, match="aug"):
        build_classification_transforms(True, 32, *IMAGENET, aug={"hflip_p": 0.5})


# ----------------------------------------------------------------------------- presets and batch mixing

PRESET_STEPS = {  # the documented pipelines (configs/README.md, "Augmentation presets")
    "none": ["RandomResizedCrop", "Normalize", "ToTensorV2"],
    "light": ["RandomResizedCrop", "Affine", "ColorJitter", "Normalize", "ToTensorV2"],
    "standard": ["RandomResizedCrop", "HorizontalFlip", "Affine", "ColorJitter", "GaussianBlur", "GaussNoise",
                 "CoarseDropout", "Normalize", "ToTensorV2"],
    "strong": ["RandomResizedCrop", "HorizontalFlip", "Affine", "ColorJitter", "GaussianBlur", "GaussNoise",
               "CoarseDropout", "Normalize", "ToTensorV2"],
}


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_presets_build_the_documented_pipelines(preset: str) -> None:
    aug = ClassificationAugment(preset=preset)
    tf = build_classification_transforms(True, 32, *IMAGENET, aug)
    assert [type(t).__name__ for t in tf.transforms] == PRESET_STEPS[preset]
    values = CLASSIFICATION_PRESETS[preset]
    crop = tf.transforms[0]
    assert tuple(crop.scale) == tuple(values["scale"]) and tuple(crop.ratio) == pytest.approx(values["ratio"])
    eval_tf = build_classification_transforms(False, 32, *IMAGENET, aug)
    assert eval_tf.transforms[0].max_size == eval_resize_size(32, values["eval_resize_ratio"])
    mixing = build_batch_mix(aug, 4)
    assert (mixing is not None) == (preset == "strong")  # mixup / cutmix only in the strong preset


def test_preset_none_trains_on_the_eval_geometry_and_set_keys_win_over_the_preset() -> None:
    ramp = np.linspace(0, 255, 60, dtype=np.float32)[None, :, None] * np.ones((40, 1, 3), np.float32)
    image = ramp.astype(np.uint8)  # smooth, so two interpolations of the same square agree closely
    none = ClassificationAugment(preset="none")
    train = build_classification_transforms(True, 24, *IMAGENET, none)(image=image)["image"]
    torch.testing.assert_close(train, build_classification_transforms(False, 24, *IMAGENET, none)(image=image)["image"],
                               atol=0.03, rtol=0)  # same centre square, resized by another interpolation
    aug = ClassificationAugment(preset="light", hflip_p=0.7).resolved()
    assert aug.hflip_p == 0.7 and aug.affine_p == CLASSIFICATION_PRESETS["light"]["affine_p"]
    assert ClassificationAugment().resolved().preset == "standard"  # auto outside an experiment
    with pytest.raises(ValueError, match="preset"):
        ClassificationAugment(preset="heavy")


def test_summary_names_each_enabled_transform_and_the_key_that_turns_it_off() -> None:
    lines = describe_classification_augment(ClassificationAugment(preset="standard"))
    flip = [line for line in lines if line.startswith("HorizontalFlip")]
    assert flip == ["HorizontalFlip p=0.5 (off: data.augment.hflip_p=0; a mirror changes the label of text, digits "
                    "and left/right classes)"]
    assert any("CoarseDropout" in line and "data.augment.dropout_p=0" in line for line in lines)
    assert describe_classification_augment(ClassificationAugment(preset="none")) == []
    light = describe_classification_augment(ClassificationAugment(preset="light"))
    assert not any("Flip" in line for line in light)


def test_presets_table_in_configs_readme_is_current() -> None:
    readme = (Path(__file__).resolve().parents[2] / "configs" / "README.md").read_text()
    begin, end = "<!-- augment-presets:begin -->\n", "<!-- augment-presets:end -->"
    assert readme[readme.index(begin) + len(begin):readme.index(end)] == presets_markdown()


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_labels_sum_to_one_and_mix_the_images(mixup: float, cutmix: float) -> None:
    torch.manual_seed(0)
    images = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 3, 8, 8).clone()
    labels = torch.tensor([0, 1, 2, 3])
    mixed, soft = BatchMix(4, mixup, cutmix, p=1.0)(images, labels)
    assert soft.shape == (4, 4) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(4))
    assert (soft > 0).sum(dim=1).max() == 2  # each image is a blend of itself and one other
    # the label weights are the shares of the pixels (cutmix) or the blend (mixup) of each source
    for i in range(4):
        share = {int(j): float(w) for j, w in enumerate(soft[i]) if w > 0}
        expected = sum(j * w for j, w in share.items())  # image j is the constant j
        assert float(mixed[i].mean()) == pytest.approx(expected, abs=1e-4)


def test_batch_mix_off_gives_one_hot_labels() -> None:
    images, labels = torch.rand(3, 3, 8, 8), torch.tensor([2, 0, 1])
    out, soft = BatchMix(3, 0.4, 0.0, p=0.0)(images, labels)
    assert torch.equal(out, images) and torch.equal(soft, torch.eye(3)[labels])
    assert build_batch_mix(ClassificationAugment(preset="standard"), 3) is None
