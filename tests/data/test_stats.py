"""Tests for detkit.data.stats.compute_mean_std against plain numpy on known images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from data_testutils import random_rgb, save_rgb

from detkit.data.classification import ImageFolderDataset
from detkit.data.images import DatasetError
from detkit.data.stats import compute_mean_std


def _images(tmp_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    arrays = [random_rgb(0, 10, 14), random_rgb(1, 30, 8), (random_rgb(2, 5, 5) // 4)]
    paths = [save_rgb(tmp_path / f"im{i}.png", a) for i, a in enumerate(arrays)]
    return paths, arrays


def _numpy_mean_std(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255.0
    return pixels.mean(axis=0), pixels.std(axis=0)


@pytest.mark.parametrize("workers", [0, 3])
def test_mean_std_match_numpy_over_all_pixels(tmp_path: Path, workers: int) -> None:
    paths, arrays = _images(tmp_path)
    mean, std = compute_mean_std(paths, max_images=None, workers=workers)
    ref_mean, ref_std = _numpy_mean_std(arrays)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(std, ref_std, rtol=0, atol=1e-9)
    assert len(mean) == 3 and all(isinstance(v, float) for v in (*mean, *std))


def test_img_size_weighs_images_equally(tmp_path: Path) -> None:
    paths, arrays = _images(tmp_path)
    resized = [cv2.resize(a, (6, 6), interpolation=cv2.INTER_AREA) for a in arrays]
    mean, std = compute_mean_std(paths, img_size=6)
    ref_mean, ref_std = _numpy_mean_std(resized)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-9)
    np.testing.assert_allclose(std, ref_std, atol=1e-9)


def test_max_images_takes_an_even_deterministic_subset(tmp_path: Path) -> None:
    arrays = [np.full((4, 4, 3), 10 * i, np.uint8) for i in range(5)]
    paths = [save_rgb(tmp_path / f"{i}.png", a) for i, a in enumerate(arrays)]
    mean, _ = compute_mean_std(paths, max_images=3)  # images 0, 2, 4 -> values 0, 20, 40
    np.testing.assert_allclose(mean, [20 / 255] * 3, atol=1e-12)


def test_accepts_a_dataset_or_a_directory(folder_dataset: Path) -> None:
    ds = ImageFolderDataset(folder_dataset, "train")
    arrays = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p, _ in ds.samples]
    ref_mean, ref_std = _numpy_mean_std(arrays)
    for source in (ds, folder_dataset / "train", str(folder_dataset / "train")):
        mean, std = compute_mean_std(source)
        np.testing.assert_allclose(mean, ref_mean, atol=1e-9)
        np.testing.assert_allclose(std, ref_std, atol=1e-9)


def test_unreadable_images_are_skipped(tmp_path: Path) -> None:
    paths, arrays = _images(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"")
    mean, _ = compute_mean_std([*paths, tmp_path / "bad.png"])
    np.testing.assert_allclose(mean, _numpy_mean_std(arrays)[0], atol=1e-9)
    with pytest.raises(DatasetError, match="could not read any"):
        compute_mean_std([tmp_path / "bad.png"])


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        compute_mean_std(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no image paths"):
        compute_mean_std([])
    with pytest.raises(ValueError, match="max_images"):
        compute_mean_std([tmp_path / "x.png"], max_images=0)
    with pytest.raises(TypeError, match="dataset_or_paths"):
        compute_mean_std(42)
