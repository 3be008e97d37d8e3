"""Tests for detkit.ops.coder.BoxCoder: torchvision's BoxCoder as oracle, the textbook formula, round trips.

Also broadcasting over leading batch dimensions, the exp clamp, dtypes and bad input.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder

from detkit.ops import BoxCoder, box_convert


def textbook_offset_boxes(anchors: torch.Tensor, assigned: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The textbook's ``offset_boxes``: centre offsets scaled by 10, log-size ratios by 5."""
    c_anc = box_convert(anchors, "xyxy", "cxcywh")
    c_bb = box_convert(assigned, "xyxy", "cxcywh")
    offset_xy = 10 * (c_bb[:, :2] - c_anc[:, :2]) / c_anc[:, 2:]
    offset_wh = 5 * torch.log(eps + c_bb[:, 2:] / c_anc[:, 2:])
    return torch.cat([offset_xy, offset_wh], dim=1)


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0), (2.0, 3.0, 4.0, 0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_and_decode_equal_torchvision(weights, dtype, make_boxes, device):
    g = torch.Generator().manual_seed(0)
    anchors = make_boxes(300, g, dtype=dtype).to(device)
    boxes = make_boxes(300, g, dtype=dtype).to(device)
    ours, theirs = BoxCoder(weights), TvBoxCoder(weights)
    offsets = ours.encode(anchors, boxes)
    torch.testing.assert_close(offsets, theirs.encode_single(boxes, anchors), rtol=0, atol=0)
    noisy = offsets + torch.randn(offsets.shape, generator=g, dtype=dtype).to(device)
    torch.testing.assert_close(ours.decode(anchors, noisy), theirs.decode_single(noisy, anchors), rtol=0, atol=0)


def test_default_weights_are_the_textbook_normalisation(make_boxes):
    g = torch.Generator().manual_seed(1)
    anchors, boxes = make_boxes(200, g, extent=1.0), make_boxes(200, g, extent=1.0)
    offsets = BoxCoder().encode(anchors, boxes)
    # without the textbook's eps inside the log the two agree to float rounding
    torch.testing.assert_close(offsets, textbook_offset_boxes(anchors, boxes, eps=0.0), rtol=1e-5, atol=1e-5)
    # with it, by at most 5 * 1e-6 * wa / w on the size terms
    torch.testing.assert_close(offsets, textbook_offset_boxes(anchors, boxes), rtol=0, atol=2e-4)


_coord = st.floats(min_value=-500.0, max_value=500.0, allow_nan=False)
_side = st.floats(min_value=0.5, max_value=300.0, allow_nan=False)
_box = st.tuples(_coord, _coord, _side, _side).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_box, _box), min_size=1, max_size=10))
def test_decode_inverts_encode(pairs):
    anchors = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    boxes = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    coder = BoxCoder(bbox_xform_clip=math.log(1e4))  # no clamping within this range of sizes
    torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, boxes)), boxes, rtol=1e-9, atol=1e-7)


def test_round_trip_in_float32(make_boxes):
    g = torch.Generator().manual_seed(2)
    anchors, boxes = make_boxes(500, g), make_boxes(500, g)
    coder = BoxCoder(bbox_xform_clip=10.0)
    torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, boxes)), boxes, rtol=1e-5, atol=1e-3)


def test_leading_batch_dimensions_broadcast_anchors(make_boxes):
    g = torch.Generator().manual_seed(3)
    anchors = make_boxes(50, g)
    boxes = torch.stack([make_boxes(50, g) for _ in range(3)])  # [3, 50, 4]
    coder = BoxCoder()
    batched = coder.encode(anchors, boxes)
    assert batched.shape == (3, 50, 4)
    for b in range(3):
        torch.testing.assert_close(batched[b], coder.encode(anchors, boxes[b]), rtol=0, atol=0)
    decoded = coder.decode(anchors, batched)
    for b in range(3):
        torch.testing.assert_close(decoded[b], coder.decode(anchors, batched[b]), rtol=0, atol=0)


def test_decode_clamps_the_log_sizes_so_exp_never_overflows():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = coder.decode(anchors, torch.tensor([[0.0, 0.0, 1e6, 1e6]]))
    assert bool(torch.isfinite(boxes).all())
    side = 16.0 * math.exp(math.log(1000.0 / 16))  # the clamp caps the size at 1000 px
    torch.testing.assert_close(boxes, torch.tensor([[8 - side / 2, 8 - side / 2, 8 + side / 2, 8 + side / 2]]))
    half = coder.decode(anchors.half(), torch.tensor([[0.0, 0.0, 1e4, 1e4]], dtype=torch.float16))
    assert half.dtype == torch.float16 and bool(torch.isfinite(half).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_cast_back(dtype, make_boxes):
    g = torch.Generator().manual_seed(4)
    anchors, boxes = make_boxes(100, g).to(dtype), make_boxes(100, g).to(dtype)
    coder = BoxCoder()
    offsets = coder.encode(anchors, boxes)
    assert offsets.dtype == dtype
    torch.testing.assert_close(offsets, coder.encode(anchors.float(), boxes.float()).to(dtype), rtol=0, atol=0)
    assert coder.decode(anchors, offsets).dtype == dtype


def test_integer_boxes_give_float32_offsets():
    anchors = torch.tensor([[0, 0, 10, 10]])
    boxes = torch.tensor([[2, 2, 12, 22]])
    offsets = BoxCoder().encode(anchors, boxes)
    assert offsets.dtype == torch.float32
    expected = torch.tensor([[10 * 2 / 10, 10 * 7 / 10, 5 * math.log(1.0), 5 * math.log(2.0)]])
    torch.testing.assert_close(offsets, expected)


def test_empty_inputs_give_empty_outputs():
    coder = BoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 4), torch.zeros(2, 0, 4)).shape == (2, 0, 4)


def test_bad_input_raises_naming_the_argument():
    coder = BoxCoder()
    with pytest.raises(ValueError, match=r"anchors must have shape \[\.\.\., 4\], got \[3, 5\]"):
        coder.encode(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"anchors and offsets must broadcast, got shapes \[3, 4\] and \[2, 4\]"):
        coder.decode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same device"):
        coder.encode(torch.zeros(3, 4), torch.zeros(3, 4, device="meta"))
    with pytest.raises(ValueError, match="weights must be 4 positive"):
        BoxCoder(weights=(1.0, 1.0, 1.0))
    with pytest.raises(TypeError, match="boxes must be a torch.Tensor"):
        coder.encode(torch.zeros(3, 4), [[0, 0, 1, 1]] * 3)
