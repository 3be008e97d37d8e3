"""Figures to files and arrays: an atomic PNG writer and a renderer to RGB arrays (for TensorBoard).

Every plot of detkit goes through these two, so a crash mid-write never leaves a truncated PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detkit.io import atomic_write

__all__ = ["figure_to_array", "new_figure", "save_figure"]


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A matplotlib figure on its own Agg canvas (no pyplot state: safe in threads and without a display)."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically: a crash mid-write leaves any previous file intact."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an H×W×3 uint8 RGB array (for ``SummaryWriter.add_image(..., dataformats="HWC")``)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
