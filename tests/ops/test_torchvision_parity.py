"""torchvision 0.29 parity of detkit.ops: the box, IoU and NMS cases of torchvision's own ``test/test_ops.py``.

The cases are written anew from reading torchvision's tests (its inputs and published expected values), and every
one is also compared with the installed torchvision. Where detkit deliberately differs it is asserted as such.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_coordinate_trick, _batched_nms_vanilla

from detkit import ops

INT_BOXES = [[0, 0, 100, 100], [0, 0, 50, 50], [200, 200, 300, 300], [0, 0, 25, 25]]
INT_BOXES2 = [[0, 0, 100, 100], [0, 0, 50, 50], [200, 200, 300, 300]]
FLOAT_BOXES = [
    [285.3538, 185.5758, 1193.5110, 851.4551],
    [285.1472, 188.7374, 1192.4984, 851.0669],
    [279.2440, 197.9812, 1189.4746, 849.2019],
]
IOU_FAMILY = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]
# torchvision's published expected values for INT_BOXES x INT_BOXES2 and FLOAT_BOXES x FLOAT_BOXES
FLOAT_EXPECTED = [[1.0, 0.9933, 0.9673], [0.9933, 1.0, 0.9737], [0.9673, 0.9737, 1.0]]
INT_EXPECTED = {
    "box_iou": [[1.0, 0.25, 0.0], [0.25, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0625, 0.25, 0.0]],
    "generalized_box_iou": [[1.0, 0.25, -0.7778], [0.25, 1.0, -0.8611], [-0.7778, -0.8611, 1.0],
                            [0.0625, 0.25, -0.8819]],
    "distance_box_iou": [[1.0, 0.1875, -0.4444], [0.1875, 1.0, -0.5625], [-0.4444, -0.5625, 1.0],
                         [-0.0781, 0.1875, -0.6267]],
    "complete_box_iou": [[1.0, 0.1875, -0.4444], [0.1875, 1.0, -0.5625], [-0.4444, -0.5625, 1.0],
                         [-0.0781, 0.1875, -0.6267]],
}


def _gen_boxes(size: int, g: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torchvision's ``gen_box``: corners in [0, 1), sides in [0, 1)."""
    xy1 = torch.rand((size, 2), generator=g, dtype=dtype)
    return torch.cat([xy1, xy1 + torch.rand((size, 2), generator=g, dtype=dtype)], dim=-1)


# --------------------------------------------------------------------------------------------
# signatures
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    IOU_FAMILY + ["box_area", "box_convert", "clip_boxes_to_image", "remove_small_boxes", "nms", "batched_nms"],
)
def test_signatures_match_torchvision(name):
    ours, theirs = inspect.signature(getattr(ops, name)), inspect.signature(getattr(torchvision.ops, name))
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in theirs.parameters.values()
    ]


# --------------------------------------------------------------------------------------------
# box_convert and box_area (torchvision's TestBoxConvert, TestBoxArea)
# --------------------------------------------------------------------------------------------
BOX_XYXY = torch.tensor([[0, 0, 100, 100], [0, 0, 0, 0], [10, 15, 30, 35], [23, 35, 93, 95]], dtype=torch.float)
BOX_XYWH = torch.tensor([[0, 0, 100, 100], [0, 0, 0, 0], [10, 15, 20, 20], [23, 35, 70, 60]], dtype=torch.float)
BOX_CXCYWH = torch.tensor([[50, 50, 100, 100], [0, 0, 0, 0], [20, 25, 20, 20], [58, 65, 70, 60]], dtype=torch.float)
BY_FORMAT = {"xyxy": BOX_XYXY, "xywh": BOX_XYWH, "cxcywh": BOX_CXCYWH}


@pytest.mark.parametrize("fmt", list(BY_FORMAT))
def test_box_convert_to_the_same_format_is_a_copy(fmt):
    out = ops.box_convert(BOX_XYXY, in_fmt=fmt, out_fmt=fmt)
    assert torch.equal(out, BOX_XYXY) and out.data_ptr() != BOX_XYXY.data_ptr()


@pytest.mark.parametrize("in_fmt", list(BY_FORMAT))
@pytest.mark.parametrize("out_fmt", list(BY_FORMAT))
def test_box_convert_between_formats_and_back(in_fmt, out_fmt):
    out = ops.box_convert(BY_FORMAT[in_fmt], in_fmt=in_fmt, out_fmt=out_fmt)
    assert torch.equal(out, BY_FORMAT[out_fmt])
    assert torch.equal(out, torchvision.ops.box_convert(BY_FORMAT[in_fmt], in_fmt=in_fmt, out_fmt=out_fmt))
    assert torch.equal(ops.box_convert(out, in_fmt=out_fmt, out_fmt=in_fmt), BY_FORMAT[in_fmt])


@pytest.mark.parametrize("in_fmt", ["xwyh", "cxwyh"])
@pytest.mark.parametrize("out_fmt", ["xwcx", "xhwcy"])
def test_box_convert_rejects_unknown_formats(in_fmt, out_fmt):
    with pytest.raises(ValueError, match="Unsupported box conversion"):
        ops.box_convert(BOX_XYWH, in_fmt, out_fmt)


@pytest.mark.parametrize("fmt", ["xywhr", "cxcywhr", "xyxyxyxy"])
def test_rotated_formats_are_rejected_where_torchvision_accepts_them(fmt):
    # a deliberate difference: detkit has no rotated boxes
    with pytest.raises(ValueError, match=f"rotated.*{fmt}.*not supported"):
        ops.box_convert(torch.zeros(2, 5), fmt, "xyxy")
    with pytest.raises(ValueError, match=f"rotated box format fmt '{fmt}' is not supported"):
        ops.box_iou(torch.zeros(2, 4), torch.zeros(3, 4), fmt=fmt)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64])
def test_box_area_of_integer_boxes(dtype):
    boxes = torch.tensor([[0, 0, 100, 100], [0, 0, 0, 0]], dtype=dtype)
    out = ops.box_area(boxes)
    assert out.tolist() == [10000, 0]  # no int8 overflow: small integers are widened to int32
    assert torch.equal(out, torchvision.ops.box_area(boxes))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_area_of_float_boxes(dtype):
    boxes = torch.tensor(FLOAT_BOXES, dtype=dtype)
    expected = torch.tensor([604723.0806, 600965.4666, 592761.0085], dtype=dtype)
    torch.testing.assert_close(ops.box_area(boxes), expected, rtol=0.0, atol=1e-4)
    assert torch.equal(ops.box_area(boxes), torchvision.ops.box_area(boxes))


def test_box_area_of_float16_boxes():
    boxes = torch.tensor([[2.825, 1.8625, 3.90, 4.85], [2.825, 4.875, 19.20, 5.10], [2.925, 1.80, 8.90, 4.90]],
                         dtype=torch.float16)
    expected = torch.tensor([3.2170, 3.7108, 18.5071])
    torch.testing.assert_close(ops.box_area(boxes), expected, rtol=0.0, atol=0.01, check_dtype=False)
    torch.testing.assert_close(ops.box_area(boxes), torchvision.ops.box_area(boxes), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", list(BY_FORMAT))
def test_box_area_in_every_format(fmt):
    assert torch.equal(ops.box_area(BY_FORMAT[fmt], fmt=fmt), torchvision.ops.box_area(BY_FORMAT[fmt], fmt=fmt))


# --------------------------------------------------------------------------------------------
# the IoU family (torchvision's TestBoxIou, TestGeneralizedBoxIou, TestDistanceBoxIoU, TestCompleteBoxIou)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IOU_FAMILY)
@pytest.mark.parametrize(
    "boxes1, boxes2, dtypes, atol, which",
    [
        (INT_BOXES, INT_BOXES2, [torch.int16, torch.int32, torch.int64], 1e-4, "int"),
        (FLOAT_BOXES, FLOAT_BOXES, [torch.float16], 0.002, "float"),
        (FLOAT_BOXES, FLOAT_BOXES, [torch.float32, torch.float64], 1e-3, "float"),
    ],
)
def test_iou_family_published_values(name, boxes1, boxes2, dtypes, atol, which):
    expected = torch.tensor(INT_EXPECTED[name] if which == "int" else FLOAT_EXPECTED)
    for dtype in dtypes:
        b1, b2 = torch.tensor(boxes1, dtype=dtype), torch.tensor(boxes2, dtype=dtype)
        out = getattr(ops, name)(b1, b2)
        torch.testing.assert_close(out, expected, rtol=0.0, atol=atol, check_dtype=False)
        reference = getattr(torchvision.ops, name)(b1, b2)
        torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6 if dtype != torch.float16 else 2e-3,
                                   check_dtype=False)


@pytest.mark.parametrize("name", IOU_FAMILY)
def test_iou_family_pairwise_equals_one_pair_at_a_time(name):
    g = torch.Generator().manual_seed(0)
    boxes1, boxes2 = _gen_boxes(5, g), _gen_boxes(7, g)
    fn = getattr(ops, name)
    by_pair = torch.tensor([[float(fn(boxes1[i : i + 1], boxes2[j : j + 1])) for j in range(7)] for i in range(5)])
    torch.testing.assert_close(fn(boxes1, boxes2), by_pair)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_iou_fmt_equals_torchvision_bit_for_bit(fmt, device):
    g = torch.Generator().manual_seed(1)
    boxes1 = ops.box_convert(_gen_boxes(40, g) * 100, "xyxy", fmt)
    boxes2 = ops.box_convert(_gen_boxes(30, g) * 100, "xyxy", fmt)
    expected = torchvision.ops.box_iou(boxes1, boxes2, fmt=fmt)
    assert torch.equal(ops.box_iou(boxes1.to(device), boxes2.to(device), fmt=fmt).cpu(), expected)
    leaf = boxes1.clone().requires_grad_()  # the differentiable path: same values
    torch.testing.assert_close(ops.box_iou(leaf, boxes2, fmt=fmt), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", IOU_FAMILY)
@pytest.mark.parametrize("shapes", [((2, 6), (2, 5)), ((3, 2, 6), (2, 5)), ((1, 6), (4, 5)), ((2, 1, 6), (1, 3, 5))])
def test_iou_family_with_leading_batch_dims_equals_torchvision(name, shapes, device):
    g = torch.Generator().manual_seed(2)
    (*lead1, n), (*lead2, m) = shapes
    boxes1 = (_gen_boxes(int(torch.tensor(lead1).prod()) * n, g) * 50).view(*lead1, n, 4)
    boxes2 = (_gen_boxes(int(torch.tensor(lead2).prod()) * m, g) * 50).view(*lead2, m, 4)
    expected = getattr(torchvision.ops, name)(boxes1, boxes2)
    out = getattr(ops, name)(boxes1.to(device), boxes2.to(device)).cpu()
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    if name in ("box_iou", "generalized_box_iou"):  # the in-place block path is exact
        assert torch.equal(out, expected)


def test_box_iou_fmt_with_leading_batch_dims():
    g = torch.Generator().manual_seed(3)
    boxes1 = ops.box_convert(_gen_boxes(24, g) * 10, "xyxy", "cxcywh").view(2, 3, 4, 4)
    boxes2 = ops.box_convert(_gen_boxes(15, g) * 10, "xyxy", "cxcywh").view(3, 5, 4)
    assert torch.equal(ops.box_iou(boxes1, boxes2, fmt="cxcywh"), torchvision.ops.box_iou(boxes1, boxes2, fmt="cxcywh"))


# --------------------------------------------------------------------------------------------
# nms (torchvision's TestNMS)
# --------------------------------------------------------------------------------------------
def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's test reference: take the best remaining box, drop those above the threshold with it."""
    picked = []
    indexes = scores.sort(descending=True, stable=True)[1]
    while len(indexes) > 0:
        current = indexes[0]
        picked.append(int(current))
        if len(indexes) == 1:
            break
        indexes = indexes[1:]
        iou = torchvision.ops.box_iou(boxes[indexes], boxes[current][None]).squeeze(1)
        indexes = indexes[iou <= iou_threshold]
    return torch.as_tensor(picked, dtype=torch.int64)


def _create_tensors_with_iou(n: int, iou_thresh: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's case: the last box has (barely above) ``iou_thresh`` IoU with the first."""
    boxes = torch.rand(n, 4, generator=g) * 100
    boxes[:, 2:] += boxes[:, :2]
    boxes[-1, :] = boxes[0, :]
    x0, _, x1, _ = boxes[-1].tolist()
    iou_thresh += 1e-5
    boxes[-1, 2] += (x1 - x0) * (1 - iou_thresh) / iou_thresh
    return boxes, torch.rand(n, generator=g)


@pytest.mark.parametrize("iou", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("seed", range(3))  # torchvision runs 10 seeds; its Python reference loop is slow
def test_nms_against_torchvisions_reference(iou, seed, device):
    boxes, scores = _create_tensors_with_iou(1000, iou, torch.Generator().manual_seed(seed))
    keep = ops.nms(boxes.to(device), scores.to(device), iou).cpu()
    assert torch.equal(keep, _reference_nms(boxes, scores, iou))
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, iou))


def test_nms_input_errors_are_value_errors():
    # torchvision's kernel raises RuntimeError for these; detkit raises ValueError naming the argument
    for boxes, scores in [(torch.rand(4), torch.rand(3)), (torch.rand(3, 5), torch.rand(3)),
                          (torch.rand(3, 4), torch.rand(3, 2)), (torch.rand(3, 4), torch.rand(4))]:
        with pytest.raises(RuntimeError):
            torchvision.ops.nms(boxes, scores, 0.5)
        with pytest.raises(ValueError, match="boxes|scores"):
            ops.nms(boxes, scores, 0.5)


def test_nms_float16_keeps_what_float32_keeps(device):
    boxes = torch.tensor(FLOAT_BOXES, device=device)
    scores = torch.tensor([0.6370, 0.7569, 0.3966], device=device)
    keep32 = ops.nms(boxes, scores, 0.2)
    assert torch.equal(keep32.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), 0.2))
    assert torch.equal(ops.nms(boxes.half(), scores.half(), 0.2), keep32)


@pytest.mark.parametrize("seed", range(10))
def test_batched_nms_equals_both_torchvision_implementations(seed, device):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat((torch.rand(1000, 2, generator=g), torch.rand(1000, 2, generator=g) + 10), dim=1)
    scores = torch.rand(1000, generator=g)
    idxs = torch.randint(0, 4, size=(1000,), generator=g)
    vanilla = _batched_nms_vanilla(boxes, scores, idxs, 0.9)
    assert torch.equal(vanilla, _batched_nms_coordinate_trick(boxes, scores, idxs, 0.9))
    # distinct scores: the same order as well as the same set
    assert torch.equal(ops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.9).cpu(), vanilla)


def test_batched_nms_of_no_boxes_is_empty():
    empty = torch.empty((0,), dtype=torch.int64)
    assert torch.equal(ops.batched_nms(empty, None, None, None), empty)
    assert torch.equal(torchvision.ops.batched_nms(empty, None, None, None), empty)
