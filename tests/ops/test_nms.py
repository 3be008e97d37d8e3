"""Tests for detkit.ops.nms: nms and batched_nms against torchvision index for index, soft_nms against a reference.

Oracle tests on thousands of seeded random cases through every NMS path (torchvision's kernel alone, kernel and
vectorised rounds, the block engine), at the crossover sizes, hypothesis properties, dtypes, devices and bad input.
"""

from __future__ import annotations

import math
import struct
import sys

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops.boxes import _batched_nms_vanilla

from detkit.ops.nms import batched_nms, nms, soft_nms

nms_module = sys.modules["detkit.ops.nms"]

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 0.9, 1.0]
# the ways nms can decide the boxes on CPU (see nms_module._greedy_keep_cpu and _greedy_keep)
NMS_PATHS = ["default", "rounds", "engine"]


@pytest.fixture(params=NMS_PATHS)
def nms_path(request, monkeypatch) -> str:
    """Run the test through one NMS path: as shipped, kernel and rounds on tiny blocks, or the block engine."""
    if request.param == "rounds":  # several vectorised rounds even on small inputs
        monkeypatch.setattr(nms_module, "_KERNEL_MAX_CPU", 6)
        monkeypatch.setattr(nms_module, "_KERNEL_BLOCK_CPU", 3)
    elif request.param == "engine":  # the block engine that CUDA runs, here on CPU
        monkeypatch.setattr(nms_module, "_kernel_serves", lambda boxes, scores: False)
    return request.param


# --------------------------------------------------------------------------------------------
# case generators
# --------------------------------------------------------------------------------------------
def _clustered(n: int, g: torch.Generator, objects: int = 8, extent: float = 100.0) -> torch.Tensor:
    """Detector-like boxes: jittered copies of a few object boxes (many overlap above 0.5)."""
    xy = torch.rand(objects, 2, generator=g, dtype=torch.float64) * extent
    wh = (torch.rand(objects, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05) * extent
    base = torch.cat((xy, xy + wh), 1)[torch.randint(0, objects, (n,), generator=g)]
    jitter = (torch.rand(n, 4, generator=g, dtype=torch.float64) - 0.5) * 0.3 * (base[:, 2:] - base[:, :2]).repeat(1, 2)
    return base + jitter


def _case(i: int, n: int, g: torch.Generator, make_boxes, make_awkward_boxes) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes and scores for case ``i``: random, clustered, crowded, awkward or integer-grid, some with tied scores."""
    kind = i % 5
    if kind == 0:
        boxes = make_boxes(n, g, dtype=torch.float64)
    elif kind == 1:
        boxes = _clustered(n, g)
    elif kind == 2:  # crowded: many boxes in a small area
        boxes = make_boxes(n, g, extent=10.0, max_side=0.8, dtype=torch.float64)
    elif kind == 3:
        boxes = make_awkward_boxes(n, g, dtype=torch.float64)
    else:  # integer grid: equal IoUs and exactly representable coordinates
        boxes = make_boxes(n, g, extent=20.0, quantum=1.0, dtype=torch.float64)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    if i % 3 == 0:  # many ties
        scores = (scores * 4).round()
    return boxes.float(), scores.float()


def _sorted_like_torchvision(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``keep`` ordered by decreasing score, ties by lower index (the order torchvision's kernel gives)."""
    keep = keep.sort()[0]
    return keep[scores[keep].sort(descending=True, stable=True)[1]]


# --------------------------------------------------------------------------------------------
# nms against torchvision
# --------------------------------------------------------------------------------------------
def test_nms_matches_torchvision_on_thousands_of_random_cases(nms_path, make_boxes, make_awkward_boxes):
    g = torch.Generator().manual_seed(0)
    for i in range(1200):
        n = int(torch.randint(0, 64, (1,), generator=g))
        boxes, scores = _case(i, n, g, make_boxes, make_awkward_boxes)
        threshold = THRESHOLDS[i % len(THRESHOLDS)]
        expected = torchvision.ops.nms(boxes, scores, threshold)
        actual = nms(boxes, scores, threshold)
        assert actual.dtype == torch.int64
        assert torch.equal(actual, expected), f"{nms_path} case {i}: n={n}, threshold={threshold}"


@pytest.mark.parametrize("nms_path", ["default", "engine"], indirect=True)  # rounds: shipped constants
@pytest.mark.parametrize("kind", range(5))
def test_nms_matches_torchvision_on_large_inputs(kind, nms_path, make_boxes, make_awkward_boxes):
    g = torch.Generator().manual_seed(100 + kind)
    boxes, scores = _case(kind, 2000, g, make_boxes, make_awkward_boxes)
    for threshold in (0.3, 0.7):
        assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_nms_is_exact_for_every_block_size(monkeypatch, make_boxes):
    g = torch.Generator().manual_seed(1)
    boxes, scores = _clustered(700, g).float(), torch.rand(700, generator=g)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    for block, kernel_max, chunk in [(1, 1, 1), (2, 5, 50), (64, 100, 1000), (128, 512, 1 << 17), (700, 700, 1 << 20)]:
        monkeypatch.setattr(nms_module, "_KERNEL_BLOCK_CPU", block)
        monkeypatch.setattr(nms_module, "_KERNEL_MAX_CPU", kernel_max)
        monkeypatch.setattr(nms_module, "_CHUNK_ELEMS_CPU", chunk)
        assert torch.equal(nms(boxes, scores, 0.5), expected), ("rounds", block, kernel_max, chunk)
    monkeypatch.setattr(nms_module, "_kernel_serves", lambda boxes, scores: False)  # the block engine
    for first, largest, chunk in [(1, 1, 1), (3, 7, 50), (16, 64, 1000), (1024, 1024, 1 << 20)]:
        monkeypatch.setattr(nms_module, "_FIRST_BLOCK", first)
        monkeypatch.setattr(nms_module, "_MAX_BLOCK", largest)
        monkeypatch.setattr(nms_module, "_CHUNK_ELEMS_CPU", chunk)
        assert torch.equal(nms(boxes, scores, 0.5), expected), ("engine", first, largest, chunk)


def _crossover_boxes(kind: str, n: int, g: torch.Generator, make_boxes) -> torch.Tensor:
    """float32 boxes like the benchmark's distributions: random (little overlap), crowded, clustered."""
    if kind == "random":
        return make_boxes(n, g, extent=1000.0, max_side=0.1).float()
    if kind == "crowded":
        return make_boxes(n, g, extent=100.0, max_side=0.5).float()
    return _clustered(n, g, objects=50, extent=1000.0).float()


def _around_the_crossover(kind: str, g: torch.Generator, make_boxes):
    """``(n, boxes)`` just below, at and above the shipped CPU crossover (``_KERNEL_MAX_CPU``: the kernel alone up to
    it, one or more rounds above), and past one more round."""
    crossover = nms_module._KERNEL_MAX_CPU
    for n in (crossover - 1, crossover, crossover + 1, crossover + nms_module._KERNEL_BLOCK_CPU + 1):
        yield n, _crossover_boxes(kind, n, g, make_boxes)


@pytest.mark.parametrize("kind", ["random", "crowded", "clustered"])
def test_nms_matches_torchvision_around_the_crossover(kind, make_boxes):
    g = torch.Generator().manual_seed(12)
    for n, boxes in _around_the_crossover(kind, g, make_boxes):
        for scores in (torch.rand(n, generator=g), (torch.rand(n, generator=g) * 8).round()):  # ties too
            for threshold in (0.3, 0.7):
                expected = torchvision.ops.nms(boxes, scores, threshold)
                assert torch.equal(nms(boxes, scores, threshold), expected), (kind, n, threshold)


def test_nms_rounds_with_ties_across_the_block_boundary(monkeypatch, make_boxes):
    # the block is the best boxes plus every box tied with the last of them: a prefix of the order
    monkeypatch.setattr(nms_module, "_KERNEL_MAX_CPU", 20)
    monkeypatch.setattr(nms_module, "_KERNEL_BLOCK_CPU", 10)
    g = torch.Generator().manual_seed(13)
    boxes = make_boxes(300, g, extent=30.0, max_side=0.3)
    for scores in (torch.ones(300), (torch.rand(300, generator=g) * 3).round(), torch.rand(300, generator=g)):
        for threshold in (0.0, 0.2, 0.5):
            expected = torchvision.ops.nms(boxes, scores, threshold)
            assert torch.equal(nms(boxes, scores, threshold), expected)


def test_nms_scores_of_another_dtype_take_the_engine_and_stay_exact(make_boxes):
    g = torch.Generator().manual_seed(14)
    boxes = _clustered(900, g, objects=30).float()
    scores64 = torch.rand(900, generator=g, dtype=torch.float64)
    # float64 scores with float32 boxes: the order of the float64 scores, IoUs in float32
    order = scores64.sort(descending=True, stable=True)[1]
    ranks = torch.arange(900, 0, -1, dtype=torch.float32)  # torchvision's kernel in that order
    assert torch.equal(nms(boxes, scores64, 0.5), order[torchvision.ops.nms(boxes[order], ranks, 0.5)])
    ints = torch.randint(0, 5, (900,), generator=g)
    assert torch.equal(nms(boxes, ints, 0.5), torchvision.ops.nms(boxes, ints.float(), 0.5))
    halves = scores64.half()  # float16 scores cast to float32 exactly: the kernel path
    assert torch.equal(nms(boxes, halves, 0.5), torchvision.ops.nms(boxes, halves.float(), 0.5))


def test_nms_long_suppression_chain_is_resolved_exactly():
    # box i overlaps only its neighbours, scores decrease along the chain: greedy keeps every other box
    n = 300
    x = torch.arange(n, dtype=torch.float32) * 0.5
    boxes = torch.stack((x, torch.zeros(n), x + 1.0, torch.ones(n)), 1)
    scores = torch.linspace(1.0, 0.0, n)
    keep = nms(boxes, scores, 0.3)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.3))
    assert torch.equal(keep, torch.arange(0, n, 2))


def test_nms_tied_scores_keep_input_order():
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [40, 40, 50, 50]], dtype=torch.float32)
    scores = torch.tensor([1.0, 2.0, 1.0, 2.0])
    # equal scores: the lower index comes first and wins; duplicate 2 is suppressed by 0
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 0]
    same = torch.tensor([[0, 0, 10, 10]] * 5, dtype=torch.float32)
    assert nms(same, torch.ones(5), 0.5).tolist() == [0]
    assert nms(same, torch.ones(5), 1.0).tolist() == [0, 1, 2, 3, 4]


def test_nms_threshold_is_compared_like_torchvision():
    # IoU = 3/10 rounds to float32(0.3) > 0.3 (as a double): float32 suppresses, float64 does not
    boxes = torch.tensor([[0, 0, 10, 1], [0, 0, 3, 1]], dtype=torch.float32)
    scores = torch.tensor([1.0, 0.5])
    assert nms(boxes, scores, 0.3).tolist() == torchvision.ops.nms(boxes, scores, 0.3).tolist() == [0]
    b64, s64 = boxes.double(), scores.double()
    assert nms(b64, s64, 0.3).tolist() == torchvision.ops.nms(b64, s64, 0.3).tolist() == [0, 1]


# Pairs (higher-scoring box first) whose IoU lies one float32 step from 0.5, where forming the union with a
# fused multiply-add, fma(w_b, h_b, area_a), as torchvision 0.29's CUDA kernel does (its PTX for
# nms_kernel_impl<float>), flips the decision that torchvision's CPU kernel makes: the first pair keeps
# both boxes on CPU, the second suppresses the second box. Found by an exact float64 emulation of both.
FMA_SENSITIVE_PAIRS = [
    (
        [[298.5043029785156, 198.66305541992188, 580.3245849609375, 474.62548828125],
         [392.44439697265625, 198.66305541992188, 674.2646484375, 474.62548828125]],
        [0, 1],
    ),
    (
        [[256.5218811035156, 470.9579772949219, 440.6363525390625, 627.6708984375],
         [317.89337158203125, 470.9579772949219, 502.0078125, 627.6708984375]],
        [0],
    ),
]


def _iou_decisions_plain_and_fused(boxes: torch.Tensor) -> tuple[bool, bool]:
    """``IoU > 0.5`` of a float32 pair with each step rounded (CPU kernel) and with ``w_b * h_b + area_a`` fused."""
    a, b = boxes.unbind(0)
    inter = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0) * (
        torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])
    ).clamp(min=0)
    area_a, w_b, h_b = (a[2] - a[0]) * (a[3] - a[1]), b[2] - b[0], b[3] - b[1]
    plain = (area_a + w_b * h_b) - inter
    product = w_b.double() * h_b.double()  # exact: 24-bit times 24-bit significands
    total = area_a.double() + product
    assert total - area_a.double() == product  # the float64 sum is exact too, so one rounding to float32 follows
    fused = total.float() - inter
    return bool(inter / plain > 0.5), bool(inter / fused > 0.5)


@pytest.mark.parametrize("pair, kept", FMA_SENSITIVE_PAIRS)
def test_nms_decides_pairs_at_the_threshold_with_the_cpu_kernels_arithmetic(pair, kept, nms_path):
    # detkit's arithmetic is torchvision's CPU kernel's, step for step, not a fused one (see also the CUDA test)
    boxes = torch.tensor(pair)
    plain, fused = _iou_decisions_plain_and_fused(boxes)
    assert plain != fused and plain == (kept == [0])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == torchvision.ops.nms(boxes, scores, 0.5).tolist() == kept
    assert nms(boxes, torch.tensor([9, 8]), 0.5).tolist() == kept  # integer scores: the block engine
    assert batched_nms(boxes, scores, torch.zeros(2, dtype=torch.int64), 0.5).tolist() == kept


@pytest.mark.parametrize("value", [0.0, 0.3, 0.5, 1 / 3, 0.7, 1.0, -0.3, 1e-50, -1e-50, 1e300, -1e300, 3.4e38])
def test_float32_floor_is_the_largest_float32_not_above_the_value(value):
    floor = nms_module._float32_floor(value)
    assert floor <= value
    if floor == nms_module._FLT_MAX:
        assert value >= floor
    elif math.isfinite(floor):
        as_f32 = struct.unpack("<f", struct.pack("<f", floor))[0]
        assert as_f32 == floor  # representable in float32
        assert float(np.nextafter(np.float32(floor), np.float32(np.inf))) > value


def test_nms_of_empty_and_single_box():
    for fn in (lambda b, s: nms(b, s, 0.5), lambda b, s: batched_nms(b, s, torch.zeros(len(s), dtype=torch.long), 0.5)):
        empty = fn(torch.zeros(0, 4), torch.zeros(0))
        assert empty.shape == (0,) and empty.dtype == torch.int64
        assert fn(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3])).tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nms_half_precision_equals_torchvision_on_float32_casts(dtype, make_boxes):
    g = torch.Generator().manual_seed(2)
    for i in range(20):
        boxes = _clustered(200, g).to(dtype)
        scores = torch.rand(200, generator=g).to(dtype)
        expected = torchvision.ops.nms(boxes.float(), scores.float(), 0.5)
        assert torch.equal(nms(boxes, scores, 0.5), expected)


def test_nms_float64_and_integer_boxes(make_boxes):
    g = torch.Generator().manual_seed(3)
    boxes = make_boxes(300, g, dtype=torch.float64)
    scores = torch.rand(300, generator=g, dtype=torch.float64)
    assert torch.equal(nms(boxes, scores, 0.4), torchvision.ops.nms(boxes, scores, 0.4))
    ints = make_boxes(300, g, quantum=1.0).long()
    assert torch.equal(nms(ints, scores.float(), 0.4), torchvision.ops.nms(ints.float(), scores.float(), 0.4))


def test_nms_accepts_non_contiguous_inputs(make_boxes):
    g = torch.Generator().manual_seed(4)
    boxes = _clustered(400, g).float()
    scores = torch.rand(400, 2, generator=g)[:, 1]  # strided
    strided = boxes.t().contiguous().t()  # column-major
    assert not strided.is_contiguous() and not scores.is_contiguous()
    assert torch.equal(nms(strided, scores, 0.5), torchvision.ops.nms(boxes, scores.contiguous(), 0.5))


def test_nms_boxes_with_nan_coordinates_behave_like_torchvision():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, math.nan], [1, 1, 10, 10], [math.nan] * 4], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.4, 0.8])
    keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    assert keep.tolist() == [1, 3, 0]  # NaN boxes neither suppress nor are suppressed


def test_nms_batched_nms_and_soft_nms_accept_inputs_that_require_grad(nms_path):
    g = torch.Generator().manual_seed(15)
    boxes, scores = _clustered(300, g).float(), torch.rand(300, generator=g)
    idxs = torch.randint(0, 3, (300,), generator=g)
    leaf_boxes, leaf_scores = boxes.clone().requires_grad_(), scores.clone().requires_grad_()
    assert torch.equal(nms(leaf_boxes, leaf_scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(batched_nms(leaf_boxes * 1, leaf_scores * 1, idxs, 0.5), batched_nms(boxes, scores, idxs, 0.5))
    keep, new_scores = soft_nms(leaf_boxes, leaf_scores)
    ref_keep, ref_scores = soft_nms(boxes, scores)
    assert torch.equal(keep, ref_keep) and torch.equal(new_scores, ref_scores) and not new_scores.requires_grad


def test_nms_nan_scores_raise_value_error():
    boxes = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]], dtype=torch.float32)
    with pytest.raises(ValueError, match=r"scores contains 1 NaN.*index 1"):
        nms(boxes, torch.tensor([0.5, math.nan]), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        batched_nms(boxes, torch.tensor([math.nan, 0.5]), torch.tensor([0, 1]), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        soft_nms(boxes, torch.tensor([math.nan, 0.5]))


def test_nms_bad_input_raises_with_the_argument_and_shape():
    boxes, scores = torch.rand(5, 4), torch.rand(5)
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\], got \[5, 3\]"):
        nms(torch.rand(5, 3), scores, 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \[N\], got \[5, 1\]"):
        nms(boxes, scores[:, None], 0.5)
    with pytest.raises(ValueError, match=r"scores must have length 5"):
        nms(boxes, torch.rand(4), 0.5)
    with pytest.raises(TypeError, match="boxes must be a torch.Tensor"):
        nms(boxes.tolist(), scores, 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(boxes, scores, math.nan)
    with pytest.raises(TypeError, match="iou_threshold"):
        nms(boxes, scores, "0.5")
    with pytest.raises(ValueError, match="same device"):
        nms(boxes, scores.to("meta"), 0.5)
    with pytest.raises(TypeError, match="idxs must be an integer tensor"):
        batched_nms(boxes, scores, torch.zeros(5), 0.5)
    with pytest.raises(ValueError, match=r"idxs must have length 5"):
        batched_nms(boxes, scores, torch.zeros(3, dtype=torch.long), 0.5)


# --------------------------------------------------------------------------------------------
# batched_nms
# --------------------------------------------------------------------------------------------
def test_batched_nms_matches_torchvision_on_random_cases(make_boxes, make_awkward_boxes):
    g = torch.Generator().manual_seed(5)
    for i in range(300):
        n = int(torch.randint(0, 80, (1,), generator=g))
        boxes, scores = _case(i, n, g, make_boxes, make_awkward_boxes)
        idxs = torch.randint(-2, [1, 3, 10, 50][i % 4], (n,), generator=g)
        threshold = THRESHOLDS[i % len(THRESHOLDS)]
        actual = batched_nms(boxes, scores, idxs, threshold)
        # torchvision's per-class path: same kept set; order by score, ties by lower index
        assert torch.equal(actual, _sorted_like_torchvision(_batched_nms_vanilla(boxes, scores, idxs, threshold), scores))
        if i % 4 == 0:  # integer-grid boxes: torchvision's coordinate-offset path is exact, ties included
            grid = make_boxes(n, g, extent=20.0, quantum=1.0)
            assert torch.equal(
                batched_nms(grid, scores, idxs, threshold), torchvision.ops.batched_nms(grid, scores, idxs, threshold)
            )


@pytest.mark.parametrize("classes", [1, 7, 80])
def test_batched_nms_matches_torchvision_on_large_inputs(classes, make_boxes):
    g = torch.Generator().manual_seed(6)
    boxes = _clustered(2000, g, objects=30).float()
    scores = torch.rand(2000, generator=g, dtype=torch.float64).float()
    idxs = torch.randint(0, classes, (2000,), generator=g)
    expected = _sorted_like_torchvision(_batched_nms_vanilla(boxes, scores, idxs, 0.5), scores)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)


def test_batched_nms_equals_per_class_nms_with_skewed_class_sizes(monkeypatch):
    g = torch.Generator().manual_seed(7)
    boxes = _clustered(900, g, objects=10).float()
    scores = torch.rand(900, generator=g)
    idxs = torch.cat((torch.zeros(700), torch.arange(200) % 9 + 1)).long()[torch.randperm(900, generator=g)]
    expected = []
    for c in idxs.unique():
        members = (idxs == c).nonzero().squeeze(1)
        expected.append(members[torchvision.ops.nms(boxes[members], scores[members], 0.5)])
    expected = _sorted_like_torchvision(torch.cat(expected), scores)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)
    monkeypatch.setattr(nms_module, "_FIRST_BLOCK", 5)
    monkeypatch.setattr(nms_module, "_MAX_BLOCK", 9)
    monkeypatch.setattr(nms_module, "_CHUNK_ELEMS_CPU", 30)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)


def test_batched_nms_without_boxes_ignores_the_other_arguments_like_torchvision():
    empty = torch.empty((0,), dtype=torch.int64)
    for boxes in (torch.empty((0,)), torch.empty((0, 4)), torch.empty((0, 4), dtype=torch.float64)):
        expected = torchvision.ops.batched_nms(boxes, None, None, None)
        actual = batched_nms(boxes, None, None, None)
        assert torch.equal(actual, expected) and torch.equal(actual, empty)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)


def test_batched_nms_tie_order_is_stable_where_torchvision_may_not_be(make_boxes):
    # disjoint boxes, all kept, scores tied in pairs: detkit orders ties by index; torchvision's
    # per-category path (over 1,000 boxes on CPU) sorts them with an unstable sort: same set
    n = 1200
    x = torch.arange(n, dtype=torch.float32) * 20
    boxes = torch.stack((x, torch.zeros(n), x + 10, torch.ones(n) * 10), 1)
    scores = (torch.arange(n) // 2).float().flip(0)  # 2 boxes per score
    idxs = torch.arange(n) % 7
    actual = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(actual, torch.arange(n))  # decreasing score, ties by lower index
    assert torch.equal(actual.sort()[0], torchvision.ops.batched_nms(boxes, scores, idxs, 0.5).sort()[0])


def test_batched_nms_never_suppresses_across_categories():
    boxes = torch.tensor([[0, 0, 10, 10]] * 4, dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([3, 2, 1, 0]), 0.5).tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------
_coord = st.floats(min_value=0, max_value=50, allow_nan=False, width=32)
_box = st.tuples(_coord, _coord, st.floats(1, 30, width=32), st.floats(1, 30, width=32)).map(
    lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_box, st.floats(0, 1, allow_nan=False, width=32)), min_size=0, max_size=40),
    st.sampled_from(THRESHOLDS),
)
def test_nms_greedy_properties(items, threshold):
    boxes = torch.tensor([b for b, _ in items], dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor([s for _, s in items], dtype=torch.float32)
    keep = nms(boxes, scores, threshold)
    kept_scores = scores[keep]
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])  # sorted by score
    iou = torchvision.ops.box_iou(boxes, boxes)
    inner = iou[keep][:, keep]
    assert torch.all(inner.triu(1) <= threshold)  # kept boxes do not suppress each other
    dropped = torch.ones(len(scores), dtype=torch.bool)
    dropped[keep] = False
    position = torch.full((len(scores),), len(scores))
    position[keep] = torch.arange(len(keep))
    rank = torch.empty(len(scores), dtype=torch.long)
    rank[scores.sort(descending=True, stable=True)[1]] = torch.arange(len(scores))
    for j in dropped.nonzero().flatten().tolist():
        # each dropped box overlaps a kept box that comes before it in the score order
        before = keep[rank[keep] < rank[j]]
        assert bool((iou[before, j] > threshold).any()), j


# --------------------------------------------------------------------------------------------
# soft_nms
# --------------------------------------------------------------------------------------------
def _soft_nms_reference(boxes, scores, sigma, score_threshold, method, iou_threshold):
    """Plain loop: pick the best, decay the others, drop those below the threshold (float64)."""
    boxes, scores = boxes.double().tolist(), scores.double().tolist()
    alive = [i for i, s in enumerate(scores) if s >= score_threshold]
    keep, kept = [], []
    while alive:
        best = max(alive, key=lambda i: (scores[i], -i))
        keep.append(best)
        kept.append(scores[best])
        alive.remove(best)
        bx1, by1, bx2, by2 = boxes[best]
        for i in list(alive):
            x1, y1, x2, y2 = boxes[i]
            inter = max(0.0, min(bx2, x2) - max(bx1, x1)) * max(0.0, min(by2, y2) - max(by1, y1))
            union = (bx2 - bx1) * (by2 - by1) + (x2 - x1) * (y2 - y1) - inter
            iou = inter / union if union != 0 else 0.0
            if method == "gaussian":
                scores[i] *= math.exp(-iou * iou / sigma)
            elif iou >= iou_threshold:
                scores[i] *= 1 - iou
            if scores[i] < score_threshold:
                alive.remove(i)
    return keep, kept


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_matches_a_plain_reference(method, make_boxes):
    g = torch.Generator().manual_seed(8)
    for i in range(25):
        n = int(torch.randint(0, 60, (1,), generator=g))
        boxes = _clustered(n, g, objects=4)
        scores = torch.rand(n, generator=g, dtype=torch.float64)
        sigma, thr = [0.5, 0.1, 2.0][i % 3], [0.001, 0.1, 0.5][i % 3]
        keep, new_scores = soft_nms(boxes, scores, sigma=sigma, score_threshold=thr, method=method, iou_threshold=0.3)
        ref_keep, ref_scores = _soft_nms_reference(boxes, scores, sigma, thr, method, 0.3)
        assert keep.tolist() == ref_keep
        torch.testing.assert_close(new_scores, torch.tensor(ref_scores, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        assert keep.dtype == torch.int64 and torch.all(new_scores[:-1] >= new_scores[1:])


def test_soft_nms_known_values_and_dtypes():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, new = soft_nms(boxes, scores, sigma=0.5)
    assert keep.tolist() == [0, 2, 1]  # IoU(0, 1) = 0.5: 0.8 * exp(-0.25 / 0.5) = 0.485
    torch.testing.assert_close(new, torch.tensor([0.9, 0.7, 0.8 * math.exp(-0.5)]))
    keep, new = soft_nms(boxes, scores, method="linear", iou_threshold=0.6)
    assert keep.tolist() == [0, 1, 2] and torch.equal(new, scores)  # below the linear threshold: unchanged
    keep, new = soft_nms(boxes.half(), scores.half())
    assert keep.tolist() == [0, 2, 1] and new.dtype == torch.float16
    keep, new = soft_nms(boxes, scores, score_threshold=0.95)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and new.shape == (0,)
    with pytest.raises(ValueError, match="method"):
        soft_nms(boxes, scores, method="hard")
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(boxes, scores, sigma=0.0)


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["random", "crowded", "clustered"])
def test_nms_on_cuda_matches_torchvision_around_the_cpu_crossover(kind, make_boxes):
    # CUDA runs the block engine at every size; the CPU crossover sizes are checked there too
    g = torch.Generator().manual_seed(16)
    for n, boxes in _around_the_crossover(kind, g, make_boxes):
        scores = (torch.rand(n, generator=g) * 8).round()
        keep = nms(boxes.cuda(), scores.cuda(), 0.5).cpu()
        assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5)), (kind, n)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pair, kept", FMA_SENSITIVE_PAIRS)
def test_nms_on_cuda_decides_pairs_at_the_threshold_as_on_cpu(pair, kept):
    # torchvision's CUDA kernel fuses the union (see FMA_SENSITIVE_PAIRS); detkit keeps the CPU results on CUDA,
    # so a change that hands CUDA inputs to that kernel as they are fails here
    boxes, scores = torch.tensor(pair).cuda(), torch.tensor([0.9, 0.8]).cuda()
    assert nms(boxes, scores, 0.5).tolist() == kept
    assert batched_nms(boxes, scores, torch.zeros(2, dtype=torch.int64).cuda(), 0.5).tolist() == kept


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nms_inputs_that_require_grad_on_cuda(make_boxes):
    g = torch.Generator().manual_seed(17)
    boxes, scores = _clustered(500, g).float(), torch.rand(500, generator=g)
    keep = nms(boxes.cuda().requires_grad_(), scores.cuda().requires_grad_(), 0.5)
    assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes, scores, 0.5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nms_and_batched_nms_on_cuda_equal_the_cpu_results(make_boxes):
    g = torch.Generator().manual_seed(9)
    for n in (0, 1, 500, 5000):
        boxes = _clustered(n, g, objects=20).float()
        scores = torch.rand(n, generator=g)
        idxs = torch.randint(0, 10, (n,), generator=g)
        keep = nms(boxes.cuda(), scores.cuda(), 0.5)
        assert keep.device.type == "cuda"
        assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes, scores, 0.5))
        expected = _sorted_like_torchvision(_batched_nms_vanilla(boxes, scores, idxs, 0.5), scores)
        assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(), expected)
        keep, new = soft_nms(boxes.cuda(), scores.cuda())
        ref_keep, ref_new = soft_nms(boxes, scores)
        assert torch.equal(keep.cpu(), ref_keep)
        torch.testing.assert_close(new.cpu(), ref_new)
