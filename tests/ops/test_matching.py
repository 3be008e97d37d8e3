"""Tests for detkit.ops.matching: the textbook's assignment and targets, torchvision's Matcher as oracle.

The textbook references below are plain loops written from the book; quantised boxes make IoU ties common.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tvops
from torchvision.models.detection._utils import Matcher as TvMatcher

import detkit.ops.boxes as boxes_module
from detkit.ops import Matcher, assign_anchors, multibox_target


def textbook_assign(gt: torch.Tensor, anchors: torch.Tensor, threshold: float = 0.5, steps: int | None = None):
    """The textbook's ``assign_anchor_to_bbox``: a threshold pass, then greedy whole-matrix argmaxes."""
    num_anchors, num_gt = anchors.shape[0], gt.shape[0]
    matches = torch.full((num_anchors,), -1, dtype=torch.long)
    if num_gt == 0 or num_anchors == 0:
        return matches
    jaccard = tvops.box_iou(anchors, gt)  # [A, G]
    max_ious, indices = torch.max(jaccard, dim=1)
    above = max_ious >= threshold
    matches[above] = indices[above]
    for _ in range(num_gt if steps is None else steps):
        flat = int(torch.argmax(jaccard))
        box, anchor = flat % num_gt, flat // num_gt
        matches[anchor] = box
        jaccard[:, box] = -1
        jaccard[anchor, :] = -1
    return matches


def textbook_targets(anchors: torch.Tensor, label: torch.Tensor):
    """The textbook's ``multibox_target`` for one image (no padding rows), eps 1e-6 in the log."""
    matches = textbook_assign(label[:, 1:], anchors)
    mask = (matches >= 0).float().unsqueeze(-1).repeat(1, 4)
    classes = torch.zeros(anchors.shape[0], dtype=torch.long)
    assigned = torch.zeros(anchors.shape[0], 4)
    idx = torch.nonzero(matches >= 0).reshape(-1)
    classes[idx] = label[matches[idx], 0].long() + 1
    assigned[idx] = label[matches[idx], 1:]
    c_anc = tvops.box_convert(anchors, "xyxy", "cxcywh")
    c_gt = tvops.box_convert(assigned, "xyxy", "cxcywh")
    offset = torch.cat((10 * (c_gt[:, :2] - c_anc[:, :2]) / c_anc[:, 2:],
                        5 * torch.log(1e-6 + c_gt[:, 2:] / c_anc[:, 2:])), dim=1)
    return (offset * mask).reshape(-1), mask.reshape(-1), classes


# ------------------------------------------------------------------------------------------------
# the textbook's published example
# ------------------------------------------------------------------------------------------------
def test_multibox_target_reproduces_the_books_five_anchor_example():
    ground_truth = torch.tensor([[0, 0.1, 0.08, 0.52, 0.92], [1, 0.55, 0.2, 0.9, 0.88]])
    anchors = torch.tensor([[0, 0.1, 0.2, 0.3], [0.15, 0.2, 0.4, 0.4], [0.63, 0.05, 0.88, 0.98],
                            [0.66, 0.45, 0.8, 0.8], [0.57, 0.3, 0.92, 0.9]])
    offsets, mask, classes = multibox_target(anchors.unsqueeze(0), ground_truth.unsqueeze(0))
    assert classes.tolist() == [[0, 1, 2, 0, 2]]
    assert mask.tolist() == [[0.0] * 4 + [1.0] * 8 + [0.0] * 4 + [1.0] * 4]
    book = torch.tensor([[-0.00e00, -0.00e00, -0.00e00, -0.00e00, 1.40e00, 1.00e01, 2.59e00, 7.18e00,
                          -1.20e00, 2.69e-01, 1.68e00, -1.57e00, -0.00e00, -0.00e00, -0.00e00, -0.00e00,
                          -5.71e-01, -1.00e00, 4.17e-06, 6.26e-01]])
    torch.testing.assert_close(offsets, book, rtol=0, atol=5e-3)  # the book prints 3 significant digits
    torch.testing.assert_close(offsets, textbook_targets(anchors, ground_truth)[0][None], rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# assign_anchors against the textbook
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantum", [None, 0.125])
def test_assign_anchors_equals_the_textbook_on_random_cases(quantum, make_boxes):
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        num_anchors = int(torch.randint(1, 50, (1,), generator=g))
        num_gt = int(torch.randint(0, num_anchors + 1, (1,), generator=g))
        gt = make_boxes(num_gt, g, extent=1.0, max_side=0.5, quantum=quantum)
        anchors = make_boxes(num_anchors, g, extent=1.0, max_side=0.5, quantum=quantum)
        threshold = float(torch.rand(1, generator=g)) * 0.8 + 0.1
        expected = textbook_assign(gt, anchors, threshold)
        torch.testing.assert_close(assign_anchors(gt, anchors, threshold), expected, rtol=0, atol=0)


@pytest.mark.parametrize("quantum", [None, 0.125])
def test_assign_anchors_with_a_zero_threshold_equals_the_textbook(quantum, make_boxes):
    # every anchor takes its best ground truth; those overlapping none take the first (all IoUs 0)
    g = torch.Generator().manual_seed(12)
    for _ in range(10):
        gt = make_boxes(int(torch.randint(1, 8, (1,), generator=g)), g, extent=1.0, max_side=0.3, quantum=quantum)
        anchors = make_boxes(60, g, extent=1.0, max_side=0.2, quantum=quantum)
        torch.testing.assert_close(assign_anchors(gt, anchors, 0.0), textbook_assign(gt, anchors, 0.0), rtol=0, atol=0)


def test_multibox_target_with_a_zero_threshold_and_padding(make_boxes):
    g = torch.Generator().manual_seed(13)
    anchors = make_boxes(80, g, extent=1.0, max_side=0.2)
    labels = _labels(3, 4, g, make_boxes)
    labels[0, 0] = -1.0  # padding first: the first valid ground truth is gt 1
    labels[2] = -1.0  # an image without ground truth keeps every anchor background
    _, mask, classes = multibox_target(anchors, labels, iou_threshold=0.0)
    for b in range(2):
        real = labels[b][labels[b, :, 0] >= 0]
        expected = textbook_assign(real[:, 1:], anchors, 0.0)
        assert bool(mask[b].all())
        assert torch.equal(classes[b], real[expected, 0].long() + 1)
    assert not bool(mask[2].any()) and not bool(classes[2].any())


def test_assign_anchors_breaks_ties_like_the_textbook():
    # gt 0 and gt 1 are the same box; anchors 1 and 3 are the same box: every first-index rule matters
    gt = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    anchors = torch.tensor([[3.0, 3.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0],
                            [0.0, 0.0, 2.0, 2.0], [9.0, 9.0, 10.0, 10.0]])
    got = assign_anchors(gt, anchors, 0.4)
    torch.testing.assert_close(got, textbook_assign(gt, anchors, 0.4), rtol=0, atol=0)
    # gt 2 overlaps nothing: it takes the first anchor still free (anchor 0) with IoU 0
    assert got.tolist() == [2, 0, 0, 1, -1]


@pytest.mark.parametrize("budget", [1, 7, 64, 1 << 18])
def test_assign_anchors_is_independent_of_the_block_size(budget, make_boxes, monkeypatch):
    monkeypatch.setattr(boxes_module, "_BLOCK_ELEMS_CPU", budget)
    g = torch.Generator().manual_seed(1)
    gt = make_boxes(12, g, extent=1.0, quantum=0.0625)
    anchors = make_boxes(300, g, extent=1.0, max_side=0.3, quantum=0.0625)
    torch.testing.assert_close(assign_anchors(gt, anchors), textbook_assign(gt, anchors), rtol=0, atol=0)


def test_assign_anchors_when_many_gts_share_their_best_anchor(make_boxes, monkeypatch):
    # small gts inside one big anchor: once a gt claims it, the others must look again (rescans)
    monkeypatch.setattr(boxes_module, "_BLOCK_ELEMS_CPU", 64)
    g = torch.Generator().manual_seed(9)
    gt = make_boxes(8, g, extent=0.3, max_side=0.2) + 0.35
    anchors = torch.cat((make_boxes(40, g, extent=1.0, max_side=0.1), torch.tensor([[0.3, 0.3, 0.8, 0.8]])))
    torch.testing.assert_close(assign_anchors(gt, anchors), textbook_assign(gt, anchors), rtol=0, atol=0)


def test_assign_anchors_for_gts_outside_every_anchor(make_boxes, monkeypatch):
    monkeypatch.setattr(boxes_module, "_BLOCK_ELEMS_CPU", 64)  # several blocks, some with no anchor in reach
    g = torch.Generator().manual_seed(10)
    anchors = make_boxes(30, g, extent=1.0, max_side=0.2)
    gt = torch.cat((make_boxes(5, g, extent=1.0), make_boxes(6, g, extent=1.0) + 5.0))  # 6 gts far away
    torch.testing.assert_close(assign_anchors(gt, anchors), textbook_assign(gt, anchors), rtol=0, atol=0)


def test_assign_anchors_equals_the_textbook_on_a_larger_case(make_boxes):
    g = torch.Generator().manual_seed(11)
    gt = make_boxes(40, g, extent=1.0, max_side=0.3)
    anchors = make_boxes(3000, g, extent=1.0, max_side=0.2)
    torch.testing.assert_close(assign_anchors(gt, anchors), textbook_assign(gt, anchors), rtol=0, atol=0)


def test_assign_anchors_with_more_gts_than_anchors_stops_when_anchors_run_out(make_boxes):
    g = torch.Generator().manual_seed(2)
    gt, anchors = make_boxes(9, g, extent=1.0), make_boxes(4, g, extent=1.0)
    got = assign_anchors(gt, anchors)
    # the textbook's surplus iterations would re-assign anchor 0 to gt 0: we stop after A claims
    torch.testing.assert_close(got, textbook_assign(gt, anchors, steps=4), rtol=0, atol=0)
    assert sorted(got.tolist()) == sorted(set(got.tolist()))  # every anchor claimed by a different gt


def test_assign_anchors_empty_inputs():
    assert assign_anchors(torch.zeros(0, 4), torch.rand(5, 4)).tolist() == [-1] * 5
    out = assign_anchors(torch.rand(3, 4), torch.zeros(0, 4))
    assert out.shape == (0,) and out.dtype == torch.int64


def test_assign_anchors_with_zero_area_boxes_is_defined():
    gt = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])  # a point: IoU 0 (or 0/0) with everything
    anchors = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    got = assign_anchors(gt, anchors)
    # 0/0 counts as 0: gt 1 claims anchor 1 (IoU 0.5), then gt 0 claims the first free anchor
    assert got.tolist() == [0, 1, -1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_assign_anchors_dtypes(dtype, make_boxes):
    g = torch.Generator().manual_seed(3)
    gt = make_boxes(6, g, extent=64.0, quantum=1.0).to(dtype)
    anchors = make_boxes(80, g, extent=64.0, quantum=1.0).to(dtype)
    expected = textbook_assign(gt.double(), anchors.double())
    torch.testing.assert_close(assign_anchors(gt, anchors), expected, rtol=0, atol=0)


def test_assign_anchors_on_device(device, make_boxes):
    g = torch.Generator().manual_seed(4)
    gt = make_boxes(10, g, extent=1.0, quantum=0.125)
    anchors = make_boxes(200, g, extent=1.0, max_side=0.3, quantum=0.125)
    got = assign_anchors(gt.to(device), anchors.to(device))
    assert got.device.type == device.type
    torch.testing.assert_close(got.cpu(), textbook_assign(gt, anchors), rtol=0, atol=0)


def test_assign_anchors_rejects_bad_input():
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \[N, 4\], got \[3\]"):
        assign_anchors(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same device"):
        assign_anchors(torch.zeros(3, 4), torch.zeros(2, 4, device="meta"))
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        assign_anchors(torch.zeros(3, 4), torch.zeros(2, 4), iou_threshold=1.5)


# ------------------------------------------------------------------------------------------------
# multibox_target, batched
# ------------------------------------------------------------------------------------------------
def _labels(num_images: int, num_gt: int, g: torch.Generator, make_boxes, quantum=None) -> torch.Tensor:
    classes = torch.randint(0, 4, (num_images, num_gt, 1), generator=g).float()
    boxes = torch.stack([make_boxes(num_gt, g, extent=1.0, quantum=quantum) for _ in range(num_images)])
    return torch.cat((classes, boxes), dim=2)


@pytest.mark.parametrize("budget", [7, 1 << 18])
def test_multibox_target_equals_the_textbook_per_image_with_padding(budget, make_boxes, monkeypatch):
    monkeypatch.setattr(boxes_module, "_BLOCK_ELEMS_CPU", budget)
    g = torch.Generator().manual_seed(5)
    anchors = make_boxes(120, g, extent=1.0, max_side=0.3, quantum=0.0625)
    labels = _labels(5, 6, g, make_boxes, quantum=0.0625)
    padding = torch.rand(5, 6, generator=g) < 0.3
    labels[padding] = -1.0  # padding rows anywhere, even a whole image
    labels[3] = -1.0
    offsets, mask, classes = multibox_target(anchors, labels)
    assert offsets.shape == mask.shape == (5, 480) and classes.shape == (5, 120)
    assert classes.dtype == torch.int64 and offsets.dtype == mask.dtype == torch.float32
    for b in range(5):
        real = labels[b][labels[b, :, 0] >= 0]
        exp_offsets, exp_mask, exp_classes = textbook_targets(anchors, real)
        torch.testing.assert_close(classes[b], exp_classes, rtol=0, atol=0)
        torch.testing.assert_close(mask[b], exp_mask, rtol=0, atol=0)
        torch.testing.assert_close(offsets[b], exp_offsets, rtol=0, atol=1e-4)
    assert not bool(mask[3].any()) and not bool(classes[3].any())


def test_multibox_target_accepts_unbatched_anchors_and_no_ground_truth(make_boxes):
    g = torch.Generator().manual_seed(6)
    anchors = make_boxes(30, g, extent=1.0)
    labels = _labels(2, 3, g, make_boxes)
    batched = multibox_target(anchors[None], labels)
    for x, y in zip(multibox_target(anchors, labels), batched):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    offsets, mask, classes = multibox_target(anchors, torch.zeros(2, 0, 5))
    assert offsets.shape == (2, 120) and not bool(mask.any()) and not bool(classes.any())


def test_multibox_target_float64_and_on_device(device, make_boxes):
    g = torch.Generator().manual_seed(7)
    anchors = make_boxes(60, g, extent=1.0, quantum=0.125)
    labels = _labels(3, 4, g, make_boxes, quantum=0.125)
    reference = multibox_target(anchors, labels)
    got = multibox_target(anchors.double().to(device), labels.double().to(device))
    assert got[0].dtype == torch.float64 and got[0].device.type == device.type
    torch.testing.assert_close(got[2].cpu(), reference[2], rtol=0, atol=0)
    torch.testing.assert_close(got[0].cpu().float(), reference[0], rtol=1e-5, atol=1e-5)


def test_multibox_target_rejects_bad_input():
    with pytest.raises(ValueError, match=r"labels must have shape \[B, G, 5\].*got \[2, 4\]"):
        multibox_target(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"anchors must have shape \[N, 4\], got \[2, 3, 4\]"):
        multibox_target(torch.zeros(2, 3, 4), torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="same device"):
        multibox_target(torch.zeros(3, 4), torch.zeros(2, 1, 5, device="meta"))


# ------------------------------------------------------------------------------------------------
# Matcher against torchvision
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("allow_low", [False, True])
@pytest.mark.parametrize(("high", "low"), [(0.5, 0.4), (0.7, 0.3), (0.5, 0.5)])
def test_matcher_equals_torchvision_on_random_matrices_with_ties(allow_low, high, low, device):
    g = torch.Generator().manual_seed(8)
    for _ in range(15):
        num_gt, num_anchors = torch.randint(1, 12, (2,), generator=g).tolist()
        quality = (torch.rand(num_gt, num_anchors, generator=g) * 10).round() / 10  # many ties
        expected = TvMatcher(high, low, allow_low)(quality.clone())
        got = Matcher(high, low, allow_low)(quality.to(device))
        torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)


def test_matcher_keeps_low_quality_ties():
    quality = torch.tensor([[0.1, 0.3, 0.3, 0.0], [0.2, 0.0, 0.0, 0.05]])
    assert Matcher(0.5, 0.4, allow_low_quality_matches=False)(quality).tolist() == [-1, -1, -1, -1]
    assert Matcher(0.5, 0.4, allow_low_quality_matches=True)(quality).tolist() == [1, 0, 0, -1]
    assert Matcher(0.5, 0.2, allow_low_quality_matches=False)(quality).tolist() == [-2, -2, -2, -1]


def test_matcher_empty_and_bad_input():
    assert Matcher(0.5, 0.4)(torch.zeros(0, 3)).tolist() == [Matcher.BELOW_LOW_THRESHOLD] * 3
    assert Matcher(0.5, 0.4)(torch.zeros(2, 0)).shape == (0,)
    with pytest.raises(ValueError, match="low_threshold must be <= high_threshold"):
        Matcher(0.3, 0.5)
    with pytest.raises(ValueError, match=r"match_quality_matrix must have shape \[G, A\], got \[4\]"):
        Matcher(0.5, 0.4)(torch.zeros(4))
