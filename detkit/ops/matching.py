"""Matching anchors to ground truth: the textbook's greedy ``assign_anchors``, torchvision's ``Matcher``.

``multibox_target`` turns the matches of a padded batch into the textbook's offsets, masks and class labels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detkit.ops._checks import check_boxes, check_number, check_same_device, check_tensor
from detkit.ops.boxes import _block_rows, _iou_rows_into
from detkit.ops.coder import BoxCoder

__all__ = ["Matcher", "assign_anchors", "multibox_target"]

# IoU given to taken anchors and padding ground truths: below every real IoU (which is >= 0)
_TAKEN = -1.0
# chunk length of the two-level arg-max (an amax over chunks is vectorised, arg-max is not)
_ARGMAX_CHUNK = 64
# rows of ground truths per scan block, as a multiple of _block_rows: about 2**19 IoUs per block on CPU
# (measured against 1 and 4 on the multibox_target benchmark case)
_SCAN_ROWS_FACTOR = 2
# blocks per strip of ground truths sorted by x1 (each strip is then cut by y1, see _block_bounds)
_SCAN_STRIP = 2


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _needs_sanitising(area: Tensor) -> bool:
    """Whether some box has a non-positive or non-finite area (its IoUs can be NaN or outside [0, 1])."""
    return not bool(((area > 0) & torch.isfinite(area)).all())


def _first_max(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``rows.max(dim=1)`` (value and first index of the maximum) of ``Tensor[r, A]``, faster on CPU.

    Takes the maximum of every chunk of 64 (vectorised), the first chunk that reaches the row
    maximum, then the first index inside that chunk: the same answer as ``max(dim=1)``. Rows whose
    width is a multiple of 64 (see :class:`_IouBlocks`) need no separate tail.
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


class _IouBlocks:
    """IoU of blocks of ground truths against anchors, written into one buffer that every block reuses.

    Every IoU in this module comes from here: :func:`_iou_rows_into` uses the same operations in
    the same order as ``box_iou`` (and the textbook), so values agree bit for bit. A block's rows
    are padded with -inf to a multiple of 64 columns for :func:`_first_max`.

    Args:
        anchors: ``Tensor[A, 4]``.
        rows: the most ground truths per block; the buffer holds ``3 * rows * (A + 64)`` values.
        sanitise: whether IoUs must be made well defined (NaN -> 0, clamped to [0, 1]).
    """

    def __init__(self, anchors: Tensor, rows: int, sanitise: bool) -> None:
        self.table = torch.cat((anchors.t(), _area(anchors)[None]))  # [5, A] x1, y1, x2, y2, area
        self.rows = rows
        self.sanitise = sanitise
        self._buffer = anchors.new_empty((3, rows * (anchors.shape[0] + _ARGMAX_CHUNK)))

    def __call__(self, gt: Tensor, members: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """IoU of ``gt`` (``Tensor[r, 4]``, ``r <= rows``) with the anchors ``members`` (``Tensor[W]``; None: all).

        Returns ``(iou, padded)``: ``Tensor[r, W]`` and the same memory as ``Tensor[r, W padded]``,
        both overwritten by the next call.
        """
        window = self.table if members is None else self.table.index_select(1, members)  # [5, W]
        count, width = gt.shape[0], window.shape[1]
        padded_width = -(-width // _ARGMAX_CHUNK) * _ARGMAX_CHUNK
        padded = self._buffer[0, : count * padded_width].view(count, padded_width)
        padded[:, width:] = float("-inf")
        scratch = self._buffer[1:, : count * width].view(2, count, width)
        g_cols = tuple(c[:, None] for c in gt.unbind(1))  # four [r, 1]
        iou = _iou_rows_into(padded[:, :width], scratch, g_cols, _area(gt)[:, None],  # type: ignore[arg-type]
                             tuple(window[:4].unbind(0)), window[4])  # type: ignore[arg-type]
        if self.sanitise:
            torch.nan_to_num_(iou, nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0, max=1.0)
        return iou, padded


def _block_bounds(rows: Tensor, flat_gt: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Ground-truth rows grouped into compact blocks of ``block``, and the extent of each block.

    Rows are sorted by x1 into strips of ``_SCAN_STRIP`` blocks, and each strip by y1 into blocks,
    so that a block covers a small area. An anchor that ends at or before a block's smallest x1
    (or y1), or starts at or after its largest x2 (or y2), overlaps none of its ground truths: their
    IoU is exactly 0.

    Returns:
        ``(rows, extents)``: the rows in block order (``Tensor[n]``) and per block
        ``[min x1, min y1, max x2, max y2]`` (``Tensor[blocks, 4]``).
    """
    rows = rows[torch.argsort(flat_gt[rows, 0])]  # [n] by x1 (any order among equal values)
    strip = torch.arange(rows.numel(), device=rows.device) // (block * _SCAN_STRIP)  # [n], ascending
    by_y = torch.argsort(flat_gt[rows, 1])
    rows = rows[by_y[torch.argsort(strip[by_y], stable=True)]]  # by strip, then by y1
    blocks = -(-rows.numel() // block)
    last = rows[-1:].expand(blocks * block - rows.numel())  # pad with a repeat: extents unchanged
    boxes = flat_gt[torch.cat((rows, last))].view(blocks, block, 4)
    return rows, torch.cat((boxes[..., :2].amin(dim=1), boxes[..., 2:].amax(dim=1)), dim=1)  # [blocks, 4]


def _near(table: Tensor, extents: Tensor) -> Tensor:
    """``Tensor[c, A]`` bool: the anchors (``table``, ``Tensor[5, A]``) that overlap each extent (``Tensor[c, 4]``).

    The overlap is computed by the subtraction the IoU uses, ``min(x2) - max(x1)`` (and in y); a
    ground truth inside an extent overlaps an anchor by no more, so a positive IoU implies near.
    """
    wx = torch.minimum(table[2], extents[:, 2:3]).sub_(torch.maximum(table[0], extents[:, 0:1]))  # [c, A]
    wy = torch.minimum(table[3], extents[:, 3:4]).sub_(torch.maximum(table[1], extents[:, 1:2]))
    return torch.minimum(wx, wy) > 0


def _scan(
    flat_gt: Tensor, flat_valid: Tensor, num_images: int, blocks: _IouBlocks, iou_threshold: float
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One pass over every (valid gt, anchor) pair that can overlap, in blocks, without storing the IoU matrix.

    Ground truths are taken a block at a time against the anchors that overlap the block's extent
    (:func:`_block_bounds`; the others have IoU exactly 0; with boxes of non-positive area, all
    anchors), in their original order so that ties resolve to the smallest index.

    Args:
        flat_gt: ``Tensor[R, 4]`` ground truths, row ``g * B + b`` for gt ``g`` of image ``b``.
        flat_valid: ``Tensor[R]`` bool, False for padding rows (left out).
        num_images: ``B``.
        blocks: the IoU blocks of the anchors.
        iou_threshold: the threshold of the second phase.

    Returns:
        ``(col_val, col_arg, hits)``: per row its best IoU (``Tensor[R]``, -1 for padding) and the
        first anchor reaching it (``Tensor[R]`` int64, 0 when the best IoU is 0: all anchors tie);
        ``hits = (key, gt, iou)``, three ``Tensor[H]``: every pair with an IoU ``>= iou_threshold``
        (``> 0`` for a threshold of 0), ``key = image * A + anchor``.
    """
    num_rows, device, table = flat_gt.shape[0], flat_gt.device, blocks.table
    num_anchors, block = table.shape[1], blocks.rows
    col_val = flat_gt.new_full((num_rows,), _TAKEN)
    col_arg = torch.zeros(num_rows, dtype=torch.int64, device=device)
    rows = torch.nonzero(flat_valid).squeeze(1)  # [n] valid rows
    starts = range(0, rows.numel(), block)
    extents = None  # with boxes of non-positive area every anchor is near every block
    if not blocks.sanitise:
        rows, extents = _block_bounds(rows, flat_gt, block)
    chunk = max(1, (1 << 18) // max(1, num_anchors))  # blocks per [chunk, A] near mask (about 2**18 values)
    hits = []
    for k, start in enumerate(starts):
        idx = rows[start : start + block]  # [r] flat rows of this block
        members = None  # every anchor
        if extents is not None:  # the anchors that overlap the block's extent, in their original order
            if k % chunk == 0:
                near = _near(table, extents[k : k + chunk])  # [chunk, A]
            members = torch.nonzero(near[k % chunk]).squeeze(1)  # [W]
            if members.numel() == 0:  # every IoU is 0 and the first anchor wins
                col_val[idx] = 0.0
                continue
        iou, padded = blocks(flat_gt[idx], members)  # [r, W], [r, W padded]
        best, first = _first_max(padded)  # [r], [r] position in the window
        col_val[idx] = best
        at = first if members is None else members[first]
        col_arg[idx] = torch.where(best > 0, at, 0)  # a best of 0: all anchors tie, the first wins
        hits.append(_block_hits(iou, padded, idx, members, num_images, num_anchors, iou_threshold))
    if not hits:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return col_val, col_arg, (empty, empty, flat_gt.new_empty(0))
    return col_val, col_arg, tuple(torch.cat(h) for h in zip(*hits))  # type: ignore[return-value]


def _block_hits(
    iou: Tensor,
    padded: Tensor,
    idx: Tensor,
    members: Tensor | None,
    num_images: int,
    num_anchors: int,
    iou_threshold: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(key, gt, iou)`` of the pairs of a block whose IoU reaches the threshold (see :func:`_scan`).

    ``iou`` is the block's ``Tensor[r, W]`` (a view of ``padded``), ``idx`` its flat rows
    ``Tensor[r]``, ``members`` the anchor index of each column ``Tensor[W]`` (None: all anchors).
    """
    def reach(t: Tensor) -> Tensor:
        return t >= iou_threshold if iou_threshold > 0 else t > 0

    cols = torch.nonzero(reach(iou.amax(dim=0))).squeeze(1)  # [h] columns some row reaches
    sub = padded.index_select(1, cols)  # [r, h] (gathering from the contiguous buffer is faster)
    flat = torch.nonzero(reach(sub).view(-1)).squeeze(1)  # [H] hits, row-major in [r, h]
    hit_row, hit_col = flat // cols.numel(), flat % cols.numel()
    anchor = cols[hit_col] if members is None else members[cols[hit_col]]
    row = idx[hit_row]
    return (row % num_images) * num_anchors + anchor, row // num_images, sub.view(-1)[flat]


def _best_gt_per_anchor(hits: tuple[Tensor, Tensor, Tensor], matches: Tensor) -> Tensor:
    """Give every anchor with a hit its best ground truth (the first among equal IoUs), in place.

    Args:
        hits: ``(key, gt, iou)`` from :func:`_scan`; when an anchor's best IoU reaches the
            threshold, every ground truth at that IoU is among its hits.
        matches: ``Tensor[B, A]`` int64 (contiguous), written at the keys of the hits.

    Returns:
        ``Tensor[U]`` the keys written, ascending.
    """
    key, gt, iou = hits
    keys, slot = torch.unique(key, return_inverse=True)  # [U], [H]
    best = iou.new_full(keys.shape, float("-inf")).scatter_reduce_(0, slot, iou, "amax")  # [U]
    tied = iou == best[slot]  # [H] hits at their anchor's best IoU
    first = torch.full_like(keys, torch.iinfo(torch.int64).max).scatter_reduce_(0, slot[tied], gt[tied], "amin")
    matches.view(-1)[keys] = first
    return keys


def _assign_batched(gt: Tensor, valid: Tensor, anchors: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """The textbook's assignment for a padded batch, without materialising the IoU matrix.

    Args:
        gt: ``Tensor[G, B, 4]`` ground-truth boxes ``(x1, y1, x2, y2)`` of each image.
        valid: ``Tensor[G, B]`` bool, False for padding rows.
        anchors: ``Tensor[A, 4]`` anchors ``(x1, y1, x2, y2)``, shared by the images.
        iou_threshold: IoU at which an anchor not claimed greedily takes its best ground truth.

    Returns:
        ``(matches, assigned)``: ``Tensor[B, A]`` int64 ground-truth index per anchor, -1 for none,
        and ``Tensor[K]`` int64 the flat positions ``b * A + a`` of the assigned anchors, ascending.
    """
    num_gt, num_images, _ = gt.shape
    num_anchors = anchors.shape[0]
    matches = torch.full((num_images, num_anchors), -1, dtype=torch.int64, device=anchors.device)
    if num_gt == 0 or num_anchors == 0 or num_images == 0 or not bool(valid.any()):
        return matches, torch.empty(0, dtype=torch.int64, device=anchors.device)
    # IoUs that involve boxes with non-positive area are NaN (0/0) or outside [0, 1]: make them
    # well defined; valid boxes skip this pass and keep their values bit for bit
    sanitise = _needs_sanitising(_area(gt)[valid]) or _needs_sanitising(_area(anchors))
    flat_gt, flat_valid = gt.reshape(-1, 4), valid.reshape(-1)  # [G * B, 4], [G * B], gt-major
    rows = max(1, min(int(flat_valid.sum()), _block_rows(num_anchors, anchors.device) * _SCAN_ROWS_FACTOR))
    blocks = _IouBlocks(anchors, rows, sanitise)
    col_val, col_arg, hits = _scan(flat_gt, flat_valid, num_images, blocks, iou_threshold)

    # threshold phase: anchors whose best IoU reaches the threshold take that gt, the first among
    # equal IoUs (the textbook's max over dim 1); with a threshold of 0 every anchor of an image with
    # a ground truth qualifies, and those that overlap none take its first valid one (all IoUs 0)
    if iou_threshold <= 0:
        first_valid = torch.where(valid.any(0), valid.to(torch.uint8).argmax(0), -1)  # [B]
        matches.copy_(first_valid[:, None].expand_as(matches))
    reached = _best_gt_per_anchor(hits, matches)

    claimed = _greedy_claims(
        gt, col_val.view(num_gt, num_images), col_arg.view(num_gt, num_images), valid.clone(), matches, blocks
    )
    if iou_threshold <= 0:
        return matches, torch.nonzero(matches.view(-1) >= 0).squeeze(1)
    return matches, torch.unique(torch.cat((reached, claimed)))


def _greedy_claims(
    gt: Tensor, col_val: Tensor, col_arg: Tensor, alive: Tensor, matches: Tensor, blocks: _IouBlocks
) -> Tensor:
    """Let every ground truth claim one anchor, greedily by the largest remaining IoU, in place.

    Exactly the textbook's loop (``argmax`` over the whole ``[A, G]`` matrix, then that anchor and
    that ground truth leave), including its tie-breaking: among equal IoUs the smallest anchor index
    wins, then the smallest ground-truth index (the first maximum in row-major ``[A, G]`` order).
    Instead of scanning the matrix at every step it keeps, per ground truth, the best remaining
    anchor, and recomputes the IoU row of a ground truth only when its best anchor is taken.

    Each round orders the ground truths of every image as the textbook's argmax visits them and
    lets the longest prefix claim at once whose anchors are distinct: a claim leaves the entries of
    the others valid, except those that wanted the same anchor, and those look again with an IoU
    no larger (at an equal IoU, a later anchor), so they cannot move ahead of the prefix. With
    distinct best anchors one round does it; a round per conflict otherwise.

    Args:
        gt: ``Tensor[G, B, 4]`` ground-truth boxes.
        col_val: ``Tensor[G, B]`` best remaining IoU per ground truth (updated in place).
        col_arg: ``Tensor[G, B]`` int64 first anchor reaching it (updated in place).
        alive: ``Tensor[G, B]`` bool, ground truths still to claim an anchor (updated in place).
        matches: ``Tensor[B, A]`` int64 ground-truth index per anchor (updated in place).
        blocks: the IoU blocks of the anchors (rows against every anchor).

    Returns:
        ``Tensor[C]`` int64 flat positions ``b * A + a`` of the claimed anchors.
    """
    num_gt = col_val.shape[0]
    num_anchors = matches.shape[1]
    device = matches.device
    taken = torch.zeros(matches.shape, dtype=torch.bool, device=device)  # [B, A]
    gt_index = torch.arange(num_gt, device=device)[:, None]  # [G, 1]
    before = torch.ones((num_gt, num_gt), dtype=torch.bool, device=device).tril_(-1)[..., None]  # [i, j, 1]: j < i
    neg_inf = torch.tensor(float("-inf"), dtype=col_val.dtype, device=device)
    claimed = []
    for _ in range(min(num_gt, num_anchors)):  # a round claims at least one anchor per image with claims left
        vals = torch.where(alive, col_val, neg_inf)  # [G, B]; taken-out rows are -1 or -inf
        by_key = (col_arg * num_gt + gt_index).argsort(dim=0)  # [G, B] row-major [A, G] order, keys distinct
        order = by_key.gather(0, vals.gather(0, by_key).argsort(dim=0, descending=True, stable=True))  # [G, B]
        anchor = col_arg.gather(0, order)  # [G, B] in visiting order
        ready = vals.gather(0, order) >= 0  # [G, B] alive with an anchor left
        repeat = ((anchor[:, None] == anchor[None]) & before).any(1)  # [G, B] anchor wanted by an earlier one
        go = torch.cumsum(~ready | repeat, 0) == 0  # [G, B] the prefix that claims now
        pos, images = torch.nonzero(go, as_tuple=True)  # [K], [K]
        if images.numel() == 0:
            break
        claim, anchor = order[pos, images], anchor[pos, images]  # [K]
        matches[images, anchor] = claim
        alive[claim, images] = False
        taken[images, anchor] = True
        claimed.append(images * num_anchors + anchor)
        # ground truths whose best remaining anchor was just taken look again
        gts, cols = torch.nonzero(alive & taken.gather(1, col_arg.t()).t(), as_tuple=True)
        for i in range(0, gts.numel(), blocks.rows):
            g, img = gts[i : i + blocks.rows], cols[i : i + blocks.rows]
            iou, padded = blocks(gt[g, img])  # [s, A]
            iou.masked_fill_(taken[img], _TAKEN)
            col_val[g, img], col_arg[g, img] = _first_max(padded)
    return torch.cat(claimed) if claimed else torch.empty(0, dtype=torch.int64, device=device)


def assign_anchors(gt_boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Assign the closest ground-truth box to anchors (the textbook's ``assign_anchor_to_bbox``).

    First every ground truth claims one anchor, greedily by the largest remaining IoU in the whole
    matrix (that anchor and that ground truth then leave; ties go to the smallest anchor index, then
    the smallest ground-truth index); every other anchor takes its best ground truth (the first one
    among ties) when that IoU is at least ``iou_threshold``. Results equal the textbook's loop for
    ``G <= A``; for ``G > A`` the greedy phase stops once every anchor is taken (the textbook's
    surplus iterations would re-assign anchor 0 to ground truth 0). Boxes must have positive area:
    IoUs that involve a box with zero or negative area are clamped to ``[0, 1]``, NaN counting as 0.

    Cost: the ``[G, A]`` IoU matrix is never stored. One pass computes it a block of ground truths
    at a time (about 2**19 IoUs per block on CPU), the ground truths grouped into compact blocks
    (sorted by x1 into strips, each strip by y1) so that a block only meets the anchors that overlap
    its extent (the others have IoU exactly 0). The pass keeps each ground truth's best anchor and
    the pairs that reach the threshold; each anchor's best ground truth follows from those pairs
    alone. Memory besides is O(A + G + H) (H those pairs): three ``[rows, A]`` scratch buffers, a
    ``[5, A]`` table of the anchors, a window of it, a near-mask of about 2**18 values and the
    ``[B, A]`` matches -- about 35 MB for 400,000 x 500 in float32 (resident-set growth measured on
    a first call: 29-50 MB, depending on the allocator), where one float32 matrix is 800 MB.
    Time: O(G * W) for that pass (W the anchors a block meets, at most A); then greedy rounds of
    O(G^2 * B) each -- one round when the ground truths' best anchors are distinct, a round more per
    conflict -- recomputing one IoU row (O(A)) per ground truth whose best anchor was taken.

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
        return _assign_batched(gt_boxes.to(dtype)[:, None, :], valid, anchors.to(dtype), iou_threshold)[0][0]


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
    greedy phase runs at most ``G`` rounds for the whole batch), plus the ``[B, A * 4]`` outputs,
    of which only the ``K`` assigned anchors are computed. ``offsets`` and ``mask`` are two views of
    one ``[2, B * A, 4]`` allocation (one block of fresh memory instead of two).

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
        matches, assigned = _assign_batched(gt_boxes, valid, anchors, iou_threshold)  # [B, A], [K]

        # only the K assigned anchors get targets; rows of the outputs are flat (image, anchor) positions
        images, anchor_idx = assigned // num_anchors, assigned % num_anchors  # [K], [K]
        gt_idx = matches.view(-1)[assigned]  # [K]
        class_labels = torch.zeros(num_images * num_anchors, dtype=torch.int64, device=anchors.device)
        class_labels[assigned] = labels[images, gt_idx, 0].long() + 1
        # offsets and mask share one allocation: fewer fresh pages for the allocator to fault in
        offsets, mask = anchors.new_zeros((2, num_images * num_anchors, 4)).unbind(0)  # [B * A, 4] each
        offsets[assigned] = BoxCoder().encode(anchors[anchor_idx], labels[images, gt_idx, 1:])
        mask[assigned] = 1.0
    return offsets.view(num_images, -1), mask.view(num_images, -1), class_labels.view(num_images, num_anchors)
