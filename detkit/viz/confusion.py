"""The confusion matrix of a classifier as a heat map (rows true class, columns predicted class).

Built on the Agg canvas directly (no pyplot state), so plotting is safe in headless and threaded runs.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from detkit.viz.figures import new_figure, save_figure

__all__ = ["plot_confusion_matrix"]

# Cell values are written into the cells up to this many classes; beyond, only colours are shown.
_MAX_ANNOTATED = 30


def plot_confusion_matrix(
    cm: Tensor | np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike | None = None,
    normalize: bool = False,
    title: str | None = None,
) -> Figure:
    """Draw a confusion matrix (rows true class, columns predicted class) as a heat map.

    Args:
        cm: Tensor[C, C] (or array) counts, rows true, columns predicted.
        classes: C class names for the axes.
        path: if given, the figure is saved there as PNG (temp file in the same folder, then ``os.replace``).
        normalize: show each row as fractions of its true class (rows with no samples stay 0).
        title: figure title; defaults to "Confusion matrix" (with "(row-normalised)" when ``normalize``).

    Returns:
        The figure (attached to an Agg canvas; ``fig.savefig`` and TensorBoard's ``add_figure`` both work).

    Raises:
        ValueError: if ``cm`` is not C×C with C = ``len(classes)``.
    """
    values = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    c = len(classes)
    if values.shape != (c, c):
        raise ValueError(f"cm must be of shape ({c}, {c}) to match {c} classes, got {values.shape}")
    values = values.astype(np.float64)
    if normalize:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)

    side = min(4.0 + 0.45 * c, 30.0)
    fig = new_figure(side + 1.5, side)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(values.max(), 1.0))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), labels=list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(c), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    if c <= _MAX_ANNOTATED:
        threshold = values.max() / 2.0 if values.size else 0.0
        for i in range(c):
            for j in range(c):
                text = f"{values[i, j]:.2f}" if normalize else f"{int(round(values[i, j]))}"
                color = "white" if values[i, j] > threshold else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
