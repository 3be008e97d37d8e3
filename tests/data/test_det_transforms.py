"""Tests for detkit.data.det_transforms: exact letterbox/resize geometry, the box-aware training pipeline, presets
and mosaic."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detkit.config.augment import AUGMENT_PRESETS, DETECTION_PRESETS
from detkit.data.det_transforms import (
    DetectionAugment,
    EvalDetectionTransform,
    LetterboxParams,
    MosaicTransform,
    build_detection_transforms,
    describe_detection_augment,
    letterbox_boxes,
    letterbox_image,
    letterbox_params,
    mosaic,
    resize_image,
    resize_params,
    unletterbox_boxes,
    unresize_boxes,
)
from detkit.data.images import read_image, write_image

SIZES = [(100, 200), (200, 100), (37, 53), (480, 640), (64, 64), (1, 300), (13, 7)]


def _random_boxes(rng: np.random.Generator, h: int, w: int, n: int = 20) -> np.ndarray:
    xy = rng.uniform(0, [w, h, w, h], size=(n, 4))
    x1, x2 = np.minimum(xy[:, 0], xy[:, 2]), np.maximum(xy[:, 0], xy[:, 2])
    y1, y2 = np.minimum(xy[:, 1], xy[:, 3]), np.maximum(xy[:, 1], xy[:, 3])
    return np.stack([x1, y1, x2, y2], axis=1)


def test_letterbox_params_of_a_wide_image_fit_the_long_side_and_centre_the_short_one():
    p = letterbox_params((100, 200), 64)
    # s = 64 / 200 = 0.32: 200 x 100 -> 64 x 32, padded by (64 - 32) / 2 = 16 rows above.
    assert p == LetterboxParams(0.32, 0.32, 0.0, 16.0)
    p = letterbox_params((37, 53), 64)
    new_h = round(37 * 64 / 53)  # 45
    assert p.scale_x == 64 / 53 and p.scale_y == new_h / 37
    assert (p.pad_x, p.pad_y) == (0.0, float((64 - new_h) // 2))


def test_resize_params_scale_each_axis_without_padding():
    assert resize_params((100, 200), 50) == LetterboxParams(0.25, 0.5, 0.0, 0.0)


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("size", [32, 320])
def test_letterbox_round_trip_maps_boxes_back_exactly(hw, size):
    rng = np.random.default_rng(hash(hw) % 1000)
    boxes = _random_boxes(rng, *hw)
    params = letterbox_params(hw, size)
    out = letterbox_boxes(torch.as_tensor(boxes), params)
    back = unletterbox_boxes(out, params)
    assert back.dtype == torch.float64
    torch.testing.assert_close(back, torch.as_tensor(boxes), rtol=0, atol=1e-9)
    f32 = torch.as_tensor(boxes, dtype=torch.float32)
    back32 = unletterbox_boxes(letterbox_boxes(f32, params), params)
    assert back32.dtype == torch.float32
    torch.testing.assert_close(back32, f32, rtol=1e-6, atol=1e-4)
    # the same through numpy, and for the plain resize
    np.testing.assert_allclose(unletterbox_boxes(letterbox_boxes(boxes, params), params), boxes, atol=1e-9)
    rp = resize_params(hw, size)
    np.testing.assert_allclose(unresize_boxes(letterbox_boxes(boxes, rp), rp), boxes, atol=1e-9)


@pytest.mark.parametrize("hw", [(100, 200), (200, 100), (37, 53), (31, 64)])
def test_letterbox_boxes_agree_with_the_pixels_of_the_letterboxed_image(hw):
    h, w = hw
    size = 64
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = w // 4, h // 3, w // 4 + w // 2, h // 3 + h // 2
    image[y1:y2, x1:x2] = 255
    out, params = letterbox_image(image, size, fill=0)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    ys, xs = np.nonzero(out[:, :, 0] >= 128)  # pixels at least half covered by the white box
    measured = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    predicted = letterbox_boxes(np.array([[x1, y1, x2, y2]], np.float64), params)[0]
    np.testing.assert_allclose(measured, predicted, atol=1.0)
    # The whole image lands exactly on the non-padding region.
    full, params_full = letterbox_image(np.full((h, w, 3), 255, np.uint8), size, fill=0)
    ys, xs = np.nonzero(full[:, :, 0])
    content = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    np.testing.assert_array_equal(content, letterbox_boxes(np.array([[0.0, 0.0, w, h]]), params_full)[0])


def test_resize_image_geometry_matches_resize_params():
    image = np.zeros((50, 80, 3), np.uint8)
    image[10:30, 20:60] = 255
    out, params = resize_image(image, 40)
    assert out.shape == (40, 40, 3)
    ys, xs = np.nonzero(out[:, :, 0] >= 128)
    measured = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    np.testing.assert_allclose(measured, letterbox_boxes(np.array([[20.0, 10.0, 60.0, 30.0]]), params)[0], atol=1.0)


def test_unletterbox_clips_to_the_original_image_when_asked():
    params = letterbox_params((100, 200), 64)  # 16 px of padding above and below
    pred = torch.tensor([[-5.0, 0.0, 70.0, 64.0]])  # reaches into the padding and past the right edge
    clipped = unletterbox_boxes(pred, params, clip_hw=(100, 200))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 200.0, 100.0]]))
    unclipped = unletterbox_boxes(pred, params)
    assert unclipped[0, 1] < 0 and unclipped[0, 3] > 100


def test_params_accept_tensor_and_three_value_forms():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    as_tensor = unletterbox_boxes(boxes, torch.tensor([2.0, 2.0, 10.0, 0.0], dtype=torch.float64))
    as_three = unletterbox_boxes(boxes, (2.0, 10.0, 0.0))
    torch.testing.assert_close(as_tensor, torch.tensor([[-4.5, 1.0, -3.5, 2.0]]))
    torch.testing.assert_close(as_three, as_tensor)


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="size"):
        letterbox_params((10, 10), 0)
    with pytest.raises(ValueError, match="orig_hw"):
        letterbox_params((10,), 32)
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\]"):
        letterbox_boxes(torch.zeros(3), (1.0, 1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="params"):
        letterbox_boxes(torch.zeros(1, 4), (1.0, 2.0))
    with pytest.raises(ValueError, match="mode"):
        EvalDetectionTransform(32, mode="crop")
    with pytest.raises(ValueError, match="hflip_p"):
        DetectionAugment(hflip_p=1.5)


def test_eval_transform_normalises_and_returns_exact_params():
    mean, std = (0.5, 0.25, 0.75), (0.5, 0.5, 0.25)
    t = build_detection_transforms(False, 48, mean=mean, std=std, resize_mode="letterbox")
    image = np.zeros((30, 60, 3), np.uint8)
    image[:] = np.round(np.array(mean) * 255).astype(np.uint8)
    boxes = np.array([[10.0, 5.0, 20.0, 25.0]], np.float32)
    out = t(image=image, bboxes=boxes, labels=np.array([3]))
    assert out["image"].shape == (3, 48, 48) and out["image"].dtype == torch.float32
    content = out["image"][:, 12:36, :]  # 60 x 30 -> 48 x 24, rows 12..35
    assert content.abs().max() < 0.02  # value == mean normalises to 0
    assert out["letterbox"] == letterbox_params((30, 60), 48)
    np.testing.assert_allclose(out["bboxes"], letterbox_boxes(boxes, out["letterbox"]))
    assert out["labels"].tolist() == [3]


def _only(**kw):
    off = dict(crop_p=0.0, scale_p=0.0, hflip_p=0.0, vflip_p=0.0, color_p=0.0, min_area=0.0)
    off.update(kw)
    return DetectionAugment(**off)


def test_train_pipeline_with_everything_off_is_a_letterbox():
    image = np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8)
    boxes = np.array([[4.0, 4.0, 20.0, 30.0], [50.0, 10.0, 79.0, 39.0]], np.float32)
    out = build_detection_transforms(True, 64, aug=_only())(image=image, bboxes=boxes, labels=np.array([0, 1]))
    np.testing.assert_allclose(out["bboxes"], letterbox_boxes(boxes, letterbox_params((40, 80), 64)), atol=1e-3)


def test_train_pipeline_horizontal_flip_mirrors_the_boxes():
    image = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[4.0, 6.0, 20.0, 30.0]], np.float32)
    out = build_detection_transforms(True, 64, aug=_only(hflip_p=1.0))(image=image, bboxes=boxes, labels=np.array([2]))
    np.testing.assert_allclose(out["bboxes"], [[44.0, 6.0, 60.0, 30.0]], atol=1e-3)
    assert out["labels"].tolist() == [2]


def test_box_safe_crop_keeps_every_box_inside_the_output():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 30, 40], [60, 50, 110, 85], [40, 10, 55, 25]], np.float32)
    t = build_detection_transforms(True, 64, aug=_only(crop_p=1.0), seed=3)
    for _ in range(10):
        out = t(image=image, bboxes=boxes, labels=np.array([0, 1, 2]))
        assert out["image"].shape == (3, 64, 64)
        assert sorted(out["labels"].tolist()) == [0, 1, 2]
        b = np.asarray(out["bboxes"])
        assert (b >= 0).all() and (b <= 64).all() and (b[:, 2:] > b[:, :2]).all()


def test_zoom_drops_boxes_pushed_out_of_view_with_their_labels():
    image = np.zeros((100, 100, 3), np.uint8)
    # zoom x2 about the centre: the corner box leaves the view, the central one stays
    boxes = np.array([[0, 0, 10, 10], [45, 45, 55, 55]], np.float32)
    aug = _only(scale_p=1.0, scale_range=(2.0, 2.0), translate=0.0, min_visibility=0.3)
    out = build_detection_transforms(True, 100, aug=aug)(image=image, bboxes=boxes, labels=np.array([7, 8]))
    assert out["labels"].tolist() == [8]
    np.testing.assert_allclose(out["bboxes"], [[40.0, 40.0, 60.0, 60.0]], atol=1.0)


def test_train_pipeline_handles_images_without_boxes_and_is_reproducible_with_a_seed():
    image = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    empty = np.zeros((0, 4), np.float32)
    outs = []
    for _ in range(2):
        t = build_detection_transforms(True, 32, aug=DetectionAugment(crop_p=1.0, scale_p=1.0, color_p=1.0), seed=5)
        outs.append(t(image=image, bboxes=empty, labels=np.zeros(0, np.int64)))
    assert outs[0]["image"].shape == (3, 32, 32) and len(outs[0]["bboxes"]) == 0
    torch.testing.assert_close(outs[0]["image"], outs[1]["image"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_letterbox_round_trip_keeps_cuda_tensors_on_the_device():
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [0.5, 0.25, 59.0, 49.5]], device="cuda")
    params = torch.tensor(letterbox_params((50, 60), 32), dtype=torch.float64)  # as in target["letterbox"]
    out = letterbox_boxes(boxes, params)
    back = unletterbox_boxes(out, params, clip_hw=(50, 60))
    assert out.device.type == "cuda" and back.device.type == "cuda" and back.dtype == torch.float32
    torch.testing.assert_close(back.cpu(), boxes.cpu(), rtol=1e-6, atol=1e-4)


def _steps(t) -> list[str]:
    return [type(step).__name__ for step in t.transforms if getattr(step, "p", 1.0) > 0]


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_detection_presets_build_the_documented_pipelines(preset):
    values = DETECTION_PRESETS[preset]
    t = build_detection_transforms(True, 64, aug=DetectionAugment(preset=preset))
    expected = [name for name, key in (("RandomSizedBBoxSafeCrop", "crop_p"), ("LongestMaxSize", None),
                                       ("PadIfNeeded", None), ("Affine", "scale_p"), ("HorizontalFlip", "hflip_p"),
                                       ("VerticalFlip", "vflip_p"), ("ColorJitter", "color_p"))
                if key is None or values[key] > 0] + ["Normalize", "ToTensorV2"]
    assert _steps(t) == expected
    lines = describe_detection_augment(DetectionAugment(preset=preset))
    assert any(line.startswith("HorizontalFlip") for line in lines) == (values["hflip_p"] > 0)
    assert any(line.startswith("Mosaic") for line in lines) == (preset == "strong")
    assert DetectionAugment(preset=preset, hflip_p=0.25).resolved().hflip_p == 0.25  # a set key wins


def test_mosaic_places_each_quadrant_and_clips_or_drops_its_boxes():
    size = 64  # canvas 128; centre (64, 64) crops [32, 96) x [32, 96)
    images = [np.full((size, size, 3), 50 * (k + 1), np.uint8) for k in range(4)]
    boxes = [np.array([[40, 40, 60, 60], [2, 2, 12, 12]], np.float32) for _ in range(4)]
    labels = [np.array([k, 10 + k]) for k in range(4)]
    image, out_boxes, out_labels = mosaic(images, boxes, labels, size, centre=(64.0, 64.0), fill=0)
    assert image.shape == (size, size, 3)
    assert (image[0, 0, 0], image[0, -1, 0], image[-1, 0, 0], image[-1, -1, 0]) == (50, 100, 150, 200)
    by_label = {int(lab): b.tolist() for b, lab in zip(out_boxes, out_labels)}
    # top-left image's (40, 40, 60, 60) lands at (8, 8, 28, 28); bottom-right's (2, 2, 12, 12) at 64 + 2 - 32 = 34;
    # every other box falls outside the crop
    assert by_label == {0: [8.0, 8.0, 28.0, 28.0], 13: [34.0, 34.0, 44.0, 44.0]}
    # centre (80, 64): the crop starts at x 48, so (40, 40, 60, 60) shows 12 of its 20 columns (60 %)
    one = [np.array([[40, 40, 60, 60]], np.float32)] + [np.zeros((0, 4), np.float32)] * 3
    one_labels = [np.array([7])] + [np.zeros(0, np.int64)] * 3
    _, kept, kept_labels = mosaic(images, one, one_labels, size, centre=(80.0, 64.0), min_visibility=0.5)
    assert kept.tolist() == [[0.0, 8.0, 12.0, 28.0]] and kept_labels.tolist() == [7]
    _, dropped, _ = mosaic(images, one, one_labels, size, centre=(80.0, 64.0), min_visibility=0.7)
    assert len(dropped) == 0


def _mosaic_source(tmp_path, n=4):
    """n images of 60x80 grey with one box filled in the colour of its label: label i is grey level 40 + 50 i."""
    records = []
    for i in range(n):
        image = np.full((60, 80, 3), 10, np.uint8)
        x, y = 8 + 6 * i, 10 + 4 * i
        image[y:y + 24, x:x + 30] = 40 + 50 * i
        path = write_image(tmp_path / f"{i}.png", image)
        records.append(SimpleNamespace(path=path, boxes=np.array([[x, y, x + 30, y + 24]], np.float32),
                                       labels=np.array([i])))
    return records


def test_mosaic_keeps_boxes_inside_the_image_on_the_pixels_of_their_label(tmp_path):
    records = _mosaic_source(tmp_path)
    aug = DetectionAugment(preset="none", mosaic_p=1.0, min_visibility=0.6, min_area=16.0)
    t = build_detection_transforms(True, 64, mean=(0, 0, 0), std=(1, 1, 1), aug=aug, seed=0, mosaic_source=records)
    assert isinstance(t, MosaicTransform)
    primary = records[0]
    seen = set()
    for _ in range(12):
        out = t(image=read_image(primary.path), bboxes=primary.boxes, labels=primary.labels)
        image = out["image"]  # (3, 64, 64) in [0, 1]
        assert image.shape == (3, 64, 64)
        boxes = np.asarray(out["bboxes"]).reshape(-1, 4)
        assert (boxes >= 0).all() and (boxes <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        for (x1, y1, x2, y2), label in zip(boxes, out["labels"]):
            inner = image[0, int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
            assert inner.numel() > 0
            assert float(inner.mean()) * 255 == pytest.approx(40 + 50 * int(label), abs=6)
            seen.add(int(label))
    assert len(seen) >= 3  # partners really come from the source


def test_mosaic_is_off_without_a_source_and_reseeds_reproducibly(tmp_path):
    records = _mosaic_source(tmp_path)
    aug = DetectionAugment(preset="strong")
    assert not isinstance(build_detection_transforms(True, 64, aug=aug), MosaicTransform)
    image = np.zeros((60, 80, 3), np.uint8)
    runs = []
    for _ in range(2):
        t = build_detection_transforms(True, 64, aug=aug, mosaic_source=records)
        t.set_random_seed(11)
        runs.append([t(image=image, bboxes=records[0].boxes, labels=records[0].labels)["image"] for _ in range(3)])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)
