"""Tests for detkit.data.classification: ImageFolder layout, class order, errors, skipped files, samples."""

from __future__ import annotations

import logging
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from data_testutils import jpeg_bytes, random_rgb, save_rgb
from torch.utils.data import DataLoader

from detkit.data.classification import ImageFolderDataset, find_classes
from detkit.data.images import DatasetError, read_image


def test_classes_are_sorted_folder_names_and_samples_follow_them(folder_dataset: Path) -> None:
    ds = ImageFolderDataset(folder_dataset, "train")
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "eel": 2}
    assert len(ds) == 7 and ds.targets == [0, 0, 0, 1, 1, 2, 2]
    assert [(p.parent.name, t) for p, t in ds.samples] == [(ds.classes[t], t) for t in ds.targets]
    assert ds.skipped == [] and ds.ignored == []
    assert ds.class_counts() == {"cat": 3, "dog": 2, "eel": 2}


def test_getitem_returns_float_tensor_label_and_path(folder_dataset: Path) -> None:
    ds = ImageFolderDataset(folder_dataset, "train")
    image, label, path = ds[3]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.shape == (3, 12, 16)
    assert label == 1 and isinstance(label, int)
    assert path == str(ds.samples[3][0]) and path.endswith(".jpg")
    expected = torch.from_numpy(read_image(path)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected)
    png_image, _, png_path = ds[0]  # lossless: exactly the pixels written
    torch.testing.assert_close(png_image, torch.from_numpy(random_rgb(0)).permute(2, 0, 1).float() / 255)
    assert ds[-1][2] == str(ds.samples[-1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_transform_is_called_with_rgb_numpy_image(folder_dataset: Path) -> None:
    transform = A.Compose([A.Resize(8, 10), A.Normalize(mean=(0, 0, 0), std=(1, 1, 1)), ToTensorV2()])
    ds = ImageFolderDataset(folder_dataset, "train", transform=transform)
    image, _, _ = ds[0]
    assert image.shape == (3, 8, 10) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_transform_returning_numpy_is_converted(folder_dataset: Path) -> None:
    ds = ImageFolderDataset(folder_dataset, "train", transform=A.Compose([A.HorizontalFlip(p=1.0)]))
    image, _, _ = ds[0]
    expected = torch.from_numpy(random_rgb(0)[:, ::-1].copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected)


def test_val_uses_train_classes_and_rejects_unknown_class(folder_dataset: Path) -> None:
    train = ImageFolderDataset(folder_dataset, "train")
    (folder_dataset / "val" / "dog").joinpath("v.jpg").unlink()
    (folder_dataset / "val" / "dog").rmdir()  # a class missing from val is fine
    val = ImageFolderDataset(folder_dataset, "val", classes=train.classes)
    assert val.classes == train.classes and val.targets == [0, 2]
    save_rgb(folder_dataset / "val" / "fox" / "f.png", random_rgb(5))
    with pytest.raises(DatasetError, match=r"\['fox'\].*absent from train"):
        ImageFolderDataset(folder_dataset, "val", classes=train.classes)


def test_given_class_order_defines_labels(folder_dataset: Path) -> None:
    ds = ImageFolderDataset(folder_dataset, "val", classes=["eel", "dog", "cat"])
    assert ds.class_to_idx == {"eel": 0, "dog": 1, "cat": 2}
    assert [(Path(p).parent.name, t) for p, t in ds.samples] == [("eel", 0), ("dog", 1), ("cat", 2)]


def test_empty_class_folder_is_an_error_naming_it(folder_dataset: Path) -> None:
    (folder_dataset / "train" / "gnu").mkdir()
    (folder_dataset / "train" / "gnu" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"train/gnu holds no image file"):
        ImageFolderDataset(folder_dataset, "train")


def test_class_with_only_unreadable_files_is_an_error(folder_dataset: Path) -> None:
    (folder_dataset / "train" / "gnu").mkdir()
    (folder_dataset / "train" / "gnu" / "broken.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"train/gnu holds no readable image"):
        ImageFolderDataset(folder_dataset, "train")


def test_missing_split_and_empty_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="test"):
        ImageFolderDataset(tmp_path, "test")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        find_classes(tmp_path / "train")


def test_unreadable_files_are_skipped_counted_and_logged(
    folder_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cat = folder_dataset / "train" / "cat"
    (cat / "zero.png").write_bytes(b"")
    (cat / "text.png").write_text("not an image")
    full = jpeg_bytes(seed=1, height=40, width=40)
    (cat / "cut.jpg").write_bytes(full[: len(full) * 2 // 3])
    with caplog.at_level(logging.WARNING, logger="detkit.data.classification"):
        ds = ImageFolderDataset(folder_dataset, "train")
    assert sorted(p.name for p, _ in ds.skipped) == ["cut.jpg", "text.png", "zero.png"]
    assert len(ds) == 7 and all(p.name not in {"cut.jpg", "text.png", "zero.png"} for p, _ in ds.samples)
    assert "skipping 3 unreadable" in caplog.text and "cut.jpg" in caplog.text
    unscanned = ImageFolderDataset(folder_dataset, "train", scan=False)
    assert len(unscanned) == 10 and unscanned.skipped == []


def test_hidden_and_non_image_files_are_ignored_and_counted(folder_dataset: Path) -> None:
    dog = folder_dataset / "train" / "dog"
    (dog / "notes.txt").write_text("x")
    (dog / "Thumbs.db").write_bytes(b"x")
    save_rgb(dog / ".hidden.png", random_rgb(1))
    save_rgb(folder_dataset / "train" / "dog" / ".cache" / "x.png", random_rgb(2))
    save_rgb(folder_dataset / "train" / ".trash" / "y.png", random_rgb(3))  # hidden class folder
    save_rgb(dog / "nested" / "UPPER.PNG", random_rgb(4))  # sub-folders and upper-case extensions count
    ds = ImageFolderDataset(folder_dataset, "train")
    assert ds.classes == ["cat", "dog", "eel"]
    assert sorted(p.name for p in ds.ignored) == [".cache", ".hidden.png", ".trash", "Thumbs.db", "notes.txt"]
    assert sum(1 for p, _ in ds.samples if p.name == "UPPER.PNG") == 1 and len(ds) == 8


def test_grayscale_rgba_and_16bit_files_load_as_rgb(tmp_path: Path) -> None:
    save_rgb(tmp_path / "train" / "a" / "gray.png", np.full((6, 7), 200, np.uint8))
    save_rgb(tmp_path / "train" / "a" / "rgba.png", np.dstack([random_rgb(0, 6, 7), np.zeros((6, 7), np.uint8)]))
    save_rgb(tmp_path / "train" / "b" / "deep.tif", np.full((6, 7, 3), 65535, np.uint16))
    ds = ImageFolderDataset(tmp_path, "train")
    gray, rgba, deep = (ds[i][0] for i in range(3))
    assert all(t.shape == (3, 6, 7) and t.dtype == torch.float32 for t in (gray, rgba, deep))
    torch.testing.assert_close(gray, torch.full((3, 6, 7), 200 / 255))
    torch.testing.assert_close(rgba, torch.from_numpy(random_rgb(0, 6, 7)).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(deep, torch.ones(3, 6, 7))


def test_file_broken_after_scan_is_replaced_by_next_sample(
    folder_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = ImageFolderDataset(folder_dataset, "train")
    broken, _ = ds.samples[1]
    broken.write_bytes(b"")  # changed on disk after the scan
    with caplog.at_level(logging.WARNING, logger="detkit.data.classification"):
        image, label, path = ds[1]
    assert path == str(ds.samples[2][0]) and label == ds.samples[2][1] and image.shape == (3, 12, 16)
    assert str(broken) in caplog.text
    last, _ = ds.samples[-1]
    last.write_bytes(b"")
    assert ds[len(ds) - 1][2] == str(ds.samples[0][0])  # wraps around to the start


def test_dataloader_batches_images_labels_and_paths(folder_dataset: Path) -> None:
    transform = A.Compose([A.Resize(8, 8), A.Normalize(), ToTensorV2()])
    ds = ImageFolderDataset(folder_dataset, "train", transform=transform)
    images, labels, paths = next(iter(DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 0, 0, 1]
    assert list(paths) == [str(p) for p, _ in ds.samples[:4]]


def test_workers_are_reseeded_so_their_augmentations_differ(tmp_path: Path) -> None:
    # Every image is identical, so any difference between batches comes from the augmentation's RNG.
    # Without reseeding, forked workers copy the same albumentations RNG state and repeat each other.
    for i in range(4):
        save_rgb(tmp_path / "train" / "a" / f"{i}.png", random_rgb(0, 24, 24))
    transform = A.Compose([A.RandomCrop(8, 8), ToTensorV2()])
    ds = ImageFolderDataset(tmp_path, "train", transform=transform)
    loader = DataLoader(ds, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(0))
    batches = [b[0] for b in loader]
    assert len(batches) == 2 and not torch.equal(batches[0], batches[1])
    again = [b[0] for b in DataLoader(ds, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(0))]
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # same loader seed, same augmentations


def test_reseed_transform_makes_augmentation_repeatable(folder_dataset: Path) -> None:
    ds = ImageFolderDataset(folder_dataset, "train", transform=A.Compose([A.RandomCrop(5, 5), ToTensorV2()]))
    ds.reseed_transform(123)
    first = [ds[0][0] for _ in range(4)]
    ds.reseed_transform(123)
    assert all(torch.equal(a, ds[0][0]) for a in first)
    assert not all(torch.equal(first[0], a) for a in first[1:])


def test_bad_classes_argument(folder_dataset: Path) -> None:
    with pytest.raises(TypeError, match="classes"):
        ImageFolderDataset(folder_dataset, "train", classes="cat")
    with pytest.raises(ValueError, match="unique"):
        ImageFolderDataset(folder_dataset, "train", classes=["cat", "cat", "dog", "eel"])
