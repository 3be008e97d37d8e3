"""Matching anchors to ground truth: the textbook's greedy ``assign_anchors``, torchvision's ``Matcher``.

``multibox_target`` turns the matches of a padded batch into the textbook's offsets, masks and class labels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detkit.ops._checks import check_boxes, check_number, check_same_device, check_tensor
from detkit.ops.boxes import _block_rows, _inter_union, _iou_rows_into
from detkit.ops.coder import BoxCoder

__all__ = ["Matcher", "assign_anchors", "multibox_target"]

# IoU given to taken anchors and padding ground truths: below every real IoU (which is >= 0)
_TAKEN = -1.0
# chunk length of the two-level arg-max (an amax over chunks is vectorised, arg-max is not)
_ARGMAX_CHUNK = 64


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _needs_sanitising(area: Tensor) -> bool:
    """Whether some box has a non-positive or non-finite area (its IoUs can be NaN or outside [0, 1])."""
    return not bool(((area > 0) & torch.isfinite(area)).all())


def _first_max(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``rows.max(dim=1)`` (value and first index of the maximum) of ``Tensor[r, A]``, faster on CPU.

    Takes the maximum of every chunk of 64 (vectorised), the first chunk that reaches the row
    maximum, then the first index inside that chunk: the same answer as ``max(dim=1)``. Rows whose
    width is a multiple of 64 (see :class:`_IouRows`) need no separate tail.
    """
    num_rows, width = rows.shape
    main = width - width % _ARGMAX_CHUNK
    if main == 0:
        return rows.max(dim=1)
    chunks = rows[:, :main].unflatten(1, (main // _ARGMAX_CHUNK, _ARGMAX_CHUNK))  # [r, A // 64, 64]
    value, chunk = chunks.amax(dim=2).max(dim=1)  # [r], first chunk holding the maximum
    inside = chunks.gather(1, chunk[:, None, None].expand(-1, 1, _ARGMAX_CHUNK))  # [r, 1, 64]
    index = inside.argmax(dim=2).squeeze(1).add_(chunk * _ARGMAX_CHUNK)
    if main < width:
        tail_value, tail_index = rows[:, main:].max(dim=1)
        later = tail_value > value  # ties keep the earlier index
        value = torch.where(later, tail_value, value)
        index = torch.where(later, tail_index + main, index)
    return value, index


class _IouRows:
    """IoU rows of chosen ground truths against all anchors, computed a block at a time in place.

    Every IoU in this module comes from here or from :func:`_iou_pairs`, which use the same
    operations in the same order as ``box_iou`` (and the textbook), so values agree bit for bit.
    The result buffer is padded with -inf to a multiple of 64 columns for :func:`_first_max`.
    """

    def __init__(self, anchors: Tensor, sanitise: bool, max_rows: int) -> None:
        self.anchors = tuple(anchors.t().contiguous().unbind(0))  # four [A]
        self.area = _area(anchors)  # [A]
        self.sanitise = sanitise
        self.max_rows = max(1, min(max_rows, _block_rows(anchors.shape[0], anchors.device)))
        self._buffers: tuple[Tensor, Tensor] | None = None  # allocated on first use

    def block(self, gt: Tensor) -> tuple[Tensor, Tensor]:
        """IoU of ``gt`` (``Tensor[r, 4]``, ``r <= max_rows``) with every anchor, overwritten by the next call.

        Returns ``(iou, padded)``: ``Tensor[r, A]`` and the same memory as ``Tensor[r, A padded]``.
        """
        num_anchors = self.area.shape[0]
        if self._buffers is None:
            padded_width = -(-num_anchors // _ARGMAX_CHUNK) * _ARGMAX_CHUNK
            result = self.area.new_full((self.max_rows, padded_width), float("-inf"))  # [rows, A padded]
            self._buffers = (result, self.area.new_empty((2, self.max_rows, num_anchors)))
        result, scratch = self._buffers
        num_rows = gt.shape[0]
        padded = result[:num_rows]
        cols = tuple(c[:, None] for c in gt.unbind(1))  # four [r, 1]
        iou = _iou_rows_into(padded[:, :num_anchors], scratch[:, :num_rows], cols,  # type: ignore[arg-type]
                             _area(gt)[:, None], self.anchors, self.area)
        if self.sanitise:
            torch.nan_to_num_(iou, nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0, max=1.0)
        return iou, padded


def _iou_pairs(gt: Tensor, anchors: Tensor, sanitise: bool) -> Tensor:
    """IoU of ``gt`` ``Tensor[..., 4]`` with ``anchors`` ``Tensor[..., 4]`` (broadcast), same arithmetic."""
    inter, union = _inter_union(gt.unbind(-1), anchors.unbind(-1))  # type: ignore[arg-type]
    iou = inter / union
    if sanitise:
        torch.nan_to_num_(iou, nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0, max=1.0)
    return iou


def _scan(
    flat_gt: Tensor, flat_valid: Tensor, num_images: int, anchors: Tensor, iou_threshold: float, sanitise: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One pass over every (valid gt, anchor) pair, in blocks, without storing the IoU matrix.

    Anchors are sorted by x1 and ground truths by x1, so a block of ground truths meets a window of
    consecutive sorted anchors: the anchors before it end (running max of x2) at or before the
    block's smallest x1, those after it start after its largest x2, so their IoU is exactly 0 and
    they are skipped (with boxes of non-positive area the window is all anchors). The window's
    anchors are taken back in their original order, so ties resolve to the smallest index.

    Args:
        flat_gt: ``Tensor[R, 4]`` ground truths, row ``g * B + b`` for gt ``g`` of image ``b``.
        flat_valid: ``Tensor[R]`` bool, False for padding rows (left out).
        num_images: ``B``.
        anchors: ``Tensor[A, 4]``.
        iou_threshold: the threshold of the second phase.
        sanitise: whether IoUs must be made well defined (NaN -> 0, clamped to [0, 1]).

    Returns:
        ``(col_val, col_arg, candidate)``: per row its best IoU (``Tensor[R]``, -1 for padding)
        and the first anchor reaching it (``Tensor[R]`` int64, 0 when the best IoU is 0: all
        anchors tie), and ``Tensor[B, A]`` bool, anchors with an IoU ``>= iou_threshold`` with a
        ground truth of their image.
    """
    num_rows, num_anchors, device = flat_gt.shape[0], anchors.shape[0], anchors.device
    col_val = flat_gt.new_full((num_rows,), _TAKEN)
    col_arg = torch.zeros(num_rows, dtype=torch.int64, device=device)
    candidate = torch.zeros((num_images, num_anchors), dtype=torch.bool, device=device)
    rows = torch.nonzero(flat_valid).squeeze(1)  # [n] valid rows
    if iou_threshold <= 0:  # every anchor of an image with a ground truth qualifies, IoU 0 included
        candidate[torch.unique(rows % num_images)] = True
    block = max(1, min(rows.numel(), _block_rows(num_anchors, device) * 4))
    starts = list(range(0, rows.numel(), block))
    if sanitise:
        rank = None
        windows = [(0, num_anchors)] * len(starts)
    else:
        order = torch.argsort(anchors[:, 0], stable=True)  # [A] anchors by x1
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(num_anchors, device=device))
        rows = rows[torch.argsort(flat_gt[rows, 0], stable=True)]  # ground truths by x1
        gx1, gx2 = flat_gt[rows, 0], flat_gt[rows, 2]  # [n], gx1 ascending
        pad = len(starts) * block - rows.numel()
        block_x2 = torch.cat((gx2, gx2.new_full((pad,), float("-inf")))).view(len(starts), block).amax(dim=1)
        reach = torch.cummax(anchors[order, 2], dim=0).values  # sorted anchors before i all end by reach[i - 1]
        lo = torch.searchsorted(reach, gx1[::block].contiguous(), right=True)
        hi = torch.searchsorted(anchors[order, 0].contiguous(), block_x2, right=True)
        windows = list(zip(lo.tolist(), hi.tolist()))  # one host sync for all blocks

    image_of_row = rows % num_images  # [n]
    buffer = anchors.new_empty((3, block * (num_anchors + _ARGMAX_CHUNK)))
    for start, (lo_k, hi_k) in zip(starts, windows):
        idx = rows[start : start + block]  # [r] flat rows of this block
        count = idx.numel()
        if hi_k <= lo_k:  # no anchor overlaps: every IoU is 0 and the first anchor wins
            col_val[idx] = 0.0
            continue
        # the window's anchors in their original order, so that first-index ties match the textbook
        if rank is None:
            members = torch.arange(num_anchors, device=device)
        else:
            members = torch.nonzero((rank >= lo_k) & (rank < hi_k)).squeeze(1)  # [W] ascending
        width = members.numel()
        padded_width = -(-width // _ARGMAX_CHUNK) * _ARGMAX_CHUNK
        padded = buffer[0, : count * padded_width].view(count, padded_width)
        padded[:, width:] = float("-inf")
        scratch = buffer[1:, : count * width].view(2, count, width)
        g, a = flat_gt[idx], anchors[members]  # [r, 4], [W, 4]
        g_cols = tuple(c[:, None] for c in g.unbind(1))  # four [r, 1]
        a_rows = tuple(a.t().contiguous().unbind(0))  # four [W]
        iou = _iou_rows_into(
            padded[:, :width], scratch, g_cols, _area(g)[:, None], a_rows, _area(a)  # type: ignore[arg-type]
        )
        if sanitise:
            torch.nan_to_num_(iou, nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0, max=1.0)
        best, first = _first_max(padded)  # [r], [r] position in the window
        col_val[idx] = best
        col_arg[idx] = torch.where(best > 0, members[first], 0)  # a best of 0: all anchors tie, the first wins
        # anchors reaching the threshold with some row of the block, then which rows (few)
        hit = torch.nonzero(iou.amax(dim=0) >= iou_threshold).squeeze(1)  # [h] window positions
        if hit.numel():
            hit_row, hit_col = torch.nonzero(iou[:, hit] >= iou_threshold, as_tuple=True)
            candidate[image_of_row[start : start + block][hit_row], members[hit[hit_col]]] = True
    return col_val, col_arg, candidate


def _assign_batched(gt: Tensor, valid: Tensor, anchors: Tensor, iou_threshold: float) -> Tensor:
    """The textbook's assignment for a padded batch, without materialising the IoU matrix.

    Args:
        gt: ``Tensor[G, B, 4]`` ground-truth boxes ``(x1, y1, x2, y2)`` of each image.
        valid: ``Tensor[G, B]`` bool, False for padding rows.
        anchors: ``Tensor[A, 4]`` anchors ``(x1, y1, x2, y2)``, shared by the images.
        iou_threshold: IoU at which an anchor not claimed greedily takes its best ground truth.

    Returns:
        ``Tensor[B, A]`` int64 ground-truth index per anchor, -1 for none.
    """
    num_gt, num_images, _ = gt.shape
    num_anchors = anchors.shape[0]
    matches = torch.full((num_images, num_anchors), -1, dtype=torch.int64, device=anchors.device)
    if num_gt == 0 or num_anchors == 0 or num_images == 0 or not bool(valid.any()):
        return matches
    # IoUs that involve boxes with non-positive area are NaN (0/0) or outside [0, 1]: make them
    # well defined; valid boxes skip this pass and keep their values bit for bit
    sanitise = _needs_sanitising(_area(gt)[valid]) or _needs_sanitising(_area(anchors))
    flat_gt, flat_valid = gt.reshape(-1, 4), valid.reshape(-1)  # [G * B, 4], [G * B], gt-major
    col_val, col_arg, candidate = _scan(flat_gt, flat_valid, num_images, anchors, iou_threshold, sanitise)

    # threshold phase: anchors whose best IoU reaches the threshold take that gt, the first among
    # equal IoUs (the textbook's max over dim 1); only those anchors need the index
    images, cand = torch.nonzero(candidate, as_tuple=True)  # [K], [K]
    step = max(1, (1 << 18) // num_gt)  # [G, step] IoU temporaries of about 1 MiB each
    for i in range(0, images.numel(), step):
        img, anc = images[i : i + step], cand[i : i + step]
        iou = _iou_pairs(gt[:, img], anchors[anc], sanitise)  # [G, k]
        iou = torch.where(valid[:, img], iou, _TAKEN)
        best, best_gt = iou.max(dim=0)
        matches[img, anc] = torch.where(best >= iou_threshold, best_gt, -1)

    rows = _IouRows(anchors, sanitise, max_rows=num_gt * num_images)
    _greedy_claims(
        gt, col_val.view(num_gt, num_images), col_arg.view(num_gt, num_images), valid.clone(), matches, rows
    )
    return matches


def _greedy_claims(
    gt: Tensor, col_val: Tensor, col_arg: Tensor, alive: Tensor, matches: Tensor, rows: _IouRows
) -> None:
    """Let every ground truth claim one anchor, greedily by the largest remaining IoU, in place.

    Exactly the textbook's loop (``argmax`` over the whole ``[A, G]`` matrix, then that anchor and
    that ground truth leave), including its tie-breaking: among equal IoUs the smallest anchor index
    wins, then the smallest ground-truth index (the first maximum in row-major ``[A, G]`` order).
    Instead of scanning the matrix at every step it keeps, per ground truth, the best remaining
    anchor, and recomputes the IoU row of a ground truth only when its best anchor is taken.

    Args:
        gt: ``Tensor[G, B, 4]`` ground-truth boxes.
        col_val: ``Tensor[G, B]`` best remaining IoU per ground truth (updated in place).
        col_arg: ``Tensor[G, B]`` int64 first anchor reaching it (updated in place).
        alive: ``Tensor[G, B]`` bool, ground truths still to claim an anchor (updated in place).
        matches: ``Tensor[B, A]`` int64 ground-truth index per anchor (updated in place).
        rows: the IoU row generator for the anchors.
    """
    num_gt, num_images = col_val.shape
    num_anchors = matches.shape[1]
    device = matches.device
    taken = torch.zeros(matches.shape, dtype=torch.bool, device=device)  # [B, A]
    gt_index = torch.arange(num_gt, device=device)[:, None]  # [G, 1]
    all_images = torch.arange(num_images, device=device)  # [B]
    # row-major order of the textbook's [A, G] matrix: smallest anchor, then smallest gt
    key = col_arg * num_gt + gt_index  # [G, B]
    no_key = num_anchors * num_gt  # larger than every key
    neg_inf = torch.tensor(float("-inf"), dtype=col_val.dtype, device=device)
    for _ in range(min(num_gt, num_anchors)):
        vals = torch.where(alive, col_val, neg_inf)  # [G, B]
        best = vals.max(dim=0).values  # [B]
        active = best >= 0  # [B] images with a claim left
        num_active = int(active.sum())
        if num_active == 0:
            break
        if num_active == num_images:
            images, arg, step_key = all_images, col_arg, key
        else:
            images = torch.nonzero(active).squeeze(1)  # [K]
            vals, best, arg, step_key = vals[:, images], best[images], col_arg[:, images], key[:, images]
        claim = torch.where(vals == best, step_key, no_key).argmin(dim=0)  # [K] gt index
        anchor = arg.gather(0, claim[None, :]).squeeze(0)  # [K]
        matches[images, anchor] = claim
        alive[claim, images] = False
        taken[images, anchor] = True
        # ground truths whose best remaining anchor was just taken look again
        gts, cols = torch.nonzero(alive[:, images] & (arg == anchor), as_tuple=True)
        for i in range(0, gts.numel(), rows.max_rows):
            g, img = gts[i : i + rows.max_rows], images[cols[i : i + rows.max_rows]]
            iou, padded = rows.block(gt[g, img])  # [s, A]
            iou.masked_fill_(taken[img], _TAKEN)
            col_val[g, img], col_arg[g, img] = _first_max(padded)
            key[g, img] = col_arg[g, img] * num_gt + g


def assign_anchors(gt_boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Assign the closest ground-truth box to anchors (the textbook's ``assign_anchor_to_bbox``).

    First every ground truth claims one anchor, greedily by the largest remaining IoU in the whole
    matrix (that anchor and that ground truth then leave; ties go to the smallest anchor index, then
    the smallest ground-truth index); every other anchor takes its best ground truth (the first one
    among ties) when that IoU is at least ``iou_threshold``. Results equal the textbook's loop for
    ``G <= A``; for ``G > A`` the greedy phase stops once every anchor is taken (the textbook's
    surplus iterations would re-assign anchor 0 to ground truth 0). Boxes must have positive area:
    IoUs that involve a box with zero or negative area are clamped to ``[0, 1]``, NaN counting as 0.

    Cost: the ``[G, A]`` IoU matrix is never stored. One pass computes it a block at a time (about
    2**20 entries: three 4 MiB buffers in float32), ground truths and anchors both sorted by x1 so
    that each block only meets the window of anchors that can overlap it in x (the others have IoU
    exactly 0), keeping each ground truth's best anchor and the anchors that reach the threshold.
    Memory besides is O(A + G): under 20 MB for 400,000 x 500, where one float32 matrix is 800 MB.
    Time: O(G * W) for that pass (W the window, at most A); the threshold phase recomputes the IoUs
    of only the anchors that reach the threshold; then at most ``min(G, A)`` greedy steps of O(G),
    each recomputing one IoU row (O(A)) per ground truth whose best anchor was just taken (rare).

    Args:
        gt_boxes: ``Tensor[G, 4]`` ground-truth boxes ``(x1, y1, x2, y2)``.
        anchors: ``Tensor[A, 4]`` anchors ``(x1, y1, x2, y2)`` in the same units (normalised or
            pixels).
        iou_threshold: IoU at which an anchor not claimed greedily takes its best ground truth.

    Returns:
        ``Tensor[A]`` int64 index into ``gt_boxes`` per anchor, -1 for unassigned.
    """
    gt_boxes = check_boxes("gt_boxes", gt_boxes)
    anchors = check_boxes("anchors", anchors)
    check_same_device(gt_boxes=gt_boxes, anchors=anchors)
    iou_threshold = check_number("iou_threshold", iou_threshold, 0.0, 1.0)
    dtype = torch.promote_types(torch.promote_types(gt_boxes.dtype, anchors.dtype), torch.float32)
    with torch.no_grad():
        valid = torch.ones((gt_boxes.shape[0], 1), dtype=torch.bool, device=gt_boxes.device)
        return _assign_batched(gt_boxes.to(dtype)[:, None, :], valid, anchors.to(dtype), iou_threshold)[0]


class Matcher:
    """Assign each prediction the ground truth it overlaps best, with torchvision's three levels.

    ``__call__`` takes a ``[G, A]`` quality matrix (usually IoU of ground truths x anchors) and
    returns per anchor the index of its best ground truth (the first one among ties) when that
    quality is ``>= high_threshold``, ``BETWEEN_THRESHOLDS`` (-2) when it is in
    ``[low_threshold, high_threshold)`` and ``BELOW_LOW_THRESHOLD`` (-1) below ``low_threshold``.
    With ``allow_low_quality_matches`` every anchor that attains the highest quality of some
    ground truth (ties included) keeps its best match whatever its quality. The same results as
    ``torchvision.models.detection._utils.Matcher``, except that an empty matrix gives an empty or
    all -1 result instead of an error.

    Args:
        high_threshold: quality at or above which a match is kept.
        low_threshold: quality below which an anchor is ``BELOW_LOW_THRESHOLD``.
        allow_low_quality_matches: keep every ground truth's best anchors matched.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False) -> None:
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold must be <= high_threshold, got low_threshold={low_threshold} "
                f"and high_threshold={high_threshold}"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Match anchors to ground truths.

        Args:
            match_quality_matrix: ``Tensor[G, A]`` quality of every (ground truth, anchor) pair.

        Returns:
            ``Tensor[A]`` int64: a ground-truth index in ``[0, G)``, -1 or -2. ``G == 0`` gives all
            -1 (every anchor is background).
        """
        quality = check_tensor("match_quality_matrix", match_quality_matrix)
        if quality.dim() != 2:
            raise ValueError(f"match_quality_matrix must have shape [G, A], got {list(quality.shape)}")
        num_gt, num_anchors = quality.shape
        if num_gt == 0 or num_anchors == 0:
            return torch.full((num_anchors,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device)
        best_val, best_gt = quality.max(dim=0)  # [A]
        matches = best_gt.masked_fill(best_val < self.low_threshold, self.BELOW_LOW_THRESHOLD)
        between = (best_val >= self.low_threshold) & (best_val < self.high_threshold)
        matches = matches.masked_fill(between, self.BETWEEN_THRESHOLDS)
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=1, keepdim=True).values  # [G, 1]
            is_best_of_some_gt = (quality == best_per_gt).any(dim=0)  # [A]
            matches = torch.where(is_best_of_some_gt, best_gt, matches)
        return matches


def multibox_target(anchors: Tensor, labels: Tensor, iou_threshold: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Training targets for anchors, batched (the textbook's ``multibox_target``).

    Anchors are assigned with :func:`assign_anchors` semantics per image (all images at once);
    rows of ``labels`` whose class is negative (-1) are padding and are removed before matching.
    Offsets are :class:`BoxCoder` ``(10, 10, 5, 5)`` encodings -- the textbook's ``offset_boxes``
    without its ``1e-6`` inside the log (a difference below ``5e-6 * wa / w``).

    Cost: as :func:`assign_anchors` for all images at once (the IoU matrix is never stored; the
    greedy phase runs at most ``G`` steps for the whole batch), plus the ``[B, A * 4]`` outputs.

    Args:
        anchors: ``Tensor[A, 4]`` or ``Tensor[1, A, 4]`` anchors ``(x1, y1, x2, y2)``, normalised or
            pixels (the same units as ``labels``).
        labels: ``Tensor[B, G, 5]`` rows ``[class, x1, y1, x2, y2]``; class -1 marks padding.
        iou_threshold: as in :func:`assign_anchors`.

    Returns:
        ``(offsets, mask, class_labels)``: ``offsets`` ``Tensor[B, A * 4]`` (zero for unassigned
        anchors), ``mask`` ``Tensor[B, A * 4]`` 1.0 for the four coordinates of assigned anchors
        else 0.0, both float32 (float64 for float64 input); ``class_labels`` ``Tensor[B, A]`` int64,
        0 for background and ``k + 1`` for class ``k``.
    """
    anchors = check_tensor("anchors", anchors)
    if anchors.dim() == 3 and anchors.shape[0] == 1:
        anchors = anchors[0]
    anchors = check_boxes("anchors", anchors)
    labels = check_tensor("labels", labels)
    if labels.dim() != 3 or labels.shape[-1] != 5:
        raise ValueError(f"labels must have shape [B, G, 5] (class, x1, y1, x2, y2), got {list(labels.shape)}")
    check_same_device(anchors=anchors, labels=labels)
    iou_threshold = check_number("iou_threshold", iou_threshold, 0.0, 1.0)
    dtype = torch.promote_types(torch.promote_types(anchors.dtype, labels.dtype), torch.float32)
    anchors, labels = anchors.to(dtype), labels.to(dtype)
    num_images, num_gt, _ = labels.shape
    num_anchors = anchors.shape[0]

    with torch.no_grad():
        gt_boxes = labels.transpose(0, 1)[..., 1:]  # [G, B, 4]
        valid = labels[..., 0].t() >= 0  # [G, B]
        matches = _assign_batched(gt_boxes, valid, anchors, iou_threshold)  # [B, A]

        assigned = matches >= 0  # [B, A]
        class_labels = torch.zeros((num_images, num_anchors), dtype=torch.int64, device=anchors.device)
        offsets = anchors.new_zeros((num_images, num_anchors, 4))
        images, anchor_idx = torch.nonzero(assigned, as_tuple=True)  # [K], [K]: only these get targets
        gt_idx = matches[images, anchor_idx]  # [K]
        class_labels[images, anchor_idx] = labels[images, gt_idx, 0].long() + 1
        offsets[images, anchor_idx] = BoxCoder().encode(anchors[anchor_idx], labels[images, gt_idx, 1:])
        mask = assigned[..., None].expand(-1, -1, 4).to(dtype)  # [B, A, 4]
    return offsets.reshape(num_images, -1), mask.reshape(num_images, -1), class_labels
