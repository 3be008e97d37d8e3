"""Tests for the multibox loss: anchor targets, 3:1 hard-negative mining, CE / focal and smooth-L1 / GIoU terms.

Each term is checked against a plain loop-and-formula reference on small hand-made or random cases.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detkit.models.detection_losses import MultiboxLoss, assign_targets, hard_negative_mask
from detkit.ops import BoxCoder, box_iou, generalized_box_iou


def _grid_anchors(cells: int = 6, size: float = 64.0) -> torch.Tensor:
    """Two anchors (small, large square) per cell of a ``cells x cells`` grid over a ``size`` image."""
    step = size / cells
    rows = []
    for i in range(cells):
        for j in range(cells):
            cx, cy = (j + 0.5) * step, (i + 0.5) * step
            for half in (step * 0.6, step * 1.2):
                rows.append([cx - half, cy - half, cx + half, cy + half])
    return torch.tensor(rows)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[5.0, 6.0, 25.0, 30.0], [30.0, 28.0, 60.0, 62.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[12.0, 40.0, 40.0, 58.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]


# ---------------------------------------------------------------------------------------------------------
# hard-negative mining


def test_hard_negative_mask_keeps_three_negatives_per_positive_with_the_largest_losses() -> None:
    loss = torch.tensor(
        [
            [9.0, 0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 5.0, 0.05],
            [0.4, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01],
        ]
    )
    # image 0: anchor 0 positive (largest loss: never mined), anchor 10 ignored (never mined), 2 positives
    targets = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, 2],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    mask = hard_negative_mask(loss, targets, neg_pos_ratio=3)
    # the 6 largest background losses of image 0: 0.9 (2), 0.8 (6), 0.7 (4), 0.6 (8), 0.5 (3), 0.4 (9)
    assert mask[0].nonzero().flatten().tolist() == [2, 3, 4, 6, 8, 9]
    assert not mask[1].any()  # no positives -> no negatives (min_negatives=0)
    assert mask.sum().item() == 3 * (targets > 0).sum().item()


def test_hard_negative_mask_min_negatives_and_images_short_of_background() -> None:
    loss = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1]])
    targets = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 0, 0, -1]])
    mask = hard_negative_mask(loss, targets, neg_pos_ratio=3, min_negatives=2)
    assert mask[0].nonzero().flatten().tolist() == [3, 4]  # 2 forced negatives, the largest losses
    assert mask[1].nonzero().flatten().tolist() == [2, 3]  # wants 6, only 2 background anchors exist


def test_hard_negative_mask_ties_go_to_the_lower_anchor_index() -> None:
    loss = torch.ones(1, 8)
    targets = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0]])
    assert hard_negative_mask(loss, targets, 3)[0].nonzero().flatten().tolist() == [1, 2, 3]


def test_hard_negative_mask_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="cls_loss and class_targets"):
        hard_negative_mask(torch.zeros(2, 5), torch.zeros(2, 4, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------------
# anchor targets


def test_assign_targets_thresholds_and_ignored_band() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1.0 -> foreground
            [0.0, 0.0, 10.0, 16.0],  # IoU 0.625 -> foreground
            [0.0, 0.0, 10.0, 22.0],  # IoU 0.4545 -> between 0.4 and 0.5: ignored
            [0.0, 0.0, 10.0, 40.0],  # IoU 0.25 -> background
        ]
    )
    cls, boxes = assign_targets(anchors, [{"boxes": gt, "labels": torch.tensor([3])}], 0.5, 0.4)
    assert cls.tolist() == [[4, 4, -1, 0]]
    assert torch.equal(boxes[0, :2], gt.expand(2, 4))
    assert torch.equal(boxes[0, 2:], anchors[2:])  # unmatched anchors keep themselves
    cls, _ = assign_targets(anchors, [{"boxes": gt, "labels": torch.tensor([3])}], 0.5)
    assert cls.tolist() == [[4, 4, 0, 0]]  # no ignored band by default


def test_assign_targets_gives_every_box_its_best_anchor_even_when_another_box_overlaps_it_more() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [50.0, 50.0, 60.0, 60.0]])
    # box 0 matches anchors 0 (IoU 1) and 1 (0.83); box 1's best anchor is 1 (IoU 0.4), which box 0 wins
    # on IoU: without forcing, box 1 would get no anchor at all
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 30.0]])
    cls, boxes = assign_targets(anchors, [{"boxes": gt, "labels": torch.tensor([0, 1])}])
    assert cls.tolist() == [[1, 2, 0]]
    assert torch.equal(boxes[0, 1], gt[1])


def test_assign_targets_matches_a_plain_loop_on_random_boxes() -> None:
    torch.manual_seed(0)
    anchors = _grid_anchors()
    xy = torch.rand(5, 2) * 40
    gt = torch.cat([xy, xy + 8 + torch.rand(5, 2) * 20], dim=1)
    labels = torch.tensor([0, 1, 2, 1, 0])
    cls, boxes = assign_targets(anchors, [{"boxes": gt, "labels": labels}], 0.5)
    iou = box_iou(gt, anchors)
    expected = []
    for a in range(anchors.shape[0]):
        best = int(iou[:, a].argmax())
        expected.append(best if iou[best, a] >= 0.5 else -1)
    for g in range(gt.shape[0]):
        expected[int(iou[g].argmax())] = g
    assert cls[0].tolist() == [int(labels[g]) + 1 if g >= 0 else 0 for g in expected]
    for a, g in enumerate(expected):
        assert torch.equal(boxes[0, a], gt[g] if g >= 0 else anchors[a])


# ---------------------------------------------------------------------------------------------------------
# the loss


def _reference_ce_smooth_l1(logits, regression, anchors, targets, ratio=3.0):
    """Loop-per-image reference of SSD's loss with 3:1 mining, from the targets of assign_targets."""
    cls, matched = assign_targets(anchors, targets)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    total_cls, total_box, num_pos = 0.0, 0.0, 0
    for b in range(logits.shape[0]):
        ce = [float(F.cross_entropy(logits[b, a][None], cls[b, a].clamp(min=0)[None])) for a in range(anchors.shape[0])]
        positives = [a for a in range(anchors.shape[0]) if cls[b, a] > 0]
        negatives = sorted((a for a in range(anchors.shape[0]) if cls[b, a] == 0), key=lambda a: -ce[a])
        chosen = positives + negatives[: int(ratio * len(positives))]
        total_cls += sum(ce[a] for a in chosen)
        for a in positives:
            offsets = coder.encode(anchors[a], matched[b, a])
            total_box += float(F.smooth_l1_loss(regression[b, a], offsets, reduction="sum"))
        num_pos += len(positives)
    return total_cls / max(num_pos, 1), total_box / max(num_pos, 1)


def test_ce_smooth_l1_loss_matches_the_loop_reference() -> None:
    torch.manual_seed(1)
    anchors = _grid_anchors()
    logits = torch.randn(3, anchors.shape[0], 4)
    regression = torch.randn(3, anchors.shape[0], 4)
    losses = MultiboxLoss()(logits, regression, anchors, _targets())
    ref_cls, ref_box = _reference_ce_smooth_l1(logits, regression, anchors, _targets())
    assert losses["loss_cls"].item() == pytest.approx(ref_cls, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(ref_box, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(ref_cls + ref_box, rel=1e-5)


def test_ce_gradient_reaches_only_positives_and_mined_negatives() -> None:
    torch.manual_seed(2)
    anchors = _grid_anchors()
    logits = torch.randn(3, anchors.shape[0], 4, requires_grad=True)
    MultiboxLoss()(logits, torch.zeros(3, anchors.shape[0], 4), anchors, _targets())["loss_cls"].backward()
    cls, _ = assign_targets(anchors, _targets())
    touched = logits.grad.abs().sum(-1) > 0  # [B, A]
    num_pos = (cls > 0).sum(dim=1)
    assert torch.equal(touched.sum(dim=1), 4 * num_pos)  # positives + 3 negatives each
    assert touched[cls > 0].all()
    assert not touched[2].any()  # the image without boxes contributes nothing


def test_focal_loss_matches_the_formula_on_every_non_ignored_anchor() -> None:
    torch.manual_seed(3)
    anchors = _grid_anchors()
    num_classes, alpha, gamma = 3, 0.25, 2.0
    logits = torch.randn(3, anchors.shape[0], num_classes)
    loss = MultiboxLoss(cls_loss="focal", bg_iou_threshold=0.4, focal_alpha=alpha, focal_gamma=gamma)
    assert loss.num_columns(num_classes) == num_classes and not loss.has_background_column
    got = loss(logits, torch.zeros(3, anchors.shape[0], 4), anchors, _targets())["loss_cls"].item()

    cls, _ = assign_targets(anchors, _targets(), 0.5, 0.4)
    assert (cls == -1).any()  # the case exercises the ignored band
    total = 0.0
    for b in range(3):
        for a in range(anchors.shape[0]):
            if cls[b, a] < 0:
                continue
            for c in range(num_classes):
                p = torch.sigmoid(logits[b, a, c]).item()
                if cls[b, a] == c + 1:
                    total += -alpha * (1 - p) ** gamma * math.log(p)
                else:
                    total += -(1 - alpha) * p**gamma * math.log(1 - p)
    assert got == pytest.approx(total / int((cls > 0).sum()), rel=1e-4)


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_box_loss_is_zero_for_exact_offsets(box_loss: str) -> None:
    anchors = _grid_anchors()
    targets = _targets()
    _, matched = assign_targets(anchors, targets)
    exact = BoxCoder().encode(anchors, matched)  # [B, A, 4]
    losses = MultiboxLoss(box_loss=box_loss)(torch.zeros(3, anchors.shape[0], 4), exact, anchors, targets)
    assert losses["loss_box"].item() == pytest.approx(0.0, abs=1e-5)


def test_giou_box_loss_matches_one_minus_giou_of_decoded_positives() -> None:
    torch.manual_seed(4)
    anchors = _grid_anchors()
    regression = torch.randn(3, anchors.shape[0], 4) * 0.5
    losses = MultiboxLoss(box_loss="giou")(torch.zeros(3, anchors.shape[0], 4), regression, anchors, _targets())
    cls, matched = assign_targets(anchors, _targets())
    decoded = BoxCoder().decode(anchors, regression)  # [B, A, 4]
    pos = cls > 0
    giou = generalized_box_iou(decoded[pos], matched[pos]).diagonal()
    assert losses["loss_box"].item() == pytest.approx(float((1 - giou).sum() / pos.sum()), rel=1e-5)


def test_loss_is_normalised_by_the_number_of_positives() -> None:
    torch.manual_seed(5)
    anchors = _grid_anchors()
    logits, regression = torch.randn(3, anchors.shape[0], 4), torch.randn(3, anchors.shape[0], 4)
    one = MultiboxLoss()(logits, regression, anchors, _targets())
    twice = MultiboxLoss()(logits.repeat(2, 1, 1), regression.repeat(2, 1, 1), anchors, _targets() * 2)
    for key in ("loss_cls", "loss_box", "loss"):
        assert twice[key].item() == pytest.approx(one[key].item(), rel=1e-5)


def test_batch_without_any_box_gives_finite_losses_and_zero_box_loss() -> None:
    anchors = _grid_anchors()
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}] * 2
    logits = torch.randn(2, anchors.shape[0], 3, requires_grad=True)
    losses = MultiboxLoss(min_negatives=4)(logits, torch.zeros(2, anchors.shape[0], 4), anchors, empty)
    assert losses["loss_box"].item() == 0.0
    assert torch.isfinite(losses["loss"]) and losses["loss_cls"].item() > 0  # 4 hard negatives per image
    losses["loss"].backward()
    assert int((logits.grad.abs().sum(-1) > 0).sum()) == 8


def test_invalid_options_and_shapes_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="cls_loss"):
        MultiboxLoss(cls_loss="hinge")
    with pytest.raises(ValueError, match="box_loss"):
        MultiboxLoss(box_loss="l2")
    with pytest.raises(ValueError, match="bg_iou_threshold"):
        MultiboxLoss(iou_threshold=0.4, bg_iou_threshold=0.5)
    anchors = _grid_anchors()
    with pytest.raises(ValueError, match="box_regression"):
        MultiboxLoss()(torch.zeros(3, anchors.shape[0], 4), torch.zeros(3, 5, 4), anchors, _targets())
