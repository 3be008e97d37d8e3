"""Tests for detkit.data.det_transforms: exact letterbox/resize geometry and the box-aware training pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detkit.data.det_transforms import (
    DetectionAugment,
    EvalDetectionTransform,
    LetterboxParams,
    build_detection_transforms,
    letterbox_boxes,
    letterbox_image,
    letterbox_params,
    resize_image,
    resize_params,
    unletterbox_boxes,
    unresize_boxes,
)

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
