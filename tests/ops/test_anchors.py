"""Tests for detkit.ops.anchors: the textbook's multibox_prior, and the torchvision-equal anchor generators.

The textbook reference below is written from the book's formula; torchvision's generators are the oracles.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TvDefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from detkit.ops import AnchorGenerator, DefaultBoxGenerator, multibox_prior


def textbook_prior(height: int, width: int, sizes: list[float], ratios: list[float]) -> torch.Tensor:
    """The book's vectorised computation, step by step, in float32: ``Tensor[1, H*W*k, 4]``."""
    size_t, ratio_t = torch.tensor(sizes), torch.tensor(ratios)
    per_pixel = len(sizes) + len(ratios) - 1
    center_h = (torch.arange(height) + 0.5) * (1.0 / height)
    center_w = (torch.arange(width) + 0.5) * (1.0 / width)
    shift_y, shift_x = torch.meshgrid(center_h, center_w, indexing="ij")
    shift_y, shift_x = shift_y.reshape(-1), shift_x.reshape(-1)
    w = torch.cat((size_t * torch.sqrt(ratio_t[0]), sizes[0] * torch.sqrt(ratio_t[1:]))) * height / width
    h = torch.cat((size_t / torch.sqrt(ratio_t[0]), sizes[0] / torch.sqrt(ratio_t[1:])))
    manip = torch.stack((-w, -h, w, h)).T.repeat(height * width, 1) / 2
    grid = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=1).repeat_interleave(per_pixel, dim=0)
    return (grid + manip).unsqueeze(0)


def loop_prior(height: int, width: int, sizes: list[float], ratios: list[float]) -> list[list[float]]:
    """Per pixel, per anchor, in Python floats: the definition in the book's text."""
    shapes = [(s, ratios[0]) for s in sizes] + [(sizes[0], r) for r in ratios[1:]]
    out = []
    for i in range(height):
        for j in range(width):
            cx, cy = (j + 0.5) / width, (i + 0.5) / height
            for s, r in shapes:
                w, h = s * math.sqrt(r) * height / width, s / math.sqrt(r)
                out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return out


# ------------------------------------------------------------------------------------------------
# multibox_prior
# ------------------------------------------------------------------------------------------------
def test_multibox_prior_reproduces_the_books_published_example():
    x = torch.rand(1, 3, 561, 728)
    y = multibox_prior(x, sizes=[0.75, 0.5, 0.25], ratios=[1, 2, 0.5])
    assert y.shape == (1, 2042040, 4)
    boxes = y.reshape(561, 728, 5, 4)
    # the book prints tensor([0.06, 0.07, 0.63, 0.82])
    assert torch.round(boxes[250, 250, 0, :], decimals=2).tolist() == pytest.approx([0.06, 0.07, 0.63, 0.82])


@pytest.mark.parametrize(
    ("height", "width", "sizes", "ratios"),
    [(5, 7, [0.75, 0.5, 0.25], [1, 2, 0.5]), (4, 4, [0.3], [1.0]), (3, 9, [0.2, 0.6], [0.5, 3.0, 1.5, 1.0])],
)
def test_multibox_prior_equals_the_textbook_bit_for_bit(height, width, sizes, ratios):
    ours = multibox_prior(torch.zeros(2, 3, height, width), sizes, ratios)
    torch.testing.assert_close(ours, textbook_prior(height, width, sizes, ratios), rtol=0, atol=0)
    expected = torch.tensor(loop_prior(height, width, sizes, ratios), dtype=torch.float64)
    torch.testing.assert_close(ours[0].double(), expected, rtol=0, atol=1e-6)


def test_multibox_prior_orders_row_column_anchor():
    y = multibox_prior(torch.zeros(1, 1, 3, 4), sizes=[0.5, 0.25], ratios=[1.0, 2.0]).view(3, 4, 3, 4)
    centres = (y[..., :2] + y[..., 2:]) / 2  # [H, W, k, 2]
    torch.testing.assert_close(centres[2, 1, 0], torch.tensor([(1 + 0.5) / 4, (2 + 0.5) / 3]))
    widths = y[0, 0, :, 2] - y[0, 0, :, 0]
    torch.testing.assert_close(widths, torch.tensor([0.5, 0.25, 0.5 * math.sqrt(2.0)]) * 3 / 4)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(torch.float64, torch.float64), (torch.float16, torch.float16), (torch.uint8, torch.float32)],
)
def test_multibox_prior_dtype_follows_the_feature_map(dtype, expected):
    y = multibox_prior(torch.zeros(1, 1, 6, 5, dtype=dtype), [0.4, 0.2], [1.0, 2.0])
    assert y.dtype == expected
    reference = multibox_prior(torch.zeros(1, 1, 6, 5), [0.4, 0.2], [1.0, 2.0])
    torch.testing.assert_close(y.float(), reference, rtol=0, atol=1e-3 if dtype == torch.float16 else 1e-6)


def test_multibox_prior_on_device_and_empty_map(device):
    y = multibox_prior(torch.zeros(1, 2, 3, 3, device=device), [0.5], [1.0, 2.0])
    assert y.device.type == device.type and y.shape == (1, 18, 4)
    assert multibox_prior(torch.zeros(1, 2, 0, 3, device=device), [0.5], [1.0]).shape == (1, 0, 4)


def test_multibox_prior_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"data must have shape .*got \[5\]"):
        multibox_prior(torch.zeros(5), [0.5], [1.0])
    with pytest.raises(ValueError, match="sizes must be a non-empty sequence"):
        multibox_prior(torch.zeros(1, 1, 2, 2), [], [1.0])
    with pytest.raises(ValueError, match="ratios must contain positive finite numbers"):
        multibox_prior(torch.zeros(1, 1, 2, 2), [0.5], [1.0, -2.0])
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        multibox_prior([[0.0]], [0.5], [1.0])


# ------------------------------------------------------------------------------------------------
# AnchorGenerator
# ------------------------------------------------------------------------------------------------
GENERATOR_CONFIGS = [
    (((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3),
    (((16, 24), (40, 80)), ((1.0,), (0.5, 1.0, 3.0))),
    ((32, 64), (0.5, 1.0)),  # flat tuples: one size per level, same ratios everywhere
]


@pytest.mark.parametrize(("sizes", "ratios"), GENERATOR_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchor_generator_equals_torchvision(sizes, ratios, dtype):
    g = torch.Generator().manual_seed(0)
    levels = len(sizes)
    images = torch.rand(2, 3, 97, 130, generator=g)
    features = [torch.rand(2, 4, 97 // 2 ** (k + 2), 130 // 2 ** (k + 2), dtype=dtype) for k in range(levels)]
    ours = AnchorGenerator(sizes, ratios)
    theirs = TvAnchorGenerator(sizes, ratios)
    expected = theirs(ImageList(images, [(97, 130)] * 2), features)
    got = ours(images, features)
    assert len(got) == 2
    for a, b in zip(got, expected):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location()


def test_anchor_generator_caches_grids_and_returns_independent_copies():
    gen = AnchorGenerator(((32,), (64,)), ((0.5, 1.0),) * 2, cache_size=2)
    first = gen.grid_anchors([(8, 10), (4, 5)], (64, 80))
    assert gen.grid_anchors([(8, 10), (4, 5)], (64, 80)) is first  # cached
    assert gen.grid_anchors([(8, 10), (4, 5)], (64, 80), dtype=torch.float64).dtype == torch.float64
    gen.grid_anchors([(7, 10), (4, 5)], (64, 80))
    assert len(gen._cache) == 2  # bounded: the least recently used grid was dropped
    assert gen.grid_anchors([(8, 10), (4, 5)], (64, 80)) is not first
    images, features = torch.zeros(2, 3, 64, 80), [torch.zeros(2, 1, 8, 10), torch.zeros(2, 1, 4, 5)]
    out = gen(images, features)
    out[0].zero_()  # a caller modifying its anchors must not corrupt the cache or the other image
    torch.testing.assert_close(out[1], gen.grid_anchors([(8, 10), (4, 5)], (64, 80)))
    assert bool(out[1].abs().sum() > 0)


def test_anchor_generator_orders_level_row_column_anchor():
    gen = AnchorGenerator(((10,), (20,)), ((1.0, 4.0),) * 2)
    anchors = gen.grid_anchors([(3, 4), (2, 2)], (30, 40))  # strides (10, 10) then (15, 20)
    assert anchors.shape == (3 * 4 * 2 + 2 * 2 * 2, 4)
    level0 = anchors[:24].view(3, 4, 2, 4)
    centres = (level0[..., :2] + level0[..., 2:]) / 2
    torch.testing.assert_close(centres[2, 3, 1], torch.tensor([30.0, 20.0]))  # (x, y) = (col, row) * stride
    heights = level0[0, 0, :, 3] - level0[0, 0, :, 1]
    torch.testing.assert_close(heights, torch.tensor([10.0, 20.0]))  # ratio is height / width


def test_anchor_generator_rejects_mismatched_levels_naming_both_lengths():
    with pytest.raises(ValueError, match="got 2 sizes and 3 aspect_ratios"):
        AnchorGenerator(((32,), (64,)), ((1.0,), (1.0,), (2.0,)))
    gen = AnchorGenerator(((32,), (64,)), ((1.0,), (1.0,)))
    with pytest.raises(ValueError, match="got 3 feature levels but the generator was built for 2"):
        gen(torch.zeros(1, 3, 64, 64), [torch.zeros(1, 1, 8, 8)] * 3)
    with pytest.raises(ValueError, match=r"images must have shape \[B, C, H, W\]"):
        gen(torch.zeros(3, 64, 64), [torch.zeros(1, 1, 8, 8)] * 2)
    with pytest.raises(ValueError, match="sizes\\[1\\] must contain positive"):
        AnchorGenerator(((32,), (-1,)), ((1.0,), (1.0,)))


def test_anchor_generator_on_device(device):
    gen = AnchorGenerator(((32,),), ((1.0, 2.0),))
    out = gen(torch.zeros(1, 3, 32, 32, device=device), [torch.zeros(1, 1, 4, 4, device=device)])
    assert out[0].device.type == device.type
    torch.testing.assert_close(out[0].cpu(), gen.grid_anchors([(4, 4)], (32, 32)))


# ------------------------------------------------------------------------------------------------
# DefaultBoxGenerator (SSD)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"clip": False},
        {"steps": [8, 16, 32]},
        {"scales": [0.1, 0.3, 0.6, 1.05]},
        {"min_ratio": 0.2, "max_ratio": 0.95},
    ],
)
def test_default_box_generator_equals_torchvision(kwargs):
    ratios = [[2], [2, 3], [2]]
    images = torch.zeros(2, 3, 120, 90)
    features = [torch.zeros(2, 8, 15, 12), torch.zeros(2, 8, 8, 6), torch.zeros(2, 8, 4, 3)]
    ours = DefaultBoxGenerator(ratios, **kwargs)
    theirs = TvDefaultBoxGenerator(ratios, **kwargs)
    expected = theirs(ImageList(images, [(120, 90)] * 2), features)
    for a, b in zip(ours(images, features), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location()
    assert ours.scales == pytest.approx(theirs.scales)


def test_default_box_generator_single_level_and_extra_box():
    gen = DefaultBoxGenerator([[]], min_ratio=0.2, max_ratio=0.8, clip=False)
    boxes = gen.grid_anchors([(1, 1)], (100, 100))
    sides = boxes[:, 2] - boxes[:, 0]
    torch.testing.assert_close(sides, torch.tensor([20.0, 100 * math.sqrt(0.2 * 0.8)]))  # s_k, sqrt(s_k s_k+1)


def test_default_box_generator_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="got 2 aspect_ratios and 3 steps"):
        DefaultBoxGenerator([[2], [2]], steps=[8, 16, 32])
    with pytest.raises(ValueError, match="scales must have len\\(aspect_ratios\\) \\+ 1 = 3 entries, got 2"):
        DefaultBoxGenerator([[2], [2]], scales=[0.1, 0.5])
    with pytest.raises(ValueError, match="got 1 feature levels but the generator was built for 2"):
        DefaultBoxGenerator([[2], [2]])(torch.zeros(1, 3, 32, 32), [torch.zeros(1, 1, 4, 4)])
