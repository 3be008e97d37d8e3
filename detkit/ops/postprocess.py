"""Detection post-processing: decode anchor offsets, select by score and suppress overlaps.

``multibox_detection`` has the textbook's semantics; ``postprocess_detections`` is the production path (SSD's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.ops._checks import check_boxes, check_number, check_same_device, check_tensor
from detkit.ops.coder import BoxCoder
from detkit.ops.nms import batched_nms

__all__ = ["multibox_detection", "postprocess_detections"]


def _anchors_2d(anchors: object) -> Tensor:
    """``Tensor[A, 4]`` from ``Tensor[A, 4]`` or ``Tensor[1, A, 4]``."""
    anchors = check_tensor("anchors", anchors)
    if anchors.dim() == 3 and anchors.shape[0] == 1:
        anchors = anchors[0]
    if anchors.dim() != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"anchors must have shape [A, 4] or [1, A, 4], got {list(anchors.shape)}")
    return check_boxes("anchors", anchors)


def _order_kept_first(keep: Tensor, num_images: int, num_anchors: int) -> tuple[Tensor, Tensor]:
    """Per-image row order: kept rows by their position in ``keep``, then the others by index.

    Args:
        keep: ``Tensor[K]`` flat indices into ``num_images * num_anchors`` rows, best first.

    Returns:
        ``(order, kept)``: ``Tensor[B, A]`` row indices per image and ``Tensor[B * A]`` bool.
    """
    device = keep.device
    key = torch.arange(num_anchors, device=device).repeat(num_images) + keep.shape[0]  # [B * A]
    key[keep] = torch.arange(keep.shape[0], device=device)
    kept = torch.zeros(num_images * num_anchors, dtype=torch.bool, device=device)
    kept[keep] = True
    return key.view(num_images, num_anchors).argsort(dim=1), kept


def multibox_detection(
    cls_probs: Tensor,
    offset_preds: Tensor,
    anchors: Tensor,
    nms_threshold: float = 0.5,
    pos_threshold: float = 0.009999999,
) -> Tensor:
    """Predicted boxes from anchors, the textbook's way (*Dive into Deep Learning*, anchor boxes).

    For every anchor: the class is the most likely non-background class and its probability the
    confidence; the box is the anchor moved by its offsets (``BoxCoder`` weights ``(10, 10, 5, 5)``,
    no clamping, as the textbook's ``offset_inverse``). Non-maximum suppression is class-agnostic,
    per image. Suppressed rows get class ``-1``; rows with confidence below ``pos_threshold`` get
    class ``-1`` and confidence ``1 - conf`` (the background's). All images are processed together.

    Args:
        cls_probs: ``Tensor[B, C + 1, A]`` class probabilities, row 0 the background.
        offset_preds: ``Tensor[B, A * 4]`` offsets ``(dx, dy, dw, dh)`` per anchor.
        anchors: ``Tensor[1, A, 4]`` or ``Tensor[A, 4]`` anchors ``(x1, y1, x2, y2)`` (normalised
            or pixels; the output boxes are in the same units).
        nms_threshold: boxes with ``IoU > nms_threshold`` with a kept box are suppressed.
        pos_threshold: confidence below which a prediction counts as background.

    Returns:
        ``Tensor[B, A, 6]`` rows ``[class, conf, x1, y1, x2, y2]``; per image the kept rows come first
        by decreasing confidence (ties: lower anchor index), then the suppressed rows by anchor index.
    """
    cls_probs = check_tensor("cls_probs", cls_probs)
    if cls_probs.dim() != 3 or cls_probs.shape[1] < 2:
        raise ValueError(f"cls_probs must have shape [B, C + 1, A] with C >= 1, got {list(cls_probs.shape)}")
    num_images, _, num_anchors = cls_probs.shape
    anchors = _anchors_2d(anchors)
    if anchors.shape[0] != num_anchors:
        raise ValueError(
            f"anchors must hold A = {num_anchors} anchors to match cls_probs of shape "
            f"{list(cls_probs.shape)}, got {list(anchors.shape)}"
        )
    offset_preds = check_tensor("offset_preds", offset_preds)
    if offset_preds.shape != (num_images, num_anchors * 4):
        raise ValueError(
            f"offset_preds must have shape [B, A * 4] = {[num_images, num_anchors * 4]}, got {list(offset_preds.shape)}"
        )
    check_same_device(cls_probs=cls_probs, offset_preds=offset_preds, anchors=anchors)
    nms_threshold = check_number("nms_threshold", nms_threshold)
    pos_threshold = check_number("pos_threshold", pos_threshold)

    conf, class_id = cls_probs[:, 1:].max(dim=1)  # [B, A] each
    boxes = BoxCoder(bbox_xform_clip=math.inf).decode(anchors, offset_preds.reshape(num_images, num_anchors, 4))
    image = torch.arange(num_images, device=cls_probs.device).repeat_interleave(num_anchors)  # [B * A]
    keep = batched_nms(boxes.reshape(-1, 4), conf.reshape(-1), image, nms_threshold)
    order, kept = _order_kept_first(keep, num_images, num_anchors)  # [B, A], [B * A]

    class_id = class_id.masked_fill(~kept.view(num_images, num_anchors), -1)
    class_id, conf = class_id.gather(1, order), conf.gather(1, order)  # [B, A]
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))  # [B, A, 4]
    background = conf < pos_threshold
    class_id = class_id.masked_fill(background, -1)
    conf = torch.where(background, 1 - conf, conf)
    dtype = torch.promote_types(conf.dtype, boxes.dtype)
    return torch.cat((class_id[..., None].to(dtype), conf[..., None].to(dtype), boxes.to(dtype)), dim=-1)


def _check_logits(class_logits: object, box_regression: object, anchors: object) -> tuple[Tensor, Tensor, Tensor]:
    class_logits = check_tensor("class_logits", class_logits)
    if class_logits.dim() != 3 or not class_logits.is_floating_point():
        raise ValueError(
            f"class_logits must be a floating Tensor[B, A, C], got {class_logits.dtype} of shape {list(class_logits.shape)}"
        )
    num_images, num_anchors, _ = class_logits.shape
    box_regression = check_tensor("box_regression", box_regression)
    if box_regression.shape != (num_images, num_anchors, 4):
        raise ValueError(
            f"box_regression must have shape [B, A, 4] = {[num_images, num_anchors, 4]} to match class_logits, "
            f"got {list(box_regression.shape)}"
        )
    anchors = check_tensor("anchors", anchors)
    if anchors.shape not in ((num_anchors, 4), (num_images, num_anchors, 4)):
        raise ValueError(
            f"anchors must have shape [A, 4] or [B, A, 4] with B = {num_images}, A = {num_anchors}, "
            f"got {list(anchors.shape)}"
        )
    check_same_device(class_logits=class_logits, box_regression=box_regression, anchors=anchors)
    return class_logits, box_regression, anchors


def _clip_to_sizes(boxes: Tensor, image_sizes: Sequence[Sequence[int]]) -> Tensor:
    """Clip ``Tensor[B, A, 4]`` boxes to per-image ``(height, width)``, as ``clip_boxes_to_image`` does."""
    if len(image_sizes) != boxes.shape[0]:
        raise ValueError(f"image_sizes must hold one (height, width) per image ({boxes.shape[0]}), got {len(image_sizes)}")
    try:
        sizes = torch.tensor([[float(h), float(w)] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)
    except (TypeError, ValueError):
        raise ValueError(f"image_sizes must be a list of (height, width) pairs, got {image_sizes!r}") from None
    height, width = sizes[:, 0, None, None], sizes[:, 1, None, None]  # [B, 1, 1]
    x = boxes[..., 0::2].clamp(min=0).minimum(width)  # [B, A, 2]
    y = boxes[..., 1::2].clamp(min=0).minimum(height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def _rank_in_group(groups: Tensor) -> Tensor:
    """Position of each element within its run of equal values in the sorted ``Tensor[P]`` ``groups``."""
    _, counts = torch.unique_consecutive(groups, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(groups.shape[0], device=groups.device) - starts.repeat_interleave(counts)


def postprocess_detections(
    class_logits: Tensor,
    box_regression: Tensor,
    anchors: Tensor,
    image_sizes: Sequence[Sequence[int]] | None = None,
    *,
    box_coder: BoxCoder | None = None,
    score_thresh: float | Tensor = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    activation: str = "softmax",
    background_class: int | None = 0,
) -> list[dict[str, Tensor]]:
    """Detections from head outputs, torchvision SSD's post-processing, all images and classes at once.

    Per image: scores are ``softmax`` (or ``sigmoid``) of the logits, boxes are decoded from the
    anchors and clipped to the image; per class (the background column excluded) boxes scoring
    ``> score_thresh`` are kept and the ``topk_candidates`` best of them go on (top-k *per image and
    class*, as SSD's head; equal scores at the k-th place are picked by ``torch.topk``, as SSD's);
    class-aware NMS (:func:`batched_nms` over (image, class) groups) removes overlaps; the
    ``detections_per_img`` best detections remain (equal scores: lower class, then lower anchor).

    Args:
        class_logits: ``Tensor[B, A, C]`` classification logits.
        box_regression: ``Tensor[B, A, 4]`` offsets ``(dx, dy, dw, dh)`` per anchor.
        anchors: ``Tensor[A, 4]`` (shared) or ``Tensor[B, A, 4]`` anchors, pixel ``(x1, y1, x2, y2)``.
        image_sizes: ``(height, width)`` of each image to clip boxes to, or ``None`` (no clipping).
        box_coder: decodes offsets (``.decode(anchors, offsets)``); default ``BoxCoder()`` with
            weights ``(10, 10, 5, 5)``.
        score_thresh: a float, or ``Tensor[C]`` one threshold per class column.
        topk_candidates: candidates kept per image and class before NMS.
        nms_thresh: IoU above which a lower-scoring box of the same class is suppressed.
        detections_per_img: detections kept per image after NMS.
        activation: ``"softmax"`` (over the ``C`` columns) or ``"sigmoid"`` (each column alone).
        background_class: column excluded from the outputs, or ``None`` to keep every column.

    Returns:
        One dict per image: ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)``, ``scores`` ``Tensor[K]``
        (decreasing), ``labels`` ``Tensor[K]`` int64 class columns of ``class_logits``.
    """
    class_logits, box_regression, anchors = _check_logits(class_logits, box_regression, anchors)
    num_images, num_anchors, num_classes = class_logits.shape
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    if background_class is not None and not 0 <= background_class < num_classes:
        raise ValueError(f"background_class must be None or in [0, {num_classes}), got {background_class}")
    if isinstance(topk_candidates, bool) or not isinstance(topk_candidates, int) or topk_candidates < 1:
        raise ValueError(f"topk_candidates must be a positive int, got {topk_candidates!r}")
    if isinstance(detections_per_img, bool) or not isinstance(detections_per_img, int) or detections_per_img < 0:
        raise ValueError(f"detections_per_img must be a non-negative int, got {detections_per_img!r}")
    nms_thresh = check_number("nms_thresh", nms_thresh)
    if isinstance(score_thresh, Tensor):
        if score_thresh.shape != (num_classes,):
            raise ValueError(f"score_thresh must be a float or Tensor[C] with C = {num_classes}, got {list(score_thresh.shape)}")
        threshold = score_thresh.to(class_logits)  # [C]
    else:
        threshold = check_number("score_thresh", score_thresh)
    if box_coder is None:
        box_coder = BoxCoder()

    scores = class_logits.softmax(-1) if activation == "softmax" else class_logits.sigmoid()  # [B, A, C]
    boxes = box_coder.decode(anchors, box_regression)  # [B, A, 4]
    if image_sizes is not None:
        boxes = _clip_to_sizes(boxes, image_sizes)

    labels = torch.arange(num_classes, device=scores.device)
    if background_class is not None:
        labels = labels[labels != background_class]  # [C'] the class columns that can be detected
    per_class = scores.index_select(2, labels).transpose(1, 2)  # [B, C', A]
    if isinstance(threshold, Tensor):
        threshold = threshold.index_select(0, labels)[None, :, None]  # [1, C', 1]
    candidate = per_class > threshold  # [B, C', A]

    # top-k candidates per (image, class), then ordered by decreasing score, ties by lower anchor
    top, anchor = per_class.masked_fill(~candidate, -math.inf).topk(min(topk_candidates, num_anchors), dim=-1)
    anchor, order = anchor.sort(dim=-1)
    top, order = top.gather(-1, order).sort(dim=-1, descending=True, stable=True)
    anchor = anchor.gather(-1, order)  # [B, C', k]
    image, column, rank = candidate.gather(-1, anchor).nonzero(as_tuple=True)  # (image, class, rank) order
    anchor, score, label = anchor[image, column, rank], top[image, column, rank], labels[column]  # [P] each
    group = image * num_classes + label

    keep = batched_nms(boxes[image, anchor], score, group, nms_thresh)  # by decreasing score
    keep = keep[image[keep].sort(stable=True)[1]]  # per image, still by decreasing score
    keep = keep[_rank_in_group(image[keep]) < detections_per_img]
    counts = torch.bincount(image[keep], minlength=num_images).tolist()
    parts = zip(
        boxes[image[keep], anchor[keep]].split(counts),
        score[keep].split(counts),
        label[keep].split(counts),
    )
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in parts]
