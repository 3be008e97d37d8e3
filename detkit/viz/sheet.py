"""Contact sheets: a grid of thumbnails, each with a caption under it (classification predictions at a glance).

Pure numpy/OpenCV on ``ndarray[H, W, 3]`` uint8 RGB images, like the other drawings of :mod:`detkit.viz.draw`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from detkit.viz.draw import tile_grid

__all__ = ["render_contact_sheet"]


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` shrunk (or enlarged) to fit a ``size`` square, centred on white."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.full((size, size, 3), 255, np.uint8)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    out[y0:y0 + new_h, x0:x0 + new_w] = resized
    return out


def render_contact_sheet(images: Sequence[np.ndarray], captions: Sequence[Sequence[str]], *, tile: int = 160,
                         columns: int = 6) -> np.ndarray:
    """Thumbnails in rows of ``columns``, each above its caption lines, on white.

    Args:
        images: ``ndarray[H, W, 3]`` uint8 RGB images of any sizes.
        captions: per image, the lines written under its thumbnail (e.g. ``["cat 0.93", "dog 0.05"]``).
        tile: thumbnail side in pixels.
        columns: thumbnails per row.

    Returns:
        ``ndarray[H, W, 3]`` uint8 RGB (one blank tile when ``images`` is empty).
    """
    if len(images) != len(captions):
        raise ValueError(f"images and captions: expected one caption list per image, got {len(images)} and "
                         f"{len(captions)}")
    if tile < 16 or columns < 1:
        raise ValueError(f"tile and columns: expected tile >= 16 and columns >= 1, got {tile} and {columns}")
    lines = max((len(c) for c in captions), default=0)
    font, line_h = max(0.3, tile / 400), max(10, round(tile / 9))
    cell_h = tile + 4 + lines * line_h + 6
    cells = []
    for image, caption in zip(images, captions):
        cell = np.full((cell_h, tile + 8, 3), 255, np.uint8)
        cell[4:4 + tile, 4:4 + tile] = _thumbnail(image, tile)
        for k, text in enumerate(caption):
            cv2.putText(cell, text, (4, tile + 4 + (k + 1) * line_h), cv2.FONT_HERSHEY_SIMPLEX, font, (20, 20, 20),
                        1, cv2.LINE_AA)
        cells.append(cell)
    if not cells:
        return np.full((tile, tile, 3), 255, np.uint8)
    return tile_grid(cells, columns)
