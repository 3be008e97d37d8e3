"""Multibox loss of single-shot detectors: anchor targets, 3:1 hard-negative mining, focal loss, smooth-L1 / GIoU.

``MultiboxLoss`` turns head outputs, anchors and ground truth into ``{"loss_cls", "loss_box", "loss"}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from detkit.ops import BoxCoder, Matcher, box_iou, elementwise_generalized_box_iou

__all__ = ["CLS_LOSSES", "BOX_LOSSES", "MultiboxLoss", "assign_targets", "hard_negative_mask"]

CLS_LOSSES = ("ce", "focal")
BOX_LOSSES = ("smooth_l1", "giou")

#: class target of anchors between the background and foreground IoU thresholds (no classification loss)
IGNORE = -1


def assign_targets(
    anchors: Tensor,
    targets: Sequence[dict[str, Tensor]],
    iou_threshold: float = 0.5,
    bg_iou_threshold: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Match every anchor to a ground-truth box (or to background) for each image.

    An anchor is matched to its best ground truth when their IoU is ``>= iou_threshold``; moreover every
    ground truth takes its own best anchor whatever the IoU (as torchvision's ``SSDMatcher``: with only
    ``allow_low_quality_matches`` a box whose best anchor overlaps another box more would get no anchor).
    Anchors with best IoU in ``[bg_iou_threshold, iou_threshold)`` are ignored; below, background.

    Cost: one ``[K, A]`` IoU matrix per image (``4 * K * A`` bytes in float32).

    Args:
        anchors: ``Tensor[A, 4]`` anchors ``(x1, y1, x2, y2)`` in pixels.
        targets: one dict per image with ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` in the same pixels
            and ``labels`` ``Tensor[K]`` int64 in ``0..C-1``; ``K`` may be 0.
        iou_threshold: IoU at or above which an anchor is foreground.
        bg_iou_threshold: IoU below which an anchor is background (default: ``iou_threshold``, no ignored band).

    Returns:
        ``(class_targets, matched_boxes)``: ``Tensor[B, A]`` int64 with ``0`` for background, ``k + 1`` for
        class ``k`` and ``-1`` for ignored anchors; ``Tensor[B, A, 4]`` the matched ground-truth box of every
        anchor (the anchor itself where there is none), in the dtype of ``anchors``.
    """
    low = iou_threshold if bg_iou_threshold is None else bg_iou_threshold
    matcher = Matcher(iou_threshold, low, allow_low_quality_matches=False)
    class_targets, matched_boxes = [], []
    for target in targets:
        boxes = target["boxes"].to(anchors.dtype)
        labels = target["labels"]
        if boxes.shape[0] == 0:
            class_targets.append(torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device))
            matched_boxes.append(anchors)
            continue
        iou = box_iou(boxes, anchors)  # [K, A]
        matches = matcher(iou)  # [A] gt index, -1 below low, -2 between
        best_anchor = iou.argmax(dim=1)  # [K]
        matches[best_anchor] = torch.arange(boxes.shape[0], device=matches.device)
        index = matches.clamp(min=0)  # [A]
        cls = torch.where(matches >= 0, labels[index] + 1, 0)
        cls = cls.masked_fill(matches == Matcher.BETWEEN_THRESHOLDS, IGNORE)
        class_targets.append(cls)
        matched_boxes.append(torch.where((matches >= 0)[:, None], boxes[index], anchors))  # [A, 4]
    return torch.stack(class_targets), torch.stack(matched_boxes)


def hard_negative_mask(
    cls_loss: Tensor, class_targets: Tensor, neg_pos_ratio: float = 3.0, min_negatives: int = 0
) -> Tensor:
    """Select, per image, the background anchors with the largest classification loss.

    Image ``b`` keeps ``max(floor(neg_pos_ratio * P_b), min_negatives)`` negatives, ``P_b`` its number of
    positives (fewer when it has fewer background anchors); ties go to the lower anchor index.

    Args:
        cls_loss: ``Tensor[B, A]`` per-anchor classification loss (its gradient is not used).
        class_targets: ``Tensor[B, A]`` int64, ``0`` background, ``> 0`` positive, ``< 0`` ignored.
        neg_pos_ratio: negatives per positive (SSD: 3).
        min_negatives: negatives kept in an image with few or no positives (0: images without objects
            add no classification loss, as in the SSD paper and torchvision).

    Returns:
        ``Tensor[B, A]`` bool, True for the selected negatives (never a positive or ignored anchor).
    """
    if cls_loss.shape != class_targets.shape or cls_loss.dim() != 2:
        raise ValueError(
            f"cls_loss and class_targets must both have shape [B, A], got {list(cls_loss.shape)} "
            f"and {list(class_targets.shape)}"
        )
    if neg_pos_ratio < 0 or min_negatives < 0:
        raise ValueError(f"neg_pos_ratio and min_negatives must be >= 0, got {neg_pos_ratio} and {min_negatives}")
    background = class_targets == 0  # [B, A]
    num_pos = (class_targets > 0).sum(dim=1)  # [B]
    num_neg = torch.floor(num_pos * float(neg_pos_ratio)).long().clamp(min=int(min_negatives))  # [B]
    loss = cls_loss.detach().masked_fill(~background, float("-inf"))  # [B, A]
    order = loss.sort(dim=1, descending=True, stable=True).indices  # [B, A]
    rank = order.argsort(dim=1)  # [B, A] position of each anchor in the order
    return (rank < num_neg[:, None]) & background


class MultiboxLoss(nn.Module):
    """Classification + box-regression loss of an SSD-style detector, normalised by the number of positives.

    Classification: ``"ce"`` softmax cross-entropy over ``C + 1`` columns (column 0 background) on the
    positives and the hard negatives (:func:`hard_negative_mask`), or ``"focal"`` sigmoid focal loss over
    ``C`` columns (no background column) on every non-ignored anchor. Box regression on positives only:
    ``"smooth_l1"`` on :class:`~detkit.ops.BoxCoder` offsets (weights ``(10, 10, 5, 5)``), or ``"giou"``
    ``1 - GIoU`` of the decoded boxes. Both sums are divided by ``max(1, number of positives in the batch)``.

    Args:
        cls_loss: ``"ce"`` or ``"focal"``.
        box_loss: ``"smooth_l1"`` or ``"giou"``.
        neg_pos_ratio: hard negatives per positive (``"ce"`` only).
        min_negatives: hard negatives kept per image whatever its positives (``"ce"`` only).
        iou_threshold: foreground IoU of :func:`assign_targets`.
        bg_iou_threshold: background IoU of :func:`assign_targets` (None: same as ``iou_threshold``).
        focal_alpha: focal loss weight of positives (``"focal"`` only).
        focal_gamma: focal loss exponent (``"focal"`` only).
        smooth_l1_beta: transition point of the smooth-L1 loss, in offset units.
        box_weight: factor of the box loss in ``"loss"``.
        box_coder: the offset coder (default ``BoxCoder((10, 10, 5, 5))``).
    """

    def __init__(
        self,
        *,
        cls_loss: str = "ce",
        box_loss: str = "smooth_l1",
        neg_pos_ratio: float = 3.0,
        min_negatives: int = 0,
        iou_threshold: float = 0.5,
        bg_iou_threshold: float | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        smooth_l1_beta: float = 1.0,
        box_weight: float = 1.0,
        box_coder: BoxCoder | None = None,
    ) -> None:
        super().__init__()
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        low = iou_threshold if bg_iou_threshold is None else bg_iou_threshold
        if not 0.0 <= low <= iou_threshold <= 1.0:
            raise ValueError(
                f"need 0 <= bg_iou_threshold <= iou_threshold <= 1, got iou_threshold={iou_threshold}, "
                f"bg_iou_threshold={bg_iou_threshold}"
            )
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.min_negatives = int(min_negatives)
        self.iou_threshold = float(iou_threshold)
        self.bg_iou_threshold = bg_iou_threshold
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.box_weight = float(box_weight)
        self.box_coder = box_coder if box_coder is not None else BoxCoder((10.0, 10.0, 5.0, 5.0))

    @property
    def has_background_column(self) -> bool:
        """Whether the class logits carry a background column 0 (cross-entropy) or not (focal)."""
        return self.cls_loss == "ce"

    def num_columns(self, num_classes: int) -> int:
        """Class-logit columns a head needs for ``num_classes`` object classes: ``C + 1`` (ce) or ``C`` (focal)."""
        return num_classes + 1 if self.has_background_column else num_classes

    def forward(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        anchors: Tensor,
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Losses of one batch.

        Args:
            class_logits: ``Tensor[B, A, K]`` with ``K = num_columns(C)``.
            box_regression: ``Tensor[B, A, 4]`` offsets ``(dx, dy, dw, dh)`` per anchor.
            anchors: ``Tensor[A, 4]`` anchors ``(x1, y1, x2, y2)`` in pixels, shared by the batch.
            targets: one dict per image, ``boxes`` ``Tensor[K_i, 4]`` ``(x1, y1, x2, y2)`` pixels and
                ``labels`` ``Tensor[K_i]`` int64 in ``0..C-1``.

        Returns:
            ``{"loss_cls": Tensor[], "loss_box": Tensor[], "loss": loss_cls + box_weight * loss_box}``,
            float32 scalars.
        """
        num_images, num_anchors, num_cols = class_logits.shape
        if box_regression.shape != (num_images, num_anchors, 4) or anchors.shape != (num_anchors, 4):
            raise ValueError(
                f"expected class_logits [B, A, K], box_regression [B, A, 4] and anchors [A, 4], got "
                f"{list(class_logits.shape)}, {list(box_regression.shape)} and {list(anchors.shape)}"
            )
        if len(targets) != num_images:
            raise ValueError(f"targets must hold one dict per image ({num_images}), got {len(targets)}")
        # losses in float32 even under autocast: fp16 logits overflow in the sums
        class_logits, box_regression = class_logits.float(), box_regression.float()
        anchors = anchors.float()
        with torch.no_grad():
            class_targets, matched_boxes = assign_targets(anchors, targets, self.iou_threshold, self.bg_iou_threshold)
        positive = class_targets > 0  # [B, A]
        normaliser = positive.sum().clamp(min=1).float()

        if self.cls_loss == "ce":
            ce = F.cross_entropy(
                class_logits.reshape(-1, num_cols), class_targets.clamp(min=0).reshape(-1), reduction="none"
            ).view(num_images, num_anchors)  # [B, A]
            negative = hard_negative_mask(ce, class_targets, self.neg_pos_ratio, self.min_negatives)
            loss_cls = ce[positive | negative].sum() / normaliser
        else:
            valid = class_targets >= 0  # [B, A]
            one_hot = torch.zeros_like(class_logits)  # [B, A, C]
            one_hot[positive, class_targets[positive] - 1] = 1.0
            loss_cls = (
                sigmoid_focal_loss(
                    class_logits[valid], one_hot[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
                )
                / normaliser
            )

        pos_anchors = anchors.expand(num_images, -1, -1)[positive]  # [P, 4]
        pos_boxes = matched_boxes[positive]  # [P, 4]
        pos_regression = box_regression[positive]  # [P, 4]
        if self.box_loss == "smooth_l1":
            offsets = self.box_coder.encode(pos_anchors, pos_boxes)  # [P, 4]
            loss_box = F.smooth_l1_loss(pos_regression, offsets, beta=self.smooth_l1_beta, reduction="sum")
        else:
            predicted = self.box_coder.decode(pos_anchors, pos_regression)  # [P, 4]
            loss_box = (1.0 - elementwise_generalized_box_iou(predicted, pos_boxes, eps=1e-7)).sum()
        loss_box = loss_box / normaliser
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss": loss_cls + self.box_weight * loss_box}

    def extra_repr(self) -> str:
        return (
            f"cls_loss={self.cls_loss!r}, box_loss={self.box_loss!r}, neg_pos_ratio={self.neg_pos_ratio}, "
            f"iou_threshold={self.iou_threshold}, bg_iou_threshold={self.bg_iou_threshold}"
        )
