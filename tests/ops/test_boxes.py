"""Tests for detkit.ops.boxes: oracle checks against torchvision.ops, properties, dtypes, gradients and errors.

Random cases are seeded; the awkward generator mixes duplicates, zero-area, degenerate, huge and tiny boxes.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tvops
from hypothesis import given, settings
from hypothesis import strategies as st

import detkit.ops.boxes as boxes_module
from detkit.ops import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    complete_box_iou,
    distance_box_iou,
    elementwise_box_iou,
    elementwise_complete_box_iou,
    elementwise_distance_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    remove_small_boxes,
)

PAIRWISE = {
    "box_iou": (box_iou, tvops.box_iou),
    "generalized_box_iou": (generalized_box_iou, tvops.generalized_box_iou),
    "distance_box_iou": (distance_box_iou, tvops.distance_box_iou),
    "complete_box_iou": (complete_box_iou, tvops.complete_box_iou),
}
ELEMENTWISE = {
    "box_iou": elementwise_box_iou,
    "generalized_box_iou": elementwise_generalized_box_iou,
    "distance_box_iou": elementwise_distance_box_iou,
    "complete_box_iou": elementwise_complete_box_iou,
}
FORMATS = ("xyxy", "xywh", "cxcywh")


def _exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------------------------------
# pairwise IoU family against torchvision
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PAIRWISE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_iou_matches_torchvision_on_random_and_awkward_boxes(name, dtype, make_awkward_boxes, device):
    ours, theirs = PAIRWISE[name]
    g = torch.Generator().manual_seed(7)
    for _ in range(40):
        n, m = torch.randint(0, 40, (2,), generator=g).tolist()
        a = make_awkward_boxes(n, g, dtype).to(device)
        b = make_awkward_boxes(m, g, dtype).to(device)
        # same arithmetic in the same order: identical values, NaN and inf included
        _exact(ours(a, b), theirs(a, b))


@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou"])
def test_blocked_pairwise_path_is_exact_for_any_block_size(name, make_boxes, monkeypatch):
    ours, theirs = PAIRWISE[name]
    g = torch.Generator().manual_seed(3)
    a, b = make_boxes(53, g), make_boxes(37, g)
    for budget in (1, 37, 100, 10_000):  # one row per block, ragged last blocks, a single block
        monkeypatch.setattr(boxes_module, "_BLOCK_ELEMS_CPU", budget)
        _exact(ours(a, b), theirs(a, b))


def test_box_iou_single_box_duplicates_and_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [5.0, 5.0, 6.0, 6.0]])
    expected = torch.tensor([[1.0, 1.0 / 7.0, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)
    # GIoU of disjoint boxes is negative: IoU 0 minus the empty share of the enclosing box
    torch.testing.assert_close(generalized_box_iou(a, b[3:]), torch.tensor([[0.0 - (36.0 - 5.0) / 36.0]]))


@pytest.mark.parametrize("name", list(PAIRWISE))
@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)])
def test_pairwise_iou_of_empty_inputs_is_empty_with_the_right_shape(name, shape):
    ours, _ = PAIRWISE[name]
    out = ours(torch.zeros(shape[0], 4), torch.zeros(shape[1], 4))
    assert out.shape == shape and out.dtype == torch.float32


@pytest.mark.parametrize("name", list(PAIRWISE))
def test_integer_boxes_give_float32_like_torchvision(name, make_boxes):
    ours, theirs = PAIRWISE[name]
    g = torch.Generator().manual_seed(5)
    a = make_boxes(20, g, quantum=1.0).long()
    b = make_boxes(30, g, quantum=1.0).long()
    out = ours(a, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, theirs(a, b))


@pytest.mark.parametrize("name", list(PAIRWISE))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_boxes_are_computed_in_float32(name, dtype, make_boxes):
    ours, theirs = PAIRWISE[name]
    g = torch.Generator().manual_seed(11)
    a, b = make_boxes(25, g).to(dtype), make_boxes(15, g).to(dtype)
    out = ours(a, b)
    assert out.dtype == torch.float32  # torchvision's dtype too
    _exact(out, ours(a.float(), b.float()))  # upcast first: exactly the float32 result
    torch.testing.assert_close(out, theirs(a, b), rtol=0, atol=2e-2)  # torchvision subtracts in half


def test_pairwise_iou_accepts_non_contiguous_inputs(make_boxes):
    g = torch.Generator().manual_seed(2)
    a = make_boxes(40, g)
    b = make_boxes(30, g).t().contiguous().t()  # column-major storage
    _exact(box_iou(a[::2], b), tvops.box_iou(a[::2].contiguous(), b.contiguous()))


def test_box_iou_with_grad_matches_the_in_place_path(make_boxes):
    g = torch.Generator().manual_seed(4)
    a, b = make_boxes(12, g, dtype=torch.float64), make_boxes(9, g, dtype=torch.float64)
    for fn in (box_iou, generalized_box_iou):
        with_grad = fn(a.clone().requires_grad_(), b)
        assert with_grad.requires_grad
        _exact(with_grad.detach(), fn(a, b))


@pytest.mark.parametrize("fn", [box_iou, generalized_box_iou, distance_box_iou])
def test_pairwise_iou_gradcheck_float64(fn, make_boxes):
    g = torch.Generator().manual_seed(6)
    a = make_boxes(4, g, dtype=torch.float64).requires_grad_()
    b = make_boxes(3, g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(fn, (a, b))


def test_complete_iou_gradients_match_torchvision(make_boxes):
    # CIoU's trade-off weight alpha carries no gradient (as in the paper), so gradcheck's numerical
    # derivative differs by design; compare with torchvision's gradients instead
    g = torch.Generator().manual_seed(8)
    a = make_boxes(5, g, dtype=torch.float64).requires_grad_()
    b = make_boxes(4, g, dtype=torch.float64).requires_grad_()
    weights = torch.rand(5, 4, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((complete_box_iou(a, b) * weights).sum(), (a, b))
    theirs = torch.autograd.grad((tvops.complete_box_iou(a, b) * weights).sum(), (a, b))
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y)
    pred, target = a[:4].detach().requires_grad_(), b.detach().requires_grad_()
    ours = torch.autograd.grad(-elementwise_complete_box_iou(pred, target).sum(), (pred, target))
    theirs = torch.autograd.grad(tvops.complete_box_iou_loss(pred, target, reduction="sum"), (pred, target))
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# element-wise variants
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_iou_is_the_diagonal_of_the_pairwise_op(name, make_awkward_boxes, device):
    g = torch.Generator().manual_seed(9)
    for _ in range(20):
        n = int(torch.randint(0, 30, (1,), generator=g))
        a = make_awkward_boxes(n, g).to(device)
        b = make_awkward_boxes(n, g).to(device)
        _exact(ELEMENTWISE[name](a, b), PAIRWISE[name][0](a, b).diagonal())


def test_elementwise_ious_with_eps_equal_torchvision_losses(make_boxes):
    g = torch.Generator().manual_seed(10)
    a, b = make_boxes(200, g), make_boxes(200, g)
    torch.testing.assert_close(1 - elementwise_generalized_box_iou(a, b, eps=1e-7),
                               tvops.generalized_box_iou_loss(a, b))
    torch.testing.assert_close(1 - elementwise_distance_box_iou(a, b), tvops.distance_box_iou_loss(a, b))
    torch.testing.assert_close(1 - elementwise_complete_box_iou(a, b), tvops.complete_box_iou_loss(a, b))


def test_elementwise_iou_keeps_leading_dimensions(make_boxes):
    g = torch.Generator().manual_seed(12)
    a, b = make_boxes(24, g).view(2, 3, 4, 4), make_boxes(24, g).view(2, 3, 4, 4)
    out = elementwise_box_iou(a, b)
    assert out.shape == (2, 3, 4)
    _exact(out.reshape(-1), elementwise_box_iou(a.reshape(-1, 4), b.reshape(-1, 4)))


@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou", "distance_box_iou"])
def test_elementwise_iou_gradcheck_float64(name, make_boxes):
    g = torch.Generator().manual_seed(13)
    a = make_boxes(6, g, dtype=torch.float64).requires_grad_()
    b = (a.detach() + torch.rand(6, 4, generator=g, dtype=torch.float64) * 5).requires_grad_()
    assert torch.autograd.gradcheck(ELEMENTWISE[name], (a, b))


def test_elementwise_iou_of_empty_and_half_inputs():
    assert elementwise_box_iou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)
    half = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float16)
    out = elementwise_generalized_box_iou(half, half)
    assert out.dtype == torch.float32 and out.item() == 1.0


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------
_coord = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
_side = st.floats(min_value=1e-2, max_value=1e3, allow_nan=False)
_box = st.tuples(_coord, _coord, _side, _side).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=60, deadline=None)
@given(st.lists(_box, min_size=1, max_size=8), st.lists(_box, min_size=1, max_size=8))
def test_iou_is_symmetric_bounded_and_one_on_itself(list1, list2):
    a, b = torch.tensor(list1, dtype=torch.float64), torch.tensor(list2, dtype=torch.float64)
    iou = box_iou(a, b)
    torch.testing.assert_close(iou, box_iou(b, a).t())
    assert bool(((iou >= 0) & (iou <= 1)).all())
    torch.testing.assert_close(box_iou(a, a).diagonal(), torch.ones(len(a), dtype=torch.float64))
    giou = generalized_box_iou(a, b)
    assert bool(((giou >= -1) & (giou <= iou + 1e-12)).all())


@settings(max_examples=60, deadline=None)
@given(st.lists(_box, min_size=0, max_size=8), st.sampled_from(FORMATS))
def test_box_convert_round_trips(list1, fmt):
    boxes = torch.tensor(list1, dtype=torch.float64).reshape(-1, 4)
    back = box_convert(box_convert(boxes, "xyxy", fmt), fmt, "xyxy")
    torch.testing.assert_close(back, boxes)


# ------------------------------------------------------------------------------------------------
# conversion, area, clipping, small boxes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_fmt", FORMATS)
@pytest.mark.parametrize("out_fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32])
def test_box_convert_matches_torchvision_values_and_dtypes(in_fmt, out_fmt, dtype, make_boxes):
    g = torch.Generator().manual_seed(14)
    boxes = make_boxes(30, g, quantum=1.0).to(dtype).view(3, 10, 4)
    out = box_convert(boxes, in_fmt, out_fmt)
    _exact(out, tvops.box_convert(boxes, in_fmt, out_fmt))
    assert out.data_ptr() != boxes.data_ptr()  # always a copy
    assert box_convert(boxes[:0], in_fmt, out_fmt).shape == (0, 10, 4)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8])
def test_box_area_matches_torchvision_values_and_dtypes(fmt, dtype, make_boxes):
    g = torch.Generator().manual_seed(15)
    boxes = make_boxes(20, g, extent=50, quantum=1.0).to(dtype)
    _exact(box_area(boxes, fmt), tvops.box_area(boxes, fmt))
    assert box_area(torch.zeros(0, 4)).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_clip_boxes_to_image_matches_torchvision(dtype, make_awkward_boxes):
    g = torch.Generator().manual_seed(16)
    for _ in range(10):
        boxes = (make_awkward_boxes(12, g, torch.float64) - 20).to(dtype)
        size = tuple(torch.randint(1, 120, (2,), generator=g).tolist())
        _exact(clip_boxes_to_image(boxes, size), tvops.clip_boxes_to_image(boxes, size))
    batched = (make_awkward_boxes(12, g, torch.float64) - 20).to(dtype).view(3, 4, 4)
    _exact(clip_boxes_to_image(batched, (30, 40)), tvops.clip_boxes_to_image(batched, (30, 40)))


def test_remove_small_boxes_matches_torchvision(make_awkward_boxes):
    g = torch.Generator().manual_seed(17)
    for _ in range(20):
        boxes = make_awkward_boxes(int(torch.randint(0, 30, (1,), generator=g)), g)
        min_size = float(torch.rand(1, generator=g)) * 40
        keep = remove_small_boxes(boxes, min_size)
        assert keep.dtype == torch.int64
        _exact(keep, tvops.remove_small_boxes(boxes, min_size))


def test_remove_small_boxes_drops_nan_boxes():
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, float("nan"), 5.0, 5.0]])
    assert remove_small_boxes(boxes, 1.0).tolist() == [0]


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PAIRWISE))
def test_pairwise_iou_rejects_wrong_shapes_naming_the_argument(name):
    fn = PAIRWISE[name][0]
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[N, 4\] or \[\.\.\., N, 4\], got \[3, 5\]"):
        fn(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"boxes2 must have shape .*got \[4\]"):
        fn(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"leading dims of boxes1 \[2, 3, 4\] and boxes2 \[5, 2, 4\] do not broadcast"):
        fn(torch.zeros(2, 3, 4), torch.zeros(5, 2, 4))
    with pytest.raises(TypeError, match="boxes1 must be a torch.Tensor"):
        fn([[0, 0, 1, 1]], torch.zeros(2, 4))


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_iou_rejects_mismatched_shapes(name):
    with pytest.raises(ValueError, match=r"same shape.*\[3, 4\] and \[2, 4\]"):
        ELEMENTWISE[name](torch.zeros(3, 4), torch.zeros(2, 4))


def test_mismatched_devices_are_a_clear_error():
    # the meta device stands in for a second device on machines without a GPU
    with pytest.raises(ValueError, match="same device.*boxes1 on cpu.*boxes2 on meta"):
        box_iou(torch.zeros(2, 4), torch.zeros(2, 4, device="meta"))
    with pytest.raises(ValueError, match="same device"):
        elementwise_box_iou(torch.zeros(2, 4), torch.zeros(2, 4, device="meta"))


def test_conversion_and_clipping_reject_bad_arguments():
    with pytest.raises(ValueError, match="in_fmt 'xyz'"):
        box_convert(torch.zeros(2, 4), "xyz", "xyxy")
    with pytest.raises(ValueError, match=r"boxes must have shape \[\.\.\., 4\], got \[2, 3\]"):
        box_convert(torch.zeros(2, 3), "xyxy", "xywh")
    with pytest.raises(ValueError, match="fmt 'xy'"):
        box_area(torch.zeros(2, 4), "xy")
    with pytest.raises(ValueError, match=r"size must be \(height, width\)"):
        clip_boxes_to_image(torch.zeros(2, 4), (3, 4, 5))
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\], got \[2, 2, 4\]"):
        remove_small_boxes(torch.zeros(2, 2, 4), 1.0)
