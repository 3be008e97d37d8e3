"""ImageFolder classification datasets: ``ROOT/<split>/<class>/*`` read with OpenCV as RGB.

Unreadable files are found by an upfront parallel scan and skipped, so a corrupt file never stops an epoch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detkit.data.images import IMAGE_EXTENSIONS, is_image_file, read_image, scan_images
from detkit.data.seeding import SeededTransform
from detkit.errors import DatasetError

__all__ = ["ImageFolderDataset", "find_classes", "image_to_tensor"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 20  # paths named in one log message; the full lists live on the dataset


def find_classes(directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Class names of an ImageFolder split: its non-hidden sub-folders, sorted.

    Args:
        directory: a split folder such as ``ROOT/train``.

    Returns:
        ``(classes, class_to_idx)``: sorted folder names and their indices.

    Raises:
        FileNotFoundError: when ``directory`` does not exist.
        DatasetError: when it holds no class folders.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset split folder {directory} does not exist (expected ROOT/<split>/<class>/*)")
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders in {directory} (expected {directory}/<class>/<image files>)")
    return classes, {c: i for i, c in enumerate(classes)}


def image_to_tensor(image: np.ndarray) -> Tensor:
    """Convert an ``ndarray[H, W, 3]`` uint8 RGB image to ``Tensor[3, H, W]`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class ImageFolderDataset(SeededTransform, Dataset):
    """Classification samples from ``ROOT/<split>/<class>/<files>`` (sub-folders of a class are included).

    Files with an extension in :data:`~detkit.data.images.IMAGE_EXTENSIONS` are samples; hidden files
    and folders and other files are ignored (listed in ``ignored``). With ``scan=True`` every sample is
    decoded once up front and unreadable files are dropped (listed in ``skipped`` and logged).

    Args:
        root: dataset root holding ``train/``, ``val/`` and optionally ``test/``.
        split: the sub-folder to read.
        transform: an albumentations ``Compose`` called as ``transform(image=rgb)["image"]`` on the
            ``ndarray[H, W, 3]`` uint8 RGB image, expected to return ``Tensor[3, H', W']`` (e.g. ending in
            ``ToTensorV2``); ``None`` gives ``Tensor[3, H, W]`` float32 in [0, 1].
        classes: class names in label order; ``None`` uses this split's sorted folder names. Pass the train
            split's ``classes`` for val/test so labels agree; a folder not in the list is an error, a class
            with no folder in this split is allowed (logged).
        scan: decode every file up front and skip unreadable ones.
        scan_workers: threads for the scan (``None``: a few more than the CPU count).

    Attributes:
        classes (list[str]): class names, index = label.
        class_to_idx (dict[str, int]): name → label.
        samples (list[tuple[Path, int]]): readable files and their labels, sorted by class then path.
        targets (list[int]): the labels of ``samples``.
        skipped (list[tuple[Path, str]]): unreadable files and why.
        ignored (list[Path]): hidden and non-image files that were not considered.

    Raises:
        FileNotFoundError: the split folder does not exist.
        DatasetError: a folder names a class outside ``classes``; a class folder holds no (readable) image.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[..., Any] | None = None,
        classes: Sequence[str] | None = None,
        scan: bool = True,
        scan_workers: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split
        self.transform = transform
        folders, _ = find_classes(self.split_dir)
        if classes is None:
            classes = folders
        else:
            classes = _check_class_list(classes)
            unknown = [f for f in folders if f not in classes]
            if unknown:
                raise DatasetError(
                    f"{self.split_dir} has class folder(s) {unknown} that are not among the given classes "
                    f"{list(classes)} (e.g. a {split} class absent from train)"
                )
            absent = [c for c in classes if c not in folders]
            if absent:
                logger.warning("%s has no folder for class(es) %s: no %s samples", self.split_dir, absent, split)
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        candidates, self.ignored = self._list_files(folders)
        if self.ignored:
            logger.info("%s: ignored %d hidden or non-image file(s)", self.split_dir, len(self.ignored))
        _check_no_empty_class(self.split_dir, folders, self.class_to_idx, candidates, "image file")
        self.skipped: list[tuple[Path, str]] = []
        if scan:
            start = time.perf_counter()
            good, self.skipped = scan_images([p for p, _ in candidates], workers=scan_workers)
            logger.info("%s: scanned %d file(s) in %.1f s", self.split_dir, len(candidates), time.perf_counter() - start)
            if self.skipped:
                _log_skipped(self.split_dir, self.skipped)
            readable = set(good)
            candidates = [(p, t) for p, t in candidates if p in readable]
            _check_no_empty_class(self.split_dir, folders, self.class_to_idx, candidates, "readable image")
        self.samples: list[tuple[Path, int]] = candidates
        self.targets: list[int] = [t for _, t in candidates]

    def _list_files(self, folders: list[str]) -> tuple[list[tuple[Path, int]], list[Path]]:
        samples: list[tuple[Path, int]] = []
        ignored: list[Path] = []
        for name in folders:
            label = self.class_to_idx[name]
            for dirpath, dirnames, filenames in os.walk(self.split_dir / name, followlinks=True):
                hidden = [d for d in dirnames if d.startswith(".")]
                ignored.extend(Path(dirpath) / d for d in hidden)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in sorted(filenames):
                    path = Path(dirpath) / fname
                    if is_image_file(path):
                        samples.append((path, label))
                    else:
                        ignored.append(path)
        samples.sort(key=lambda s: (s[1], str(s[0])))
        return samples, ignored

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int, str]:
        """Return ``(image Tensor[3, H, W] float32, label, path)``.

        A file that fails to load despite the scan (changed on disk since) is logged and replaced by the
        next readable sample, whose own label and path are returned.
        """
        self._reseed_in_worker()
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        for offset in range(n):
            path, label = self.samples[(index + offset) % n]
            try:
                cache = getattr(self, "image_cache", None)  # data.cache: ram (detkit.data.cache)
                image = read_image(path) if cache is None else cache.read(path)
            except DatasetError as err:
                logger.warning("%s; using the next sample instead", err)
                continue
            return self._apply_transform(image, path), label, str(path)
        raise DatasetError(f"no sample of {self.split_dir} could be read at load time (all {n} failed)")

    def _apply_transform(self, image: np.ndarray, path: Path) -> Tensor:
        if self.transform is None:
            return image_to_tensor(image)
        out = self.transform(image=image)["image"]
        if isinstance(out, np.ndarray):  # a pipeline without ToTensorV2
            out = image_to_tensor(out) if out.dtype == np.uint8 else torch.from_numpy(out).permute(2, 0, 1)
        if not isinstance(out, Tensor):
            raise TypeError(f"transform must return an ndarray or a Tensor for {path}, got {type(out).__name__}")
        return out

    def class_counts(self) -> dict[str, int]:
        """Number of readable samples per class, in label order."""
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self.samples)}, "
            f"classes={len(self.classes)}, skipped={len(self.skipped)}, ignored={len(self.ignored)})"
        )


def _check_class_list(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"classes must be a list of str, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique, got {list(classes)}")
    if not classes:
        raise ValueError("classes must not be empty")
    return list(classes)


def _check_no_empty_class(
    split_dir: Path, folders: list[str], class_to_idx: dict[str, int], samples: list[tuple[Path, int]], what: str
) -> None:
    present = {t for _, t in samples}
    empty = [split_dir / f for f in folders if class_to_idx[f] not in present]
    if empty:
        raise DatasetError(
            f"class folder {empty[0]} holds no {what} (extensions {', '.join(IMAGE_EXTENSIONS)})"
            + (f"; also empty: {[str(e) for e in empty[1:]]}" if len(empty) > 1 else "")
        )


def _log_skipped(split_dir: Path, skipped: list[tuple[Path, str]]) -> None:
    listed = "\n".join(f"  {p}: {r}" for p, r in skipped[:_MAX_LISTED])
    more = f"\n  ... and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
    logger.warning("%s: skipping %d unreadable file(s):\n%s%s", split_dir, len(skipped), listed, more)
