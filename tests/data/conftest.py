"""Fixtures for the classification data tests: small ImageFolder trees written with plain OpenCV."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_testutils import random_rgb, save_rgb


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """``ROOT/{train,val}/{cat,dog,eel}/`` with 3/2/2 train and 1 val image per class, mixed formats."""
    root = tmp_path / "ds"
    exts = {"cat": ".png", "dog": ".jpg", "eel": ".bmp"}
    counts = {"cat": 3, "dog": 2, "eel": 2}
    for k, (name, ext) in enumerate(exts.items()):
        for i in range(counts[name]):
            save_rgb(root / "train" / name / f"{i}{ext}", random_rgb(10 * k + i))
        save_rgb(root / "val" / name / f"v{ext}", random_rgb(100 + k))
    return root
