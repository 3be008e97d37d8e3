"""Offset coding between anchors and boxes: ``BoxCoder.encode`` and its exact inverse ``BoxCoder.decode``.

Weights (10, 10, 5, 5) are the textbook's normalisation (sigma_x = sigma_y = 0.1, sigma_w = sigma_h = 0.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.ops._checks import check_same_device, check_tensor

__all__ = ["BoxCoder"]


def _boxes_like(name: str, value: object) -> Tensor:
    value = check_tensor(name, value)
    if value.dim() < 1 or value.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {list(value.shape)}")
    return value


def _compatible(name_a: str, a: Tensor, name_b: str, b: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    """Check that two ``[..., 4]`` tensors broadcast; return them in the compute dtype and the output dtype."""
    check_same_device(**{name_a: a, name_b: b})
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"{name_a} and {name_b} must broadcast, got shapes {list(a.shape)} and {list(b.shape)}"
        ) from None
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    if not out_dtype.is_floating_point:
        out_dtype = torch.float32
    # half precision loses the small offsets; compute in float32 and cast back
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    return a.to(compute), b.to(compute), out_dtype


class BoxCoder:
    """Encode boxes as offsets from anchors, and decode offsets back to boxes.

    With anchor centre ``(xa, ya)``, size ``(wa, ha)`` and box centre ``(x, y)``, size ``(w, h)``::

        dx = wx * (x - xa) / wa        dy = wy * (y - ya) / ha
        dw = ww * log(w / wa)          dh = wh * log(h / ha)

    the same as torchvision's ``BoxCoder.encode_single``/``decode_single`` (centres are
    ``x1 + 0.5 * w``, widths ``x2 - x1`` with no ``+ 1``). The textbook's ``offset_boxes`` adds
    ``eps = 1e-6`` inside the log; this coder does not, so that ``decode`` inverts ``encode``
    exactly (to float rounding); the two differ by at most ``ww * 1e-6 * wa / w``.

    Args:
        weights: ``(wx, wy, ww, wh)``; the default is the textbook's ``(1/0.1, 1/0.1, 1/0.2, 1/0.2)``.
        bbox_xform_clip: upper bound applied to ``dw / ww`` and ``dh / wh`` before ``exp`` in
            :meth:`decode` (the issue's ``clamp``; torchvision's name), so ``exp`` never overflows.
    """

    def __init__(
        self,
        weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be 4 positive finite numbers (wx, wy, ww, wh), got {weights}")
        self.weights = weights
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip})"

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Offsets of ``boxes`` relative to ``anchors``.

        Args:
            anchors: ``Tensor[..., 4]`` reference boxes ``(x1, y1, x2, y2)`` with positive sizes,
                broadcastable against ``boxes`` (e.g. ``[A, 4]`` against ``[B, A, 4]``).
            boxes: ``Tensor[..., 4]`` boxes ``(x1, y1, x2, y2)`` to encode.

        Returns:
            ``Tensor[..., 4]`` offsets ``(dx, dy, dw, dh)`` of the broadcast shape, float32 (float64
            if an input is float64; float16/bfloat16 inputs are computed in float32 and cast back).
            Zero-size anchors or boxes give inf/NaN, as in torchvision.
        """
        anchors = _boxes_like("anchors", anchors)
        boxes = _boxes_like("boxes", boxes)
        a, b, out_dtype = _compatible("anchors", anchors, "boxes", boxes)
        wx, wy, ww, wh = self.weights
        ax1, ay1, ax2, ay2 = a.unbind(-1)
        bx1, by1, bx2, by2 = b.unbind(-1)
        a_w, a_h = ax2 - ax1, ay2 - ay1
        a_cx, a_cy = ax1 + 0.5 * a_w, ay1 + 0.5 * a_h
        b_w, b_h = bx2 - bx1, by2 - by1
        b_cx, b_cy = bx1 + 0.5 * b_w, by1 + 0.5 * b_h
        offsets = torch.stack(
            (
                wx * (b_cx - a_cx) / a_w,
                wy * (b_cy - a_cy) / a_h,
                ww * torch.log(b_w / a_w),
                wh * torch.log(b_h / a_h),
            ),
            dim=-1,
        )
        return offsets.to(out_dtype)

    def decode(self, anchors: Tensor, offsets: Tensor) -> Tensor:
        """Boxes obtained by applying ``offsets`` to ``anchors`` (inverse of :meth:`encode`).

        Args:
            anchors: ``Tensor[..., 4]`` reference boxes ``(x1, y1, x2, y2)``, broadcastable against
                ``offsets``.
            offsets: ``Tensor[..., 4]`` ``(dx, dy, dw, dh)``; ``dw / ww`` and ``dh / wh`` are
                clamped at ``bbox_xform_clip`` before ``exp``.

        Returns:
            ``Tensor[..., 4]`` boxes ``(x1, y1, x2, y2)`` of the broadcast shape; dtypes as
            :meth:`encode`.
        """
        anchors = _boxes_like("anchors", anchors)
        offsets = _boxes_like("offsets", offsets)
        a, d, out_dtype = _compatible("anchors", anchors, "offsets", offsets)
        wx, wy, ww, wh = self.weights
        ax1, ay1, ax2, ay2 = a.unbind(-1)
        a_w, a_h = ax2 - ax1, ay2 - ay1
        a_cx, a_cy = ax1 + 0.5 * a_w, ay1 + 0.5 * a_h
        dx, dy, dw, dh = d.unbind(-1)
        dw = torch.clamp(dw / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(dh / wh, max=self.bbox_xform_clip)
        cx = dx / wx * a_w + a_cx
        cy = dy / wy * a_h + a_cy
        half_w = 0.5 * (torch.exp(dw) * a_w)
        half_h = 0.5 * (torch.exp(dh) * a_h)
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
        return boxes.to(out_dtype)
