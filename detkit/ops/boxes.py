"""Box basics: format conversion, areas, clipping, small-box removal and the IoU family.

torchvision 0.29's signatures and results for axis-aligned boxes (rotated formats are not supported); pairwise
IoU and GIoU are computed block by block in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.ops._checks import check_box_sets, check_same_device, check_tensor

__all__ = [
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "complete_box_iou",
    "distance_box_iou",
    "elementwise_box_iou",
    "elementwise_complete_box_iou",
    "elementwise_distance_box_iou",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "remove_small_boxes",
]

_FORMATS = ("xyxy", "xywh", "cxcywh")
# torchvision's rotated formats: detkit has no rotated IoU, so they are rejected with this message
_ROTATED_FORMATS = ("xywhr", "cxcywhr", "xyxyxyxy")

# Pairwise IoU works on row blocks of about this many [rows, M] elements so that the two scratch
# buffers stay in cache on CPU; on CUDA bigger blocks keep the number of kernel launches small.
_BLOCK_ELEMS_CPU = 1 << 18
_BLOCK_ELEMS_CUDA = 1 << 24

_Coords = tuple[Tensor, Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------------------------
# validation and dtype helpers
# --------------------------------------------------------------------------------------------
def _upcast(t: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 (areas overflow in half precision); float32/float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _last_dim_4(name: str, boxes: object) -> Tensor:
    boxes = check_tensor(name, boxes)
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {list(boxes.shape)}")
    return boxes


def _check_format(fmt: str, what: str) -> None:
    """``ValueError`` unless ``fmt`` is an axis-aligned format (rotated ones are named as unsupported)."""
    if fmt in _FORMATS:
        return
    if fmt in _ROTATED_FORMATS:
        raise ValueError(
            f"{what}: rotated box format fmt {fmt!r} is not supported by detkit; supported formats are {_FORMATS}"
        )
    raise ValueError(f"{what}: unsupported box format fmt {fmt!r}; supported formats are {_FORMATS}")


def _pair(boxes1: object, boxes2: object) -> tuple[Tensor, Tensor]:
    """Validate two ``Tensor[..., N, 4]``/``Tensor[..., M, 4]`` sets; return them as float32/float64.

    The leading (batch) dims must broadcast, as in torchvision.
    """
    b1 = _upcast(check_box_sets("boxes1", boxes1))
    b2 = _upcast(check_box_sets("boxes2", boxes2))
    check_same_device(boxes1=b1, boxes2=b2)
    try:
        torch.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the leading dims of boxes1 {list(b1.shape)} and boxes2 {list(b2.shape)} do not broadcast"
        ) from None
    dtype = torch.promote_types(b1.dtype, b2.dtype)
    return b1.to(dtype), b2.to(dtype)


def _corners(boxes: Tensor, fmt: str) -> tuple[Tensor, Tensor | None]:
    """``(x1, y1, x2, y2)`` of ``Tensor[..., 4]`` boxes in ``fmt``, and their areas ``w * h`` unless ``'xyxy'``.

    The arithmetic is torchvision's (``xy + wh``, ``c - wh / 2``, ``c + wh / 2``; area ``w * h``), so
    IoUs in every format agree with ``torchvision.ops.box_iou(..., fmt=fmt)`` bit for bit.
    """
    if fmt == "xyxy":
        return boxes, None
    xy, wh = boxes[..., :2], boxes[..., 2:]
    low, high = (xy, xy + wh) if fmt == "xywh" else (xy - wh / 2, xy + wh / 2)
    return torch.cat((low, high), dim=-1), wh[..., 0] * wh[..., 1]


def _paired(boxes1: object, boxes2: object) -> tuple[Tensor, Tensor]:
    """Validate two same-shaped ``Tensor[..., 4]`` sets for the element-wise ops."""
    b1 = _last_dim_4("boxes1", boxes1)
    b2 = _last_dim_4("boxes2", boxes2)
    if b1.shape != b2.shape:
        raise ValueError(
            f"boxes1 and boxes2 must have the same shape [..., 4], got {list(b1.shape)} and {list(b2.shape)}"
        )
    check_same_device(boxes1=b1, boxes2=b2)
    # integers and half precision compute in float32, float64 stays float64
    dtype = torch.promote_types(torch.promote_types(b1.dtype, b2.dtype), torch.float32)
    return b1.to(dtype), b2.to(dtype)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _pairwise_coords(boxes1: Tensor, boxes2: Tensor) -> tuple[_Coords, _Coords]:
    """Coordinates shaped ``[..., N, 1]`` and ``[..., 1, M]`` so the formulas below broadcast to ``[..., N, M]``."""
    a = tuple(c[..., :, None] for c in boxes1.unbind(-1))
    b = tuple(c[..., None, :] for c in boxes2.unbind(-1))
    return a, b  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# formulas on broadcastable coordinates (pairwise when shaped [N, 1] / [1, M], paired when equal)
# --------------------------------------------------------------------------------------------
def _inter_union(a: _Coords, b: _Coords, areas: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Intersection and union; ``areas`` (broadcast like ``a`` and ``b``) replace the areas of the corners."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    if areas is None:
        area_a, area_b = (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)
    else:
        area_a, area_b = areas
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = w * h
    return inter, area_a + area_b - inter


def _enclosing_wh(a: _Coords, b: _Coords) -> tuple[Tensor, Tensor]:
    """Width and height of the smallest box enclosing both boxes."""
    w = (torch.maximum(a[2], b[2]) - torch.minimum(a[0], b[0])).clamp(min=0)
    h = (torch.maximum(a[3], b[3]) - torch.minimum(a[1], b[1])).clamp(min=0)
    return w, h


def _iou(a: _Coords, b: _Coords, eps: float = 0.0, areas: tuple[Tensor, Tensor] | None = None) -> Tensor:
    inter, union = _inter_union(a, b, areas)
    return inter / (union + eps) if eps else inter / union


def _giou(a: _Coords, b: _Coords, eps: float = 0.0) -> Tensor:
    inter, union = _inter_union(a, b)
    iou = inter / (union + eps) if eps else inter / union
    wi, hi = _enclosing_wh(a, b)
    area_i = wi * hi
    return iou - (area_i - union) / (area_i + eps) if eps else iou - (area_i - union) / area_i


def _diou_iou(a: _Coords, b: _Coords, eps: float) -> tuple[Tensor, Tensor]:
    iou = _iou(a, b)
    wi, hi = _enclosing_wh(a, b)
    diagonal_sq = wi**2 + hi**2 + eps
    centre_dx = (a[0] + a[2]) / 2 - (b[0] + b[2]) / 2
    centre_dy = (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    centre_sq = centre_dx**2 + centre_dy**2
    return iou - centre_sq / diagonal_sq, iou


def _ciou(a: _Coords, b: _Coords, eps: float) -> Tensor:
    diou, iou = _diou_iou(a, b, eps)
    aspect_a = torch.atan((a[2] - a[0]) / (a[3] - a[1]))
    aspect_b = torch.atan((b[2] - b[0]) / (b[3] - b[1]))
    v = (4 / (math.pi**2)) * torch.pow(aspect_a - aspect_b, 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


# --------------------------------------------------------------------------------------------
# the fast pairwise path: in place, one output matrix plus small scratch blocks
# --------------------------------------------------------------------------------------------
def _iou_rows_into(out: Tensor, scratch: Tensor, a: _Coords, area_a: Tensor, b: _Coords, area_b: Tensor) -> Tensor:
    """Write the IoU of ``r`` boxes against ``M`` boxes into ``out`` (``Tensor[r, M]``), in place.

    ``a`` holds four ``[r, 1]`` coordinate columns, ``area_a`` is ``[r, 1]``; ``b`` holds four ``[M]``
    coordinate rows, ``area_b`` is ``[M]``; ``scratch`` is ``Tensor[2, r, M]``. The operations are
    those of :func:`_inter_union` in the same order, so the values are bit for bit the same.
    """
    t, u = scratch[0], scratch[1]
    torch.minimum(a[2], b[2], out=out)
    out.sub_(torch.maximum(a[0], b[0], out=t)).clamp_(min=0)  # intersection width
    torch.minimum(a[3], b[3], out=t)
    t.sub_(torch.maximum(a[1], b[1], out=u)).clamp_(min=0)  # intersection height
    out.mul_(t)  # intersection area
    torch.add(area_a, area_b, out=t).sub_(out)  # union
    return out.div_(t)


def _block_rows(num_cols: int, device: torch.device) -> int:
    """Rows per block so that one ``[rows, num_cols]`` block holds about the block budget."""
    budget = _BLOCK_ELEMS_CUDA if device.type == "cuda" else _BLOCK_ELEMS_CPU
    return max(1, budget // max(1, num_cols))


def _pairwise_iou_inplace(
    boxes1: Tensor, boxes2: Tensor, generalized: bool, areas: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """IoU (or GIoU) of ``Tensor[..., N, 4]`` x ``Tensor[..., M, 4]`` written block by block into one ``[..., N, M]``.

    Same arithmetic, in the same order, as the out-of-place formulas, so the results are identical;
    no ``[N, M, 2]`` intermediate exists. Extra memory: two (four for GIoU) scratch buffers of
    ``rows x M`` elements with ``rows * M`` about 2**18 on CPU. ``areas`` (``Tensor[..., N]``,
    ``Tensor[..., M]``) replace the areas of the corners. Leading dims broadcast; one batch
    element is written at a time.
    """
    batch = torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    n, m = boxes1.shape[-2], boxes2.shape[-2]
    if areas is None:
        areas = (_corner_areas(boxes1), _corner_areas(boxes2))
    count = math.prod(batch)
    b1, b2 = boxes1.expand(*batch, n, 4).reshape(count, n, 4), boxes2.expand(*batch, m, 4).reshape(count, m, 4)
    a1, a2 = areas[0].expand(*batch, n).reshape(count, n), areas[1].expand(*batch, m).reshape(count, m)
    out = boxes1.new_empty((count, n, m))
    if n and m:
        for i in range(count):
            _pairwise_iou_into(out[i], b1[i], b2[i], a1[i], a2[i], generalized)
    return out.view(*batch, n, m)


def _corner_areas(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _pairwise_iou_into(
    out: Tensor, boxes1: Tensor, boxes2: Tensor, area1: Tensor, area2: Tensor, generalized: bool
) -> None:
    """Write the IoU (or GIoU) of ``Tensor[N, 4]`` x ``Tensor[M, 4]`` into ``out`` (``Tensor[N, M]``), in row blocks."""
    n, m = boxes1.shape[0], boxes2.shape[0]
    rows = min(n, _block_rows(m, boxes1.device))
    scratch = boxes1.new_empty((4 if generalized else 2, rows, m))
    area1 = area1[:, None]  # [N, 1]
    b = tuple(boxes2.t().contiguous().unbind(0))  # four [M]
    cols1 = boxes1.t().contiguous()[:, :, None]  # [4, N, 1]
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        o = out[start:stop]  # [r, M], a contiguous view
        blk = scratch[:, : stop - start]  # [2 or 4, r, M]
        a = tuple(cols1[:, start:stop].unbind(0))  # four [r, 1]
        _iou_rows_into(o, blk, a, area1[start:stop], b, area2)  # type: ignore[arg-type]
        if generalized:
            t, u, v, w = blk.unbind(0)  # t still holds the union
            torch.maximum(a[2], b[2], out=u)
            u.sub_(torch.minimum(a[0], b[0], out=v)).clamp_(min=0)  # enclosing width
            torch.maximum(a[3], b[3], out=v)
            v.sub_(torch.minimum(a[1], b[1], out=w)).clamp_(min=0)  # enclosing height
            u.mul_(v)  # enclosing area
            o.sub_(torch.sub(u, t, out=v).div_(u))  # IoU - (enclosing - union) / enclosing


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between ``'xyxy'``, ``'xywh'`` and ``'cxcywh'``.

    ``'xyxy'`` is ``(x1, y1, x2, y2)`` corners, ``'xywh'`` is the top-left corner plus width and
    height, ``'cxcywh'`` is the centre plus width and height. torchvision 0.29's rotated formats
    (``'xywhr'``, ``'cxcywhr'``, ``'xyxyxyxy'``) are not supported: they raise ``ValueError``.

    Args:
        boxes: ``Tensor[..., 4]`` boxes in ``in_fmt``; any number of leading dimensions.
        in_fmt: format of ``boxes``.
        out_fmt: format wanted.

    Returns:
        ``Tensor[..., 4]`` in ``out_fmt`` (a copy, even when the formats are equal). The dtype is
        kept, except that integer boxes become float32 whenever ``'cxcywh'`` is involved (its
        centres are halves), as in torchvision.

    Raises:
        ValueError: an unknown format, or ``boxes`` not shaped ``[..., 4]``.
    """
    if in_fmt not in _FORMATS or out_fmt not in _FORMATS:
        rotated = [f for f in (in_fmt, out_fmt) if f in _ROTATED_FORMATS]
        why = f" (rotated formats such as {rotated[0]!r} are not supported by detkit)" if rotated else ""
        raise ValueError(
            f"Unsupported box conversion for in_fmt {in_fmt!r} and out_fmt {out_fmt!r}{why}; "
            f"supported formats are {_FORMATS}"
        )
    boxes = _last_dim_4("boxes", boxes)
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    # (a, b, c, d) is now (x1, y1, x2, y2)
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = (a + c) / 2, (b + d) / 2, c - a, d - b
    return torch.stack((a, b, c, d), dim=-1)


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of each box.

    Args:
        boxes: ``Tensor[..., 4]`` boxes in ``fmt`` (``'xyxy'`` by default: ``(x1, y1, x2, y2)``).
            Degenerate boxes (``x2 < x1``) give negative areas, as in torchvision.
        fmt: ``'xyxy'``, ``'xywh'`` or ``'cxcywh'``.

    Returns:
        ``Tensor[...]`` areas. float16/bfloat16 are computed and returned in float32; int32/int64
        stay integer (exact), smaller integer types become int32 -- torchvision's dtypes.
    """
    _check_format(fmt, "box_area")
    boxes = _last_dim_4("boxes", boxes)
    if boxes.is_floating_point():
        boxes = _upcast(boxes)
    elif boxes.dtype not in (torch.int32, torch.int64):
        boxes = boxes.int()
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Intersection over union of every pair of boxes.

    Args:
        boxes1: ``Tensor[..., N, 4]`` boxes in ``fmt``; any leading (batch) dims.
        boxes2: ``Tensor[..., M, 4]`` boxes in ``fmt``; leading dims that broadcast with ``boxes1``'s.
        fmt: ``'xyxy'`` (``(x1, y1, x2, y2)``, the default), ``'xywh'`` or ``'cxcywh'``, as in
            torchvision 0.29. Its rotated formats (``'xywhr'``, ``'cxcywhr'``, ``'xyxyxyxy'``) are
            not supported and raise ``ValueError``.

    Returns:
        ``Tensor[..., N, M]`` IoU values, in float32 for float16/bfloat16/integer input and in
        float64 for float64 input (torchvision's dtypes). Two zero-area boxes give 0/0 = NaN, as in
        torchvision. For ``'xywh'``/``'cxcywh'`` the corners and areas (``w * h``) are computed as
        torchvision does, so the values are its values.

    Memory: the ``[..., N, M]`` result plus two scratch blocks of about 2**18 elements on CPU (2**24
    on CUDA) -- ``4 * N * M`` bytes in float32 instead of about ``32 * N * M`` for torchvision's
    ``[N, M, 2]`` intermediates. When an input requires grad, a differentiable out-of-place path
    is used instead (a few ``[..., N, M]`` temporaries).
    """
    _check_format(fmt, "box_iou")
    b1, b2 = _pair(boxes1, boxes2)
    (b1, area1), (b2, area2) = _corners(b1, fmt), _corners(b2, fmt)
    areas = None if area1 is None or area2 is None else (area1, area2)
    if _needs_grad(b1, b2):
        a, b = _pairwise_coords(b1, b2)
        return _iou(a, b, areas=None if areas is None else (areas[0][..., :, None], areas[1][..., None, :]))
    return _pairwise_iou_inplace(b1, b2, generalized=False, areas=areas)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU (IoU minus the empty fraction of the enclosing box) of every pair of boxes.

    Args:
        boxes1: ``Tensor[..., N, 4]`` boxes in ``(x1, y1, x2, y2)`` format; any leading (batch) dims.
        boxes2: ``Tensor[..., M, 4]`` boxes in ``(x1, y1, x2, y2)`` format; leading dims that
            broadcast with ``boxes1``'s. (torchvision 0.29 has no ``fmt`` here either.)

    Returns:
        ``Tensor[..., N, M]`` values in ``[-1, 1]`` for valid boxes; dtypes as :func:`box_iou`.

    Memory: the ``[..., N, M]`` result plus four scratch blocks (see :func:`box_iou`).
    """
    b1, b2 = _pair(boxes1, boxes2)
    if _needs_grad(b1, b2):
        return _giou(*_pairwise_coords(b1, b2))
    return _pairwise_iou_inplace(b1, b2, generalized=True)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Distance IoU (IoU minus squared centre distance over squared enclosing diagonal) of every pair.

    Args:
        boxes1: ``Tensor[..., N, 4]`` boxes in ``(x1, y1, x2, y2)`` format; any leading (batch) dims.
        boxes2: ``Tensor[..., M, 4]`` boxes in ``(x1, y1, x2, y2)`` format; leading dims that
            broadcast with ``boxes1``'s.
        eps: added to the squared diagonal to avoid division by zero.

    Returns:
        ``Tensor[..., N, M]``; dtypes as :func:`box_iou`. Uses a few ``[..., N, M]`` temporaries (no
        ``[N, M, 2]`` ones).
    """
    b1, b2 = _pair(boxes1, boxes2)
    return _diou_iou(*_pairwise_coords(b1, b2), eps)[0]


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (distance IoU minus an aspect-ratio consistency term) of every pair of boxes.

    Args:
        boxes1: ``Tensor[..., N, 4]`` boxes in ``(x1, y1, x2, y2)`` format; any leading (batch) dims.
        boxes2: ``Tensor[..., M, 4]`` boxes in ``(x1, y1, x2, y2)`` format; leading dims that
            broadcast with ``boxes1``'s.
        eps: small number that prevents division by zero.

    Returns:
        ``Tensor[..., N, M]``; dtypes as :func:`box_iou`. The trade-off weight ``alpha`` carries no
        gradient, as in the paper and torchvision.
    """
    b1, b2 = _pair(boxes1, boxes2)
    return _ciou(*_pairwise_coords(b1, b2), eps)


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 0.0) -> Tensor:
    """IoU of each box with the box at the same position (differentiable; for losses).

    Args:
        boxes1: ``Tensor[..., 4]`` boxes in ``(x1, y1, x2, y2)`` format.
        boxes2: ``Tensor[..., 4]`` boxes, same shape as ``boxes1``.
        eps: added to the union. With the default 0 the result is exactly the diagonal of
            :func:`box_iou`; ``eps=1e-7`` matches torchvision's IoU-based losses.

    Returns:
        ``Tensor[...]`` IoU values (float32 unless an input is float64).
    """
    b1, b2 = _paired(boxes1, boxes2)
    return _iou(b1.unbind(-1), b2.unbind(-1), eps)  # type: ignore[arg-type]


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 0.0) -> Tensor:
    """Generalized IoU of each box with the box at the same position (differentiable).

    Args:
        boxes1: ``Tensor[..., 4]`` boxes in ``(x1, y1, x2, y2)`` format.
        boxes2: ``Tensor[..., 4]`` boxes, same shape as ``boxes1``.
        eps: added to the union and to the enclosing area. With 0 the result is the diagonal of
            :func:`generalized_box_iou`; ``1 - result`` with ``eps=1e-7`` is torchvision's
            ``generalized_box_iou_loss``.

    Returns:
        ``Tensor[...]`` values in ``[-1, 1]`` for valid boxes.
    """
    b1, b2 = _paired(boxes1, boxes2)
    return _giou(b1.unbind(-1), b2.unbind(-1), eps)  # type: ignore[arg-type]


def elementwise_distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Distance IoU of each box with the box at the same position (differentiable).

    Args:
        boxes1: ``Tensor[..., 4]`` boxes in ``(x1, y1, x2, y2)`` format.
        boxes2: ``Tensor[..., 4]`` boxes, same shape as ``boxes1``.
        eps: added to the squared enclosing diagonal; the result is the diagonal of
            :func:`distance_box_iou` with the same ``eps``.

    Returns:
        ``Tensor[...]`` values in ``[-1, 1]`` for valid boxes.
    """
    b1, b2 = _paired(boxes1, boxes2)
    return _diou_iou(b1.unbind(-1), b2.unbind(-1), eps)[0]  # type: ignore[arg-type]


def elementwise_complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of each box with the box at the same position (differentiable).

    Args:
        boxes1: ``Tensor[..., 4]`` boxes in ``(x1, y1, x2, y2)`` format.
        boxes2: ``Tensor[..., 4]`` boxes, same shape as ``boxes1``.
        eps: as in :func:`complete_box_iou`; the result is its diagonal.

    Returns:
        ``Tensor[...]`` values; ``alpha`` carries no gradient.
    """
    b1, b2 = _paired(boxes1, boxes2)
    return _ciou(b1.unbind(-1), b2.unbind(-1), eps)  # type: ignore[arg-type]


def clip_boxes_to_image(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Clip boxes so that they lie inside an image.

    Args:
        boxes: ``Tensor[..., 4]`` boxes in ``(x1, y1, x2, y2)`` format, any dtype (kept).
        size: ``(height, width)`` of the image in the units of ``boxes`` (pixels).

    Returns:
        ``Tensor[..., 4]`` with x clamped to ``[0, width]`` and y to ``[0, height]``.
    """
    boxes = _last_dim_4("boxes", boxes)
    if isinstance(size, Tensor):
        size = size.tolist()
    if len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size!r}")
    height, width = size
    boxes_x = boxes[..., 0::2].clamp(min=0, max=width)
    boxes_y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((boxes_x, boxes_y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    Args:
        boxes: ``Tensor[N, 4]`` boxes in ``(x1, y1, x2, y2)`` format.
        min_size: minimum side length, in the units of ``boxes``.

    Returns:
        ``Tensor[K]`` int64 indices into ``boxes``, increasing. Boxes with NaN sides are removed.
    """
    boxes = check_tensor("boxes", boxes)
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    keep = (ws >= min_size) & (hs >= min_size)
    return torch.where(keep)[0]
