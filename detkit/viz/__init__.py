"""Plots and drawings: confusion matrices, precision-recall curves, detections on images, atomic PNG figures.

A leaf of the package: it imports nothing of detkit but the atomic writer, so every layer can draw.
"""

from detkit.viz.confusion import plot_confusion_matrix
from detkit.viz.draw import PALETTE, draw_detections, render_prediction_grid
from detkit.viz.figures import figure_to_array, new_figure, save_figure
from detkit.viz.pr_curves import plot_pr_curves
from detkit.viz.sheet import render_contact_sheet

__all__ = [
    "PALETTE",
    "draw_detections",
    "figure_to_array",
    "new_figure",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "render_contact_sheet",
    "render_prediction_grid",
    "save_figure",
]
