"""Tests for detkit.viz: the confusion-matrix figure, its atomic PNG, normalisation and input checks.

Rendering uses the Agg canvas; images are tiny (3-4 classes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from detkit.viz import figure_to_array, plot_confusion_matrix, save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cell_texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def test_png_is_written_and_nothing_else_is_left(tmp_path: Path) -> None:
    cm = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    path = tmp_path / "out" / "confusion_matrix.png"
    fig = plot_confusion_matrix(cm, ["circle", "square", "star"], path=path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["confusion_matrix.png"]
    assert isinstance(fig, Figure)
    assert _cell_texts(fig) == ["5", "1", "0", "2", "3", "1", "0", "0", "4"]  # row-major: rows are true classes
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["circle", "square", "star"]
    assert fig.axes[0].get_ylabel() == "true" and fig.axes[0].get_xlabel() == "predicted"


def test_normalize_shows_row_fractions_and_keeps_empty_rows_zero() -> None:
    cm = np.array([[3, 1], [0, 0]])
    fig = plot_confusion_matrix(cm, ["a", "b"], normalize=True)
    assert _cell_texts(fig) == ["0.75", "0.25", "0.00", "0.00"]
    assert "normalised" in fig.axes[0].get_title()


def test_saving_again_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "cm.png"
    path.write_bytes(b"old")
    save_figure(plot_confusion_matrix(torch.eye(2, dtype=torch.long), ["a", "b"]), path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def test_figure_renders_to_an_rgb_array() -> None:
    image = figure_to_array(plot_confusion_matrix(torch.eye(3, dtype=torch.long) * 4, ["a", "b", "c"]))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.min() < 100 and image.max() == 255  # dark cells and white background both drawn


def test_shape_must_match_the_class_names() -> None:
    with pytest.raises(ValueError, match=r"shape \(3, 3\) to match 3 classes, got \(2, 2\)"):
        plot_confusion_matrix(torch.zeros(2, 2), ["a", "b", "c"])
