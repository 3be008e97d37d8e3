"""Anchor boxes: the textbook's per-pixel ``multibox_prior``, multi-level ``AnchorGenerator`` and SSD defaults.

All three order anchors row, column, anchor (anchor fastest) within a feature level, levels in order.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit.ops._checks import check_tensor

__all__ = ["AnchorGenerator", "DefaultBoxGenerator", "MultiboxPriorGenerator", "multibox_prior"]

_Key = tuple[tuple[tuple[int, int], ...], tuple[int, int], torch.dtype, torch.device]


def _positive_numbers(name: str, values: object) -> list[float]:
    """Validate a non-empty sequence of positive finite numbers."""
    if isinstance(values, Tensor):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive numbers, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must contain positive finite numbers, got {values!r}")
    return list(values)


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.float32


def _hw(name: str, value: object) -> tuple[int, int]:
    """Validate a ``(height, width)`` pair of non-negative integers."""
    if isinstance(value, Tensor):
        value = value.tolist()
    try:
        h, w = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (height, width) pair of integers, got {value!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return h, w


def multibox_prior(data: Tensor, sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """Anchors centred on every pixel of a feature map (*Dive into Deep Learning*, anchor boxes).

    Each pixel gets ``n + m - 1`` anchors: ``(s_i, r_1)`` for every size, then ``(s_1, r_j)`` for
    the other ratios. ``ratio`` is width/height and the width is multiplied by ``H / W`` so that a
    ratio of 1 is square in pixels: ``w = s * sqrt(r) * H / W``, ``h = s / sqrt(r)``, both
    relative to the map, centred at ``((j + 0.5) / W, (i + 0.5) / H)``. The arithmetic is the
    book's, so its published values come out bit for bit.

    Args:
        data: ``Tensor[..., H, W]`` feature map, usually ``(B, C, H, W)``; only its last two sizes,
            device and dtype are used.
        sizes: ``n`` anchor sizes as fractions of the map (e.g. ``[0.75, 0.5, 0.25]``).
        ratios: ``m`` width/height ratios (e.g. ``[1, 2, 0.5]``).

    Returns:
        ``Tensor[1, H * W * (n + m - 1), 4]`` normalised ``(x1, y1, x2, y2)``, ordered row, column,
        anchor; on ``data``'s device, in its dtype when floating (computed in float32, or float64
        for float64) and float32 otherwise. Anchors may extend beyond ``[0, 1]``.
    """
    data = check_tensor("data", data)
    if data.dim() < 2:
        raise ValueError(f"data must have shape [..., H, W] (usually [B, C, H, W]), got {list(data.shape)}")
    sizes = _positive_numbers("sizes", sizes)
    ratios = _positive_numbers("ratios", ratios)
    height, width = data.shape[-2:]
    out_dtype = _float_dtype(data.dtype)
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    per_pixel = len(sizes) + len(ratios) - 1
    if height == 0 or width == 0:
        return torch.empty((1, 0, 4), dtype=out_dtype, device=data.device)
    device = data.device

    size_t = torch.tensor(sizes, dtype=dtype, device=device)  # [n]
    sqrt_r = torch.tensor(ratios, dtype=dtype, device=device).sqrt()  # [m]
    w = torch.cat((size_t * sqrt_r[0], sizes[0] * sqrt_r[1:])) * height / width  # [n + m - 1]
    h = torch.cat((size_t / sqrt_r[0], sizes[0] / sqrt_r[1:]))  # [n + m - 1]
    half = torch.stack((-w, -h, w, h), dim=1) / 2  # [k, 4]

    cy = (torch.arange(height, dtype=dtype, device=device) + 0.5) * (1.0 / height)  # [H]
    cx = (torch.arange(width, dtype=dtype, device=device) + 0.5) * (1.0 / width)  # [W]
    # One row of the map as a flat [W * k * 4] pattern holding x centres + half sizes (y centre 0);
    # every row i is then that pattern plus cy[i] on the y coordinates, in a single contiguous op.
    is_y = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=dtype, device=device)  # [4]
    row = (cx[:, None, None] * (1 - is_y) + half).reshape(-1)  # [W * k * 4]
    y_mask = is_y.repeat(width * per_pixel)  # [W * k * 4]
    anchors = torch.addcmul(row[None, :], cy[:, None], y_mask[None, :])  # [H, W * k * 4]
    return anchors.reshape(1, height * width * per_pixel, 4).to(out_dtype)


class _LRUCache:
    """A tiny bounded least-recently-used cache for generated anchor grids."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"cache_size must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._items: OrderedDict[_Key, Tensor] = OrderedDict()

    def get(self, key: _Key) -> Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: _Key, value: Tensor) -> None:
        if self.maxsize == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class _GridAnchorModule(nn.Module):
    """Shared plumbing: validation of levels, the per-shape cache and ``forward`` over a batch."""

    def __init__(self, num_levels: int, cache_size: int) -> None:
        super().__init__()
        self._num_levels = num_levels
        self._cache = _LRUCache(cache_size)

    def _compute(self, feature_shapes: list[tuple[int, int]], image_size: tuple[int, int]) -> Tensor:
        raise NotImplementedError  # implemented by subclasses

    def num_anchors_per_location(self) -> list[int]:
        raise NotImplementedError  # implemented by subclasses

    def grid_anchors(
        self,
        feature_shapes: Sequence[Sequence[int]],
        image_size: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """All anchors for one image, cached per (feature shapes, image size, dtype, device).

        Args:
            feature_shapes: one ``(h, w)`` per feature level, in level order.
            image_size: ``(H, W)`` of the (padded) input image in pixels.
            dtype: floating dtype of the result (integers give float32).
            device: device of the result (default CPU).

        Returns:
            ``Tensor[A, 4]`` pixel ``(x1, y1, x2, y2)``, ``A = sum_l h_l * w_l * k_l``, ordered
            level, row, column, anchor. The tensor is shared with the cache: clone before
            modifying it in place.
        """
        shapes = tuple(_hw(f"feature_shapes[{i}]", s) for i, s in enumerate(feature_shapes))
        if len(shapes) != self._num_levels:
            raise ValueError(
                f"got {len(shapes)} feature levels but the generator was built for {self._num_levels} "
                f"levels (one sizes/aspect_ratios entry per level)"
            )
        size = _hw("image_size", image_size)
        dtype = _float_dtype(dtype)
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (shapes, size, dtype, device)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self._compute(list(shapes), size).to(dtype=dtype, device=device)
            self._cache.put(key, anchors)
        return anchors

    def forward(self, images: Tensor, features: Sequence[Tensor]) -> list[Tensor]:
        """Anchors for every image of a batch.

        Args:
            images: ``Tensor[B, C, H, W]`` (padded) image batch; only ``B``, ``H`` and ``W`` are used.
            features: one ``Tensor[B, C_l, h_l, w_l]`` per level; their sizes give the grids and the
                first one gives dtype and device.

        Returns:
            ``B`` tensors ``Tensor[A, 4]`` in pixel ``(x1, y1, x2, y2)`` (independent copies).
        """
        images = check_tensor("images", images)
        if images.dim() != 4:
            raise ValueError(f"images must have shape [B, C, H, W], got {list(images.shape)}")
        if isinstance(features, Tensor) or len(features) == 0:
            raise ValueError("features must be a non-empty list of [B, C, h, w] tensors, one per level")
        for i, f in enumerate(features):
            check_tensor(f"features[{i}]", f)
            if f.dim() < 2:
                raise ValueError(f"features[{i}] must have shape [B, C, h, w], got {list(f.shape)}")
        anchors = self.grid_anchors(
            [tuple(f.shape[-2:]) for f in features],
            tuple(images.shape[-2:]),
            dtype=features[0].dtype,
            device=features[0].device,
        )
        return [anchors.clone() for _ in range(images.shape[0])]


class AnchorGenerator(_GridAnchorModule):
    """Multi-level anchors in pixel coordinates, equal to torchvision's ``AnchorGenerator``.

    Level ``l`` places ``len(sizes[l]) * len(aspect_ratios[l])`` anchors at every cell of its
    ``h x w`` grid. The aspect ratio is **height / width** (torchvision's convention, unlike
    :func:`multibox_prior`): ``h = size * sqrt(r)``, ``w = size / sqrt(r)``, rounded to whole
    pixels, ordered ratio-major then size. Anchors are centred on the cell corners
    ``(j * stride_w, i * stride_h)`` with integer strides ``H // h`` and ``W // w``.

    Args:
        sizes: one tuple of sizes (pixels, side of the square anchor) per level; a flat tuple means
            one size per level.
        aspect_ratios: one tuple of height/width ratios per level; a flat tuple is used for every
            level.
        cache_size: how many generated grids to keep (least recently used dropped first).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] | Sequence[float] = ((128, 256, 512),),
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float] = ((0.5, 1.0, 2.0),),
        cache_size: int = 8,
    ) -> None:
        if len(sizes) == 0:
            raise ValueError("sizes must hold one tuple of sizes per feature level, got an empty sequence")
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)  # type: ignore[misc]
        if len(aspect_ratios) > 0 and not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)  # type: ignore[arg-type]
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"sizes and aspect_ratios must have one entry per feature level, got {len(sizes)} sizes "
                f"and {len(aspect_ratios)} aspect_ratios"
            )
        super().__init__(len(sizes), cache_size)
        self.sizes = tuple(tuple(_positive_numbers(f"sizes[{i}]", s)) for i, s in enumerate(sizes))
        self.aspect_ratios = tuple(
            tuple(_positive_numbers(f"aspect_ratios[{i}]", r)) for i, r in enumerate(aspect_ratios)
        )
        self.cell_anchors = [self._cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]

    @staticmethod
    def _cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
        """Zero-centred ``Tensor[len(ratios) * len(sizes), 4]`` xyxy, rounded to whole pixels."""
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        h_ratios = torch.as_tensor(ratios, dtype=torch.float32).sqrt()
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack((-ws, -hs, ws, hs), dim=1) / 2).round()

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per grid cell for each level."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def _compute(self, feature_shapes: list[tuple[int, int]], image_size: tuple[int, int]) -> Tensor:
        per_level = []
        for (h, w), cell in zip(feature_shapes, self.cell_anchors):
            stride_h = image_size[0] // h if h else 0
            stride_w = image_size[1] // w if w else 0
            sx = (torch.arange(w, dtype=torch.int64) * stride_w)[None, :].expand(h, w)  # [h, w]
            sy = (torch.arange(h, dtype=torch.int64) * stride_h)[:, None].expand(h, w)  # [h, w]
            shifts = torch.stack((sx, sy, sx, sy), dim=-1)  # [h, w, 4]
            per_level.append((shifts[:, :, None, :] + cell).reshape(-1, 4))  # [h * w * k, 4]
        return torch.cat(per_level)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, aspect_ratios={self.aspect_ratios})"


class DefaultBoxGenerator(_GridAnchorModule):
    """SSD default boxes in pixel coordinates, equal to torchvision's ``DefaultBoxGenerator``.

    Level ``k`` (of ``L``) has scale ``s_k`` linearly spaced from ``min_ratio`` to ``max_ratio``
    (``s_L = 1``; a single level uses ``[min_ratio, max_ratio]``) and, per cell: a square of side
    ``s_k``, a square of side ``sqrt(s_k * s_{k+1})``, then ``(s_k sqrt(a), s_k / sqrt(a))`` and
    its transpose for each aspect ratio ``a`` (width/height). Sizes are fractions of the image
    width and height; centres are ``((j + 0.5) / w, (i + 0.5) / h)`` or, with ``steps``,
    ``(j + 0.5) * step / W``. Computed in float32 (as torchvision) and cast to the dtype asked.

    Args:
        aspect_ratios: one sequence of ratios per level (e.g. ``[[2], [2, 3], [2, 3], [2], [2]]``).
        min_ratio: smallest scale, used when ``scales`` is not given.
        max_ratio: largest scale, used when ``scales`` is not given.
        scales: ``L + 1`` explicit scales (overrides ``min_ratio``/``max_ratio``).
        steps: one pixel step per level, to tile independently of the feature size.
        clip: clamp the normalised widths and heights to ``[0, 1]`` (the box corners are not
            clipped; use :func:`~detkit.ops.clip_boxes_to_image` for that).
        cache_size: how many generated grids to keep.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]],
        min_ratio: float = 0.15,
        max_ratio: float = 0.9,
        scales: Sequence[float] | None = None,
        steps: Sequence[int] | None = None,
        clip: bool = True,
        cache_size: int = 8,
    ) -> None:
        levels = len(aspect_ratios)
        if levels == 0:
            raise ValueError("aspect_ratios must hold one sequence of ratios per feature level, got none")
        if steps is not None and len(steps) != levels:
            raise ValueError(
                f"aspect_ratios and steps must have one entry per level, got {levels} aspect_ratios "
                f"and {len(steps)} steps"
            )
        if scales is not None and len(scales) != levels + 1:
            raise ValueError(
                f"scales must have len(aspect_ratios) + 1 = {levels + 1} entries, got {len(scales)}"
            )
        if scales is None and not 0 < min_ratio <= max_ratio:
            raise ValueError(f"need 0 < min_ratio <= max_ratio, got min_ratio={min_ratio}, max_ratio={max_ratio}")
        super().__init__(levels, cache_size)
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        for i, r in enumerate(self.aspect_ratios):
            if r:
                _positive_numbers(f"aspect_ratios[{i}]", r)
        self.steps = None if steps is None else list(_positive_numbers("steps", steps))
        self.clip = clip
        if scales is not None:
            self.scales = list(_positive_numbers("scales", scales))
        elif levels > 1:
            span = max_ratio - min_ratio
            self.scales = [min_ratio + span * k / (levels - 1.0) for k in range(levels)] + [1.0]
        else:
            self.scales = [min_ratio, max_ratio]
        self._wh_pairs = [self._level_wh(k) for k in range(levels)]

    def _level_wh(self, k: int) -> Tensor:
        """Normalised ``Tensor[2 + 2 * len(aspect_ratios[k]), 2]`` (width, height) pairs of level k."""
        s_k = self.scales[k]
        s_prime = math.sqrt(s_k * self.scales[k + 1])
        pairs = [[s_k, s_k], [s_prime, s_prime]]
        for ar in self.aspect_ratios[k]:
            root = math.sqrt(ar)
            pairs += [[s_k * root, s_k / root], [s_k / root, s_k * root]]
        return torch.as_tensor(pairs, dtype=torch.float32)

    def num_anchors_per_location(self) -> list[int]:
        """Default boxes per grid cell for each level."""
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def _compute(self, feature_shapes: list[tuple[int, int]], image_size: tuple[int, int]) -> Tensor:
        per_level = []
        for k, (h, w) in enumerate(feature_shapes):
            if self.steps is not None:
                cells_x, cells_y = image_size[1] / self.steps[k], image_size[0] / self.steps[k]
            else:
                cells_x, cells_y = w, h
            cx = ((torch.arange(w) + 0.5) / cells_x).to(torch.float32)[None, :].expand(h, w)  # [h, w]
            cy = ((torch.arange(h) + 0.5) / cells_y).to(torch.float32)[:, None].expand(h, w)  # [h, w]
            wh = self._wh_pairs[k].clamp(min=0, max=1) if self.clip else self._wh_pairs[k]  # [k, 2]
            centres = torch.stack((cx, cy), dim=-1)[:, :, None, :]  # [h, w, 1, 2]
            per_level.append(torch.cat(torch.broadcast_tensors(centres, wh), dim=-1).reshape(-1, 4))
        boxes = torch.cat(per_level)  # [A, 4] normalised (cx, cy, w, h)
        scale = torch.tensor([image_size[1], image_size[0]])
        return torch.cat(
            ((boxes[:, :2] - 0.5 * boxes[:, 2:]) * scale, (boxes[:, :2] + 0.5 * boxes[:, 2:]) * scale), dim=-1
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(aspect_ratios={self.aspect_ratios}, clip={self.clip}, "
            f"scales={self.scales}, steps={self.steps})"
        )


class MultiboxPriorGenerator(_GridAnchorModule):
    """The textbook's :func:`multibox_prior` on several levels, in pixels, cached per shape like the others.

    Level ``l`` gets ``multibox_prior`` of its ``(h_l, w_l)`` map with ``sizes[l]`` and ``ratios[l]``
    (``len(sizes[l]) + len(ratios[l]) - 1`` anchors per cell), scaled by the image's width and height.

    Args:
        sizes: per-level anchor sizes, fractions of the map (e.g. TinySSD's ``[[0.2, 0.272], ...]``).
        ratios: per-level width/height ratios.
        cache_size: how many generated grids to keep.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]], cache_size: int = 8) -> None:
        if len(sizes) == 0 or len(sizes) != len(ratios):
            raise ValueError(f"sizes and ratios need one entry per level, got {len(sizes)} and {len(ratios)}")
        super().__init__(len(sizes), cache_size)
        self.sizes = [_positive_numbers(f"sizes[{i}]", s) for i, s in enumerate(sizes)]
        self.ratios = [_positive_numbers(f"ratios[{i}]", r) for i, r in enumerate(ratios)]

    def num_anchors_per_location(self) -> list[int]:
        """Anchors per grid cell for each level."""
        return [len(s) + len(r) - 1 for s, r in zip(self.sizes, self.ratios)]

    def _compute(self, feature_shapes: list[tuple[int, int]], image_size: tuple[int, int]) -> Tensor:
        height, width = image_size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        per_level = [multibox_prior(torch.empty(0, h, w), s, r)[0]  # [h * w * k, 4] fractions of the map
                     for (h, w), s, r in zip(feature_shapes, self.sizes, self.ratios)]
        return torch.cat(per_level) * scale

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, ratios={self.ratios})"
