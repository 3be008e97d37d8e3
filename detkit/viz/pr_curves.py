"""Precision-recall curves of a COCO evaluation (IoU 0.5): every class and their mean, or one class.

Reads a :class:`detkit.eval.coco.CocoMetrics`; written as PNG atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detkit.viz.figures import new_figure, save_figure

if TYPE_CHECKING:  # a type only: eval imports viz, never the reverse
    from detkit.eval.coco import CocoMetrics

__all__ = ["plot_pr_curves"]


def plot_pr_curves(
    metrics: CocoMetrics, path: str | os.PathLike, max_legend: int = 20, class_name: str | None = None
) -> Path:
    """Plot precision against recall at IoU 0.5 for every class with ground truth, and their mean; save a PNG.

    Args:
        metrics: from :meth:`detkit.eval.coco.CocoEvaluator.compute` (``recall_thresholds``, ``pr_curves``,
            ``per_class_ap50``, ``map50``).
        path: output ``.png``; written atomically (temporary file in the same folder, then renamed).
        max_legend: classes named in the legend at most (the mean curve is always named).
        class_name: plot this class alone (no mean curve); it must be one of ``metrics.pr_curves``.

    Returns:
        The written path.
    """
    fig = new_figure(7, 6)
    ax = fig.add_subplot(1, 1, 1)
    r = metrics.recall_thresholds
    if class_name is not None and class_name not in metrics.pr_curves:
        raise ValueError(f"class_name: {class_name!r} is not one of {list(metrics.pr_curves)}")
    selected = metrics.pr_curves if class_name is None else {class_name: metrics.pr_curves[class_name]}
    curves = {k: v for k, v in selected.items() if (v > -1).any()}
    show_legend = len(curves) <= max_legend
    for name, p in curves.items():
        ap50 = metrics.per_class_ap50.get(name, math.nan)
        ax.plot(r, np.clip(p, 0, None), linewidth=1, label=f"{name} {ap50:.3f}" if show_legend else None)
    if not curves:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
    elif class_name is None:
        mean = np.mean(np.stack([np.clip(p, 0, None) for p in curves.values()]), axis=0)
        ax.plot(r, mean, color="black", linewidth=2.5, label=f"all classes mAP@0.5 {metrics.map50:.3f}")
    title = "Precision-recall, IoU 0.5" + ("" if class_name is None else f": {class_name}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize="small")
    return save_figure(fig, path)
