"""Tiled (sliced) inference for large images with small objects: overlapping tiles, batched, merged by class-aware NMS.

``TiledPredictor(predictor, tile=640, overlap=0.2)`` has the :class:`~detkit.infer.predictor.Predictor` interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detkit.infer.predictor import Predictor, check_image_batch
from detkit.ops import batched_nms

__all__ = ["TiledPredictor", "tile_windows"]

#: a box within this many pixels of a tile edge inside the image is a cut view of its object
_EDGE = 2.0
#: a cut view is dropped when this fraction of it lies inside a whole view of the same class
_COVERED = 0.5


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``[0, length)`` with windows of ``tile``; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Overlapping square windows covering an image, row by row.

    Consecutive windows overlap by at least ``overlap`` of ``tile`` (the stride is ``floor(tile * (1 -
    overlap))``); the last window of a row or column is moved back to end at the border, so every window is
    ``tile`` pixels wide and high unless the image itself is smaller (then one window spans that side).

    Args:
        height, width: image size in pixels.
        tile: window side in pixels (>= 1).
        overlap: fraction of ``tile`` shared by neighbours, in ``[0, 1)``.

    Returns:
        ``(x1, y1, x2, y2)`` integer pixel windows.
    """
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile: expected a positive int (pixels), got {tile!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile_overlap: expected a fraction in [0, 1), got {overlap}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width: expected positive sizes, got {height} x {width}")
    stride = max(1, int(tile * (1.0 - overlap)))
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in _starts(height, tile, stride) for x in _starts(width, tile, stride)]


class TiledPredictor:
    """Detection on overlapping tiles of each image (plus, optionally, the whole image), merged back.

    Every tile of every image goes through ``predictor`` (its letterbox, thresholds, class filters; tiles are
    batched ``predictor.batch_size`` at a time); tile boxes are shifted back to the image, concatenated with
    the full-image pass when ``full_image`` is set, and merged: class-aware NMS at ``predictor.iou``, then a
    box cut by a tile edge (within 2 pixels of an edge inside the image) is dropped where at least half of it
    lies in a whole (uncut) box of its class; the ``predictor.max_det`` best remain. An object seen whole by
    two overlapping tiles, or cut in one tile and whole in its neighbour, is one detection; an object larger
    than the overlap keeps its cut views (run the full image for those).

    Args:
        predictor: the detection :class:`~detkit.infer.predictor.Predictor` (checkpoint or export).
        tile: tile side in original-image pixels.
        overlap: fraction of ``tile`` shared by neighbouring tiles, in ``[0, 1)``.
        full_image: also run the whole image (large objects that no tile holds).
    """

    def __init__(self, predictor: Predictor, *, tile: int, overlap: float = 0.2, full_image: bool = False) -> None:
        tile_windows(tile, tile, tile, overlap)  # validates tile and overlap
        self.predictor = predictor
        self.tile, self.overlap, self.full_image = tile, float(overlap), bool(full_image)

    def __getattr__(self, name: str) -> Any:  # classes, category_ids, batch_size, ... are the predictor's
        if name == "predictor":
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, Tensor]]:
        """Detect objects in RGB images of any sizes, tile by tile.

        Args:
            images: ``ndarray[H, W, 3]`` uint8 RGB images.

        Returns:
            One dict per image as :meth:`Predictor.predict`: ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)``
            original pixels, ``scores`` ``Tensor[K]`` (decreasing), ``labels`` and ``category_ids``
            ``Tensor[K]`` int64.
        """
        check_image_batch(images)
        crops: list[np.ndarray] = []
        owners: list[tuple[int, tuple[int, int, int, int], bool]] = []  # (image, window, whole image?) per crop
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            for window in tile_windows(h, w, self.tile, self.overlap):
                x1, y1, x2, y2 = window
                crops.append(np.ascontiguousarray(image[y1:y2, x1:x2]))
                owners.append((i, window, False))
            if self.full_image:
                crops.append(image)
                owners.append((i, (0, 0, w, h), True))
        parts: list[list[dict[str, Tensor]]] = [[] for _ in images]
        for (i, window, whole), det in zip(owners, self.predictor.predict(crops)):
            h, w = images[i].shape[:2]
            cut = torch.zeros_like(det["scores"], dtype=torch.bool) if whole else _cut(det["boxes"], window, (h, w))
            shift = torch.tensor(window[:2] * 2, dtype=det["boxes"].dtype)
            parts[i].append({**det, "boxes": det["boxes"] + shift, "cut": cut})
        return [self._merge(p) for p in parts]

    def _merge(self, parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """One image's tile detections: class-aware NMS, then cut views dropped where a whole view covers them."""
        merged = {key: torch.cat([p[key] for p in parts])
                  for key in ("boxes", "scores", "labels", "category_ids", "cut")}
        keep = batched_nms(merged["boxes"], merged["scores"], merged["labels"], self.predictor.iou)  # by score
        merged = {key: value[keep] for key, value in merged.items()}
        boxes, labels, cut = merged["boxes"], merged["labels"], merged["cut"]
        whole = ~cut
        if cut.any() and whole.any():
            a, b = boxes[cut], boxes[whole]  # [Nc, 4], [Nw, 4]
            wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2]))
            inter = wh.clamp(min=0).prod(-1)  # [Nc, Nw]
            area = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).clamp(min=1e-9)  # [Nc]
            covered = ((inter / area[:, None] >= _COVERED) & (labels[cut][:, None] == labels[whole][None, :])).any(1)
            drop = torch.zeros_like(cut)
            drop[cut.nonzero()[:, 0][covered]] = True
            merged = {key: value[~drop] for key, value in merged.items()}
        merged.pop("cut")
        return {key: value[: self.predictor.max_det] for key, value in merged.items()}


def _cut(boxes: Tensor, window: tuple[int, int, int, int], image_hw: tuple[int, int]) -> Tensor:
    """Bool ``Tensor[K]``: which tile boxes (tile pixels) touch a tile edge that is not an image edge."""
    x1, y1, x2, y2 = window
    h, w = image_hw
    tw, th = x2 - x1, y2 - y1
    return (((boxes[:, 0] <= _EDGE) & (x1 > 0)) | ((boxes[:, 1] <= _EDGE) & (y1 > 0))
            | ((boxes[:, 2] >= tw - _EDGE) & (x2 < w)) | ((boxes[:, 3] >= th - _EDGE) & (y2 < h)))
