"""Non-maximum suppression: greedy ``nms`` and ``batched_nms`` with torchvision's results, and ``soft_nms``.

On CPU torchvision's compiled kernel decides blocks of boxes and vectorised passes drop what they suppress; on
CUDA a block engine of PyTorch ops does it all. No Python loop over boxes anywhere.
"""

from __future__ import annotations

import functools
import math
import struct

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.nms, the compiled CPU kernel)
from torch import Tensor

from detkit.ops._checks import check_boxes, check_length, check_number, check_same_device, check_tensor

__all__ = ["batched_nms", "nms", "soft_nms"]

# Boxes are resolved in blocks of score-ordered survivors. The first block is small because the
# top-scoring boxes usually suppress most of the rest; later blocks grow to amortise per-op costs.
_FIRST_BLOCK = 128
_MAX_BLOCK = 256
# On CUDA a round costs host syncs rather than arithmetic, so blocks are larger there (first, largest);
# chosen by a sweep on an H100 (docs/benchmarks.md). CUDA inputs do not go to torchvision's CUDA kernel
# as CPU inputs go to its CPU kernel: besides an unstable score sort, that kernel forms the union as
# fma(w_b, h_b, area_a) and rounds the threshold to float32 (the PTX of torchvision 0.29's
# nms_kernel_impl<float>), so it decides IoUs within a float32 step of the threshold differently from
# the CPU kernel (tests/ops/test_nms.py, FMA_SENSITIVE_PAIRS).
_BLOCKS_CUDA = (512, 2048)
# Pairwise work is tiled to about this many elements per [rows, cols] tile (see _chunk_elems).
_CHUNK_ELEMS_CPU = 1 << 17
_CHUNK_ELEMS_CUDA = 1 << 26
_FLT_MAX = 3.4028234663852886e38
# On CPU, torchvision's compiled kernel decides boxes in score order (a scalar loop: fast while few
# pairs need an IoU) and between its calls one vectorised pass drops every box that a kept box
# suppresses (_greedy_keep_cpu). At most _KERNEL_MAX_CPU undecided boxes go to the kernel whole;
# more give it their _KERNEL_BLOCK_CPU best first. Measured with `tools/bench.py ops` (nms_crossover
# rows: one thread, CPU time, interleaved, two runs at load average 17 on 2 cores; docs/benchmarks.md):
# one round then the kernel, against the kernel alone, random / crowded / clustered boxes:
# N=512 0.92-0.97 / 0.88-0.97 / 1.26-1.27, N=640 0.96-1.00 / 0.75-0.78 / 1.02-1.05,
# N=768 0.97-0.99 / 0.73-0.84 / 0.94-0.99, N=1,024 0.93-0.97 / 0.67-0.74 / 0.80-0.89: clustered
# inputs break even near 768. A sweep of this limit (load 13.6) put nms at N=1,000 at 0.86 / 0.73 /
# 0.89 x torchvision with 512, 0.77 / 0.64 / 0.78 with 640, 0.81 / 0.65 / 0.73 with 768 and
# 0.90 / 0.66 / 0.75 with 896; blocks of 64-256 for the kernel's round were within noise of 128.
# Three later runs on the idle machine (samples of ~20 ms of calls) put the clustered break-even between
# 640 (1.08-1.41) and 1,024 (0.54-0.77), 768 at 0.87-1.35, and nms at N=1,000 at 0.79-0.81 / 0.64-0.65 /
# 0.76-0.82 x torchvision with 768.
_KERNEL_BLOCK_CPU = 128
_KERNEL_MAX_CPU = 768


# --------------------------------------------------------------------------------------------
# validation and exact threshold handling
# --------------------------------------------------------------------------------------------
def _check_inputs(boxes: object, scores: object) -> tuple[Tensor, Tensor]:
    """Validate ``boxes`` ``[N, 4]`` and ``scores`` ``[N]``; return boxes in the compute dtype."""
    boxes = check_boxes("boxes", boxes)
    scores = check_tensor("scores", scores)
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [N], got {list(scores.shape)}")
    check_length("scores", scores, boxes.shape[0], f"boxes of shape {list(boxes.shape)}")
    check_same_device(boxes=boxes, scores=scores)
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"scores must be a real floating or integer tensor, got {scores.dtype}")
    # NMS returns indices: no gradient flows through it, so inputs that require grad are fine
    if boxes.requires_grad or scores.requires_grad:
        boxes, scores = boxes.detach(), scores.detach()
    # half precision areas overflow and lose the IoU; compute in float32 like torchvision's kernel
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    return boxes, scores


def _raise_nan_scores(scores: Tensor) -> None:
    nan = scores.isnan()
    raise ValueError(
        f"scores contains {int(nan.sum())} NaN value(s) (first at index {int(nan.nonzero()[0, 0])}); "
        "NMS needs an order of the scores: replace or drop NaN scores first"
    )


def _check_no_nan(scores: Tensor) -> None:
    """``ValueError`` if some score is NaN."""
    # max propagates NaN: one reduction and one sync
    if scores.is_floating_point() and scores.numel() and math.isnan(scores.max().item()):
        _raise_nan_scores(scores)


def _sort_scores(scores: Tensor) -> Tensor:
    """Indices of ``scores`` by decreasing value, stable; ``ValueError`` if any score is NaN."""
    values, order = scores.sort(stable=True, descending=True)
    # torch.sort places NaN above +inf, so a NaN anywhere shows up at the front
    if values.is_floating_point() and bool(values[0].isnan()):
        _raise_nan_scores(scores)
    return order


@functools.lru_cache(maxsize=64)  # a pure function of the threshold, which rarely changes between calls
def _float32_floor(value: float) -> float:
    """The largest float32 that is ``<= value`` (a Python float holding that float32 exactly).

    torchvision compares the float32 IoU with the threshold as a double; ``iou > value`` in double
    is the same as ``iou > _float32_floor(value)`` in float32, so the result is bit-identical.
    """
    if value == math.inf:
        return math.inf
    if value >= _FLT_MAX:
        return _FLT_MAX
    if value < -_FLT_MAX:
        return -math.inf
    nearest = struct.unpack("<f", struct.pack("<f", value))[0]
    if nearest <= value:
        return nearest
    bits = struct.unpack("<I", struct.pack("<f", nearest))[0]
    # one float32 step towards -inf: down in magnitude above zero, up in magnitude at or below it
    bits = bits - 1 if nearest > 0 else (bits + 1 if bits != 0 else 0x80000001)
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _threshold_for(dtype: torch.dtype, iou_threshold: float) -> float:
    return iou_threshold if dtype == torch.float64 else _float32_floor(iou_threshold)


# --------------------------------------------------------------------------------------------
# the block engine
# --------------------------------------------------------------------------------------------
def _coords(boxes: Tensor, order: Tensor | None = None) -> Tensor:
    """``Tensor[5, N]`` rows ``(x1, y1, x2, y2, area)`` of ``boxes[order]`` (of ``boxes`` without ``order``).

    The area is computed as torchvision's kernel does.
    """
    if order is None:
        cols = boxes.t()  # [4, N], a view
        return torch.cat((cols, ((cols[2] - cols[0]) * (cols[3] - cols[1]))[None]))
    out = boxes.new_empty((5, order.shape[0]))
    torch.index_select(boxes.t(), 1, order, out=out[:4])  # [4, N]
    wh = out[2:4] - out[0:2]  # [2, N]
    torch.mul(wh[0], wh[1], out=out[4])
    return out


def _chunk_elems(device: torch.device) -> int:
    # on CPU, [n, R] scratch of this many elements stays in cache; on CUDA it only bounds memory
    return _CHUNK_ELEMS_CUDA if device.type == "cuda" else _CHUNK_ELEMS_CPU


def _block_sizes(device: torch.device) -> tuple[int, int]:
    """``(first, largest)`` block size of the rounds on ``device``."""
    return _BLOCKS_CUDA if device.type == "cuda" else (_FIRST_BLOCK, _MAX_BLOCK)


def _suppression(a: Tensor, b: Tensor, threshold: float, out: Tensor | None = None) -> Tensor:
    """``Tensor[..., n, R]``: 1 where ``IoU(a_i, b_j) > threshold``, else 0, in the dtype of the inputs.

    ``a`` is ``Tensor[5, ..., n]`` and ``b`` ``Tensor[5, ..., R]`` with rows ``(x1, y1, x2, y2, area)``
    and the same leading (group) dims. The arithmetic is torchvision's CPU kernel, operation for
    operation: ``w = max(0, min(x2) - max(x1))``, ``inter = w * h``, ``IoU = inter / (area_a +
    area_b - inter)``; a NaN IoU never suppresses. Memory: ``out`` (or a new buffer) and one scratch
    buffer of the same size.
    """
    ax1, ay1, ax2, ay2, a_area = a.unsqueeze(-1).unbind(0)  # each [..., n, 1]
    bx1, by1, bx2, by2, b_area = b.unsqueeze(-2).unbind(0)  # each [..., 1, R]
    t = torch.maximum(ax1, bx1)  # [..., n, R]
    inter = torch.minimum(ax2, bx2, out=out).sub_(t).clamp_(min=0)  # width
    torch.maximum(ay1, by1, out=t)
    inter.mul_(torch.minimum(ay2, by2).sub_(t).clamp_(min=0))  # width * height
    union = torch.add(a_area, b_area, out=t).sub_(inter)
    return inter.div_(union).gt_(threshold)


def _tiles(groups: int, rows: int, cols: int, device: torch.device) -> tuple[int, int]:
    """Groups and columns per tile so that a ``[groups, rows, cols]`` tile holds about the chunk size."""
    budget = _chunk_elems(device)
    per_group = max(1, rows * cols)
    if per_group <= budget:
        return max(1, budget // per_group), cols
    return 1, max(1, budget // max(1, rows))


def _suppression_matrix(head: Tensor, threshold: float) -> Tensor:
    """Strictly upper-triangular suppression matrix ``Tensor[..., n, n]`` of ``head`` ``Tensor[5, ..., n]``.

    ``head`` is ``Tensor[5, n]`` or ``Tensor[5, G, n]`` (one block per group), tiled over groups.
    """
    n = head.shape[-1]
    groups = head.shape[1] if head.dim() == 3 else 1
    step, _ = _tiles(groups, n, n, head.device)
    if step >= groups:
        return _suppression(head, head, threshold).triu_(1)
    out = head.new_empty((groups, n, n))
    for g in range(0, groups, step):
        part = head[:, g : g + step]
        _suppression(part, part, threshold, out=out[g : g + step])
    return out.triu_(1)


def _any_suppressed(a: Tensor, b: Tensor, threshold: float) -> Tensor:
    """``Tensor[..., R]``: 1 where some box of ``a`` (``Tensor[5, ..., k]``) suppresses ``b`` (``Tensor[5, ..., R]``).

    Without a group dim or with one (``Tensor[5, G, k]`` against ``Tensor[5, G, R]``); tiled over
    groups and columns so that the scratch stays small (see :func:`_chunk_elems`).
    """
    k, cols = a.shape[-1], b.shape[-1]
    groups = a.shape[1] if a.dim() == 3 else 1
    g_step, c_step = _tiles(groups, k, cols, b.device)
    if g_step >= groups and c_step >= cols:
        return _suppression(a, b, threshold).amax(-2)
    flat = a.dim() == 2
    if flat:
        a, b = a[:, None], b[:, None]
    hit = b.new_empty((groups, cols))
    for g in range(0, groups, g_step):
        for c in range(0, cols, c_step):
            tile = _suppression(a[:, g : g + g_step], b[:, g : g + g_step, c : c + c_step], threshold)
            torch.amax(tile, dim=1, out=hit[g : g + g_step, c : c + c_step])
    return hit[0] if flat else hit


def _count_suppressors(keep: Tensor, m: Tensor) -> Tensor:
    """``Tensor[..., n]``: for each box, how many boxes marked in ``keep`` suppress it (``m`` as below)."""
    # mv with the transposed block and a batched row-vector product are the fastest forms on CPU
    if m.dim() == 2:
        return torch.mv(m.t(), keep.to(m.dtype))
    return torch.bmm(keep.to(m.dtype).unsqueeze(1), m).squeeze(1)


def _resolve_block(m: Tensor) -> Tensor:
    """Greedy NMS inside blocks, given their suppression matrices.

    ``m`` is ``Tensor[..., n, n]`` of 0/1, strictly upper triangular: ``m[..., i, j] = 1`` when box
    ``i`` (higher score) would suppress box ``j``. Iterates ``keep[j] = not any(keep[i] and m[i, j])``
    to its fixed point: box ``j`` is exact once every box before it is, so the number of iterations
    is at most the longest suppression chain plus one (at most ``n + 1``; in practice 1 to 5).

    Returns:
        ``Tensor[..., n]`` bool, the boxes greedy NMS keeps.
    """
    keep = m.amax(-2) == 0  # boxes nothing in their block can suppress
    for _ in range(m.shape[-1] + 1):
        nxt = _count_suppressors(keep, m) == 0
        if torch.equal(nxt, keep):
            break
        keep = nxt
    return keep


def _greedy_keep(coords: Tensor, threshold: float) -> Tensor:
    """Positions (ascending) of the boxes that greedy NMS keeps, for one category.

    Args:
        coords: ``Tensor[5, N]`` rows ``(x1, y1, x2, y2, area)`` in decreasing score order.
        threshold: compare value for ``IoU > threshold`` in the dtype of ``coords``.

    Each round takes the next block of undecided boxes, resolves it exactly (:func:`_resolve_block`)
    and drops every later box that a kept box of the block suppresses; the boxes left are undecided
    and suppressed by nothing kept so far. Host syncs: a few per round, none per box.
    """
    pos = torch.arange(coords.shape[1], device=coords.device)  # [R] undecided boxes
    kept = []
    block, largest = _block_sizes(coords.device)
    while pos.shape[0] > 0:
        n = min(block, pos.shape[0])
        block = min(2 * block, largest)
        head = coords.narrow(1, 0, n)  # [5, n]
        on = _resolve_block(_suppression_matrix(head, threshold)).nonzero().squeeze(1)  # kept, [k]
        kept.append(pos.narrow(0, 0, n).index_select(0, on))
        if n == pos.shape[0]:
            break
        coords, pos = coords.narrow(1, n, pos.shape[0] - n), pos.narrow(0, n, pos.shape[0] - n)
        alive = (_any_suppressed(head.index_select(1, on), coords, threshold) == 0).nonzero().squeeze(1)
        coords, pos = coords.index_select(1, alive), pos.index_select(0, alive)
    return torch.cat(kept)


def _kernel_keep(table: Tensor, threshold: float) -> Tensor:
    """torchvision's compiled CPU kernel on ``table`` (``Tensor[6, R]`` rows ``x1, y1, x2, y2, area, score``).

    Returns ``Tensor[K]`` positions of the kept boxes by decreasing score, ties by lower position
    (the kernel sorts stably). Its arithmetic and comparison (float IoU against the double
    threshold) are those of :func:`_suppression`, so both decide every pair alike (an IoU that
    involves a NaN coordinate is NaN in both, through the area, and never suppresses).
    """
    return torch.ops.torchvision.nms(table[:4].t(), table[5], threshold)  # the kernel reads columns


def _greedy_keep_cpu(boxes: Tensor, scores: Tensor, threshold: float, kernel_max: int | None = None) -> Tensor:
    """Indices of the boxes that greedy NMS keeps, by decreasing score (ties: lower index), on CPU.

    Args:
        boxes: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)``, float32 or float64.
        scores: ``Tensor[N]`` scores (no NaN) in the dtype of ``boxes``.
        threshold: compare value for ``IoU > threshold`` in the dtype of ``boxes``.
        kernel_max: ``_KERNEL_MAX_CPU`` unless given (the crossover benchmark sets it).

    At most ``kernel_max`` boxes go to torchvision's kernel whole. Otherwise each round hands
    the best undecided boxes (the ``_KERNEL_BLOCK_CPU`` highest scores and every box tied with the
    last of them: a prefix of the score order) to the kernel, which decides them exactly; one
    vectorised pass then drops every other undecided box that one of the kept boxes suppresses. A
    box so dropped would be suppressed by the full greedy pass too, and suppressed boxes suppress
    nothing, so the decisions left are unchanged. Once at most ``kernel_max`` boxes are undecided,
    the kernel decides them all. No global sort.
    """
    kernel_max = _KERNEL_MAX_CPU if kernel_max is None else kernel_max
    if boxes.shape[0] <= kernel_max:
        return torch.ops.torchvision.nms(boxes, scores, threshold)
    table = torch.cat((_coords(boxes), scores[None]))  # [6, R] the undecided boxes and scores, in input order
    ids = None  # their input indices; None while they are all the boxes
    kept = []
    while table.shape[1] > kernel_max:
        block = min(_KERNEL_BLOCK_CPU, table.shape[1])
        best = table[5] >= table[5].topk(block, sorted=False).values.min()  # [R] a prefix of the order
        head = best.nonzero().squeeze(1)  # [n] ascending, so the kernel's stable sort breaks ties by index
        head_table = table.index_select(1, head)  # [6, n]
        on = _kernel_keep(head_table, threshold)  # [k] positions in head
        kept.append(head.index_select(0, on) if ids is None else ids.index_select(0, head.index_select(0, on)))
        rest = (~best).nonzero().squeeze(1)  # [R - n] the other undecided boxes, ascending
        table = table.index_select(1, rest)  # [6, R - n]
        hit = _any_suppressed(head_table[:5].index_select(1, on), table[:5], threshold)  # [R - n]
        alive = (hit == 0).nonzero().squeeze(1)  # positions in rest
        table, rest = table.index_select(1, alive), rest.index_select(0, alive)
        ids = rest if ids is None else ids.index_select(0, rest)
    on = _kernel_keep(table, threshold)
    kept.append(on if ids is None else ids.index_select(0, on))
    return torch.cat(kept)


def _pad_groups(coords: Tensor, starts: Tensor, sizes: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Gather groups of consecutive boxes into padded rows.

    Args:
        coords: ``Tensor[5, N]``; group ``g`` is ``coords[:, starts[g] : starts[g] + sizes[g]]``.
        length: padded row length, at least ``sizes.max()``.

    Returns:
        ``(padded, pos)``: ``Tensor[5, G, length]`` with NaN padding (a NaN box neither suppresses
        nor is suppressed) and ``Tensor[G, length]`` positions in ``coords``, -1 for padding.
    """
    offsets = torch.arange(length, device=coords.device)
    valid = offsets < sizes[:, None]  # [G, L]
    pos = torch.where(valid, starts[:, None] + offsets, -1)  # [G, L]
    padded = coords[:, pos.clamp(min=0)]  # [5, G, L]
    return padded.masked_fill_(~valid, math.nan), pos


def _front(mask: Tensor, rows: tuple[Tensor, ...], fills: tuple[float, ...]) -> tuple[Tensor, ...]:
    """Move the ``True`` entries of each row of ``mask`` (``Tensor[G, L]``) to the front, in order.

    Each tensor in ``rows`` is ``Tensor[..., G, L]``; it comes back as ``Tensor[..., G, K]`` (``K`` the
    largest count in a row of ``mask``) with the slots past a row's count set to its ``fills`` value.
    """
    counts = mask.sum(1)  # [G]
    width = int(counts.max())
    order = (~mask).to(torch.uint8).argsort(dim=1, stable=True)[:, :width]  # [G, K]
    pad = torch.arange(width, device=mask.device) >= counts[:, None]  # [G, K]
    return tuple(
        r.gather(-1, order.expand(*r.shape[:-2], -1, -1)).masked_fill_(pad, fill) for r, fill in zip(rows, fills)
    )


def _greedy_keep_grouped(coords: Tensor, classes: Tensor, threshold: float) -> Tensor:
    """Positions of the boxes that greedy NMS keeps when run in every category independently.

    Args:
        coords: ``Tensor[5, N]`` rows ``(x1, y1, x2, y2, area)``, sorted by category, then by score.
        classes: ``Tensor[N]`` the (sorted) category of each box.
        threshold: compare value for ``IoU > threshold`` in the dtype of ``coords``.

    Categories become rows of a padded ``[G, L]`` layout and are resolved together, round by round,
    as in :func:`_greedy_keep`; categories of similar size (``L`` within a factor of two) share a
    layout, so padding at most doubles the work and no work crosses categories.

    Returns:
        ``Tensor[K]`` positions into ``coords``, in no particular order.
    """
    _, sizes = torch.unique_consecutive(classes, return_counts=True)  # [G]
    if sizes.shape[0] == 1:
        return _greedy_keep(coords, threshold)
    starts = torch.cumsum(sizes, 0) - sizes
    buckets = torch.log2(sizes.to(torch.float64)).ceil_().long()  # sizes in (2**(b-1), 2**b]
    kept = []
    for b in torch.unique(buckets).tolist():
        members = (buckets == b).nonzero().squeeze(1)
        padded, pos = _pad_groups(coords, starts[members], sizes[members], int(sizes[members].max()))
        block, largest = _block_sizes(coords.device)
        while True:
            n = min(block, pos.shape[1])
            block = min(2 * block, largest)
            head, head_pos = padded[:, :, :n], pos[:, :n]  # [5, G, n], [G, n]
            keep = _resolve_block(_suppression_matrix(head, threshold)) & (head_pos >= 0)  # [G, n]
            kept.append(head_pos[keep])
            if n == pos.shape[1]:
                break
            (suppressors,) = _front(keep, (head,), (math.nan,))  # [5, G, k]
            rest, rest_pos = padded[:, :, n:], pos[:, n:]
            alive = (_any_suppressed(suppressors, rest, threshold) == 0) & (rest_pos >= 0)  # [G, L - n]
            rows = alive.any(1).nonzero().squeeze(1)  # categories with boxes left
            if rows.shape[0] == 0:
                break
            padded, pos = _front(alive[rows], (rest[:, rows], rest_pos[rows]), (math.nan, -1))
    return torch.cat(kept)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, index for index the same as ``torchvision.ops.nms``.

    Boxes are visited by decreasing score; a box is kept unless a kept box with a higher score has
    ``IoU > iou_threshold`` with it. Equal scores keep their input order (a stable descending sort,
    as torchvision's kernel does), so ties are resolved in favour of the lower index.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` format, expected ``0 <= x1 < x2`` and
            ``0 <= y1 < y2``. Degenerate boxes (``x2 <= x1`` or ``y2 <= y1``) overlap nothing; a
            box with a NaN coordinate never suppresses nor is suppressed. float16/bfloat16 are
            computed in float32 (results equal torchvision's on ``boxes.float()``), integers are
            converted to float32, float32 and float64 are used as given.
        scores: ``Tensor[N]`` scores, floating or integer, on the device of ``boxes``. NaN scores
            raise ``ValueError`` (a NaN has no place in a descending order).
        iou_threshold: discards boxes with ``IoU > iou_threshold``; compared exactly as
            torchvision's CPU kernel does (float32 IoU against the threshold as a double), on every
            device. (torchvision's CUDA kernel rounds the threshold to float32 and forms the union with
            a fused multiply-add, so for IoUs within a float32 step of the threshold its CUDA and CPU
            results can differ; detkit's do not.)

    Returns:
        ``Tensor[K]`` int64 indices of the kept boxes, in decreasing order of score; ``[0]`` if
        ``N == 0``.

    Inputs that require grad are fine: only indices come back, and no gradient flows.

    How: boxes are decided in score order, a block at a time, and the kept boxes of a block remove
    every later box they overlap above the threshold before the next block. On CPU (floating scores
    whose cast to the boxes' dtype is exact) torchvision's compiled kernel decides each block of the
    128 best undecided boxes, and decides the rest outright once at most 768 are left (so inputs of
    up to 768 boxes are the kernel alone: below that the kernel is faster, see docs/benchmarks.md);
    no global sort is needed. Elsewhere (CUDA, integer or wider scores) a block engine of PyTorch
    ops sorts once and resolves each block's own suppression matrix exactly by a fixed-point
    iteration (bounded by the longest suppression chain inside the block), with a few host syncs per
    block, none per box. Work is ``O(N * K)`` IoUs at worst (``K`` kept), usually far less;
    pairwise scratch is tiled to about ``2**17`` elements on CPU.
    """
    boxes, scores = _check_inputs(boxes, scores)
    threshold = _threshold_for(boxes.dtype, check_number("iou_threshold", iou_threshold))
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if _kernel_serves(boxes, scores):
        _check_no_nan(scores)
        return _greedy_keep_cpu(boxes, scores if scores.dtype == boxes.dtype else scores.to(boxes.dtype), threshold)
    order = _sort_scores(scores)
    return order[_greedy_keep(_coords(boxes, order), threshold)]


def _kernel_serves(boxes: Tensor, scores: Tensor) -> bool:
    """Whether :func:`_greedy_keep_cpu` applies: CPU tensors, and scores whose cast to the boxes' dtype is exact."""
    return (
        boxes.device.type == "cpu"
        and scores.is_floating_point()
        and torch.promote_types(scores.dtype, boxes.dtype) == boxes.dtype
    )


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: :func:`nms` applied to each category independently, in one call.

    The kept set is that of greedy NMS run per category on the original coordinates (torchvision's
    per-category path, ``_batched_nms_vanilla``), returned in decreasing order of score with ties
    by lower index. Where this differs from ``torchvision.ops.batched_nms``: its per-category path
    (CPU inputs of more than 1,000 boxes, CUDA more than 25,000) orders the kept boxes with an
    *unstable* sort, so boxes with tied scores may come in another order (the same set); its
    smaller inputs go through one NMS on boxes offset per category, which keeps the same boxes in
    the same order unless the offset rounds an IoU across the threshold (large coordinates).
    Without tied scores among the kept boxes, and with exact offsets, the result is torchvision's
    index for index.

    Work grows with the boxes of each category, not with the number of categories: categories are
    padded into rows (those of similar size together) and resolved side by side as in :func:`nms`,
    so no IoU is computed across categories.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` format (see :func:`nms`).
        scores: ``Tensor[N]`` scores (NaN raises ``ValueError``).
        idxs: ``Tensor[N]`` integer category of each box (for example the class, or
            ``image * num_classes + class``); boxes of different categories never suppress each other.
        iou_threshold: discards boxes with ``IoU > iou_threshold`` within a category.

    Returns:
        ``Tensor[K]`` int64 indices of the kept boxes, in decreasing order of score. Without boxes
        (``boxes.numel() == 0``, whatever its shape) the result is empty and the other arguments
        are not looked at, as in torchvision (``batched_nms(torch.empty(0), None, None, None)``).
    """
    if isinstance(boxes, Tensor) and boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes, scores = _check_inputs(boxes, scores)
    idxs = check_tensor("idxs", idxs)
    if idxs.dim() != 1:
        raise ValueError(f"idxs must have shape [N], got {list(idxs.shape)}")
    check_length("idxs", idxs, boxes.shape[0], f"boxes of shape {list(boxes.shape)}")
    check_same_device(boxes=boxes, idxs=idxs)
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise TypeError(f"idxs must be an integer tensor of categories, got {idxs.dtype}; use idxs.long()")
    threshold = check_number("iou_threshold", iou_threshold)
    order = _sort_scores(scores)  # [N] boxes by decreasing score
    by_class = idxs[order].sort(stable=True)[1]  # [N] score ranks, grouped by category
    perm = order[by_class]  # boxes by category, then by decreasing score
    keep = _greedy_keep_grouped(_coords(boxes, perm), idxs[perm], _threshold_for(boxes.dtype, threshold))
    return order[by_class[keep].sort()[0]]


def _iou_with_one(one: Tensor, coords: Tensor) -> Tensor:
    """``Tensor[R]`` IoU of one box (``Tensor[5]``) with ``coords`` (``Tensor[5, R]``); arithmetic as :func:`nms`."""
    x1, y1, x2, y2, area = one.unbind(0)
    inter = torch.minimum(x2, coords[2]).sub_(torch.maximum(x1, coords[0])).clamp_(min=0)
    inter.mul_(torch.minimum(y2, coords[3]).sub_(torch.maximum(y1, coords[1])).clamp_(min=0))
    return inter.div_((area + coords[4]).sub_(inter))


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
    iou_threshold: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017): decay the scores of overlapping boxes instead of dropping them.

    Repeatedly select the remaining box ``M`` with the highest current score (ties: lower index),
    output it with that score, and rescale every other remaining box ``b``:

    - ``"gaussian"``: ``s_b <- s_b * exp(-IoU(M, b)**2 / sigma)``;
    - ``"linear"``: ``s_b <- s_b * (1 - IoU(M, b))`` when ``IoU(M, b) >= iou_threshold``, else unchanged.

    A box whose current score is below ``score_threshold`` (at the start or after a decay) is
    discarded and never selected. A NaN IoU (zero-area boxes) counts as no overlap. The loop runs
    once per *selected* box (the method is sequential in its selections); each step is vectorised
    over the remaining boxes, and discarded boxes leave the later steps.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` format; float16/bfloat16 computed in float32.
        scores: ``Tensor[N]`` scores (NaN raises ``ValueError``).
        sigma: width of the Gaussian penalty, ``> 0`` (used by ``"gaussian"``).
        score_threshold: boxes scoring below it are discarded.
        method: ``"gaussian"`` or ``"linear"``.
        iou_threshold: overlap from which ``"linear"`` decays a score.

    Returns:
        ``(keep, new_scores)``: ``Tensor[K]`` int64 indices in selection order (non-increasing new
        score) and ``Tensor[K]`` their decayed scores (dtype of ``scores``; float32 for integer scores).
        Inputs may require grad; no gradient flows (``new_scores`` is detached).
    """
    boxes, scores = _check_inputs(boxes, scores)
    _check_no_nan(scores)
    if method not in ("gaussian", "linear"):
        raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}")
    sigma = check_number("sigma", sigma)
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be > 0 for the gaussian method, got {sigma}")
    score_threshold = check_number("score_threshold", score_threshold)
    iou_threshold = check_number("iou_threshold", iou_threshold)
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    work_dtype = torch.float64 if torch.float64 in (boxes.dtype, scores.dtype) else torch.float32
    current = scores.to(work_dtype)  # [N]
    ids = (current >= score_threshold).nonzero().squeeze(1)  # [R] input indices still in play
    coords = _coords(boxes, ids)  # [5, R]
    current = current[ids]
    keep, kept_scores = [], []
    while ids.shape[0] > 0:
        best = current.argmax()  # the first maximum: ties go to the lower index
        keep.append(ids[best])
        kept_scores.append(current[best])
        iou = _iou_with_one(coords[:, best], coords).nan_to_num_(nan=0.0)  # [R]
        if method == "gaussian":
            current = current * torch.exp(iou.mul_(iou).div_(-sigma))
        else:
            current = torch.where(iou >= iou_threshold, current * (1 - iou), current)
        alive = current >= score_threshold
        alive[best] = False
        alive = alive.nonzero().squeeze(1)
        ids, coords, current = ids[alive], coords[:, alive], current[alive]
    if not keep:
        empty = torch.empty(0, dtype=torch.int64, device=boxes.device)
        return empty, empty.to(out_dtype)
    return torch.stack(keep), torch.stack(kept_scores).to(out_dtype)
