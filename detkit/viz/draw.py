"""Drawing detections on images: boxes with class names and scores, and grids of ground truth beside predictions.

Pure numpy/OpenCV on ``ndarray[H, W, 3]`` uint8 RGB images; used by inference writers and validation reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from torch import Tensor

__all__ = ["PALETTE", "as_numpy", "draw_detections", "render_prediction_grid", "tile_grid"]

#: distinct colours (RGB) cycled over class labels when drawing
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40), (128, 0, 0),
)  # fmt: skip


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray | Tensor,
    labels: np.ndarray | Tensor | Sequence[int],
    classes: Sequence[str],
    scores: np.ndarray | Tensor | None = None,
    color: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Draw boxes with class names (and scores) on a copy of an image.

    Args:
        image: ``ndarray[H, W, 3]`` uint8 RGB.
        boxes: ``[N, 4]`` in ``(x1, y1, x2, y2)`` format, the image's pixels.
        labels: ``[N]`` contiguous labels indexing ``classes``.
        classes: class names.
        scores: ``[N]`` confidences shown after the name, or None (e.g. ground truth).
        color: one RGB colour for every box; None colours by label.

    Returns:
        ``ndarray[H, W, 3]`` uint8 RGB, the annotated copy.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an ndarray[H, W, 3] uint8 RGB, got {getattr(image, 'shape', None)}")
    boxes = as_numpy(boxes, np.float64).reshape(-1, 4)
    labels = as_numpy(labels, np.int64).reshape(-1)
    scores_np = None if scores is None else as_numpy(scores, np.float64).reshape(-1)
    if len(labels) != len(boxes) or (scores_np is not None and len(scores_np) != len(boxes)):
        raise ValueError(f"boxes, labels and scores must have one row per box, got {len(boxes)}, {len(labels)}, "
                         f"{None if scores_np is None else len(scores_np)}")
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    font_scale = max(0.35, max(h, w) / 1200)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        rgb = color or PALETTE[int(label) % len(PALETTE)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), rgb, thickness)
        name = classes[label] if 0 <= label < len(classes) else str(int(label))
        text = name if scores_np is None else f"{name} {scores_np[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(h - 1, y1 + th + 2)
        cv2.rectangle(out, (x1, ty - th - base + 1), (x1 + tw + 2, ty + base - 1), rgb, -1)
        cv2.putText(out, text, (x1 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def as_numpy(value: Any, dtype: Any) -> np.ndarray:
    """``value`` (a tensor on any device, an array or a sequence) as a numpy array of ``dtype``."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def render_prediction_grid(
    samples: Sequence[dict[str, Any]], classes: Sequence[str], tile_height: int = 224, columns: int = 2
) -> np.ndarray:
    """Tiles of ``ground truth | predictions`` per image, ``columns`` tiles per row, on white.

    Args:
        samples: one dict per image: ``image`` (``ndarray[H, W, 3]`` uint8 RGB), ``gt_boxes`` ``[G, 4]`` and
            ``gt_labels`` ``[G]``, ``boxes`` ``[K, 4]``, ``labels`` ``[K]`` and ``scores`` ``[K]``; boxes
            ``(x1, y1, x2, y2)`` in the image's pixels, labels indexing ``classes``.
        classes: class names.
        tile_height: height in pixels of each tile (the pair is resized, aspect kept).
        columns: tiles per row.

    Returns:
        ``ndarray[H, W, 3]`` uint8 RGB (a blank tile when ``samples`` is empty).
    """
    tiles = []
    for s in samples:
        image = s["image"]
        left = draw_detections(image, s["gt_boxes"], s["gt_labels"], classes, color=(0, 200, 0))
        right = draw_detections(image, s["boxes"], s["labels"], classes, s["scores"])
        pair = np.concatenate([left, np.full((image.shape[0], 4, 3), 255, np.uint8), right], axis=1)
        width = max(1, round(pair.shape[1] * tile_height / pair.shape[0]))
        tiles.append(cv2.resize(pair, (width, tile_height), interpolation=cv2.INTER_AREA))
    if not tiles:
        return np.full((tile_height, tile_height, 3), 255, np.uint8)
    tile_w = max(t.shape[1] for t in tiles) + 12  # a white gap after every tile
    tiles = [np.pad(t, ((0, 12), (0, tile_w - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    return tile_grid(tiles, columns)


def tile_grid(tiles: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Equal-sized ``ndarray[h, w, 3]`` uint8 tiles in rows of ``columns``, the last row padded with white."""
    rows = []
    for start in range(0, len(tiles), columns):
        row = list(tiles[start:start + columns])
        row += [np.full_like(tiles[0], 255)] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0))
