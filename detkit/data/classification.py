"""Classification datasets: ImageFolder (``ROOT/<split>/<class>/*``) and ``path,label`` lists, read with OpenCV as RGB.

Unreadable files are found by an upfront parallel scan and skipped, so a corrupt file never stops an epoch.
"""

from __future__ import annotations

import csv
import io
import json
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

from detkit.data.files import inside_root, walk_files
from detkit.data.images import IMAGE_EXTENSIONS, is_image_file, read_image, scan_images
from detkit.data.seeding import SeededTransform
from detkit.errors import DatasetError

__all__ = ["ImageFolderDataset", "ImageListDataset", "find_classes", "image_to_tensor", "read_image_list"]

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


class _LabelledImages(SeededTransform, Dataset):
    """What the classification datasets share: the upfront scan, samples ``(path, label)``, loading and transforms.

    Subclasses list their candidate files and set ``classes``, ``class_to_idx``, ``ignored`` and ``split_dir``
    (the folder or list file messages name), then call :meth:`_keep_readable`; :meth:`_empty_message` says
    where an empty class lives.
    """

    classes: list[str]
    class_to_idx: dict[str, int]
    split_dir: Path
    transform: Callable[..., Any] | None

    def _keep_readable(self, candidates: list[tuple[Path, int]], present: list[int], scan: bool,
                       scan_workers: int | None) -> None:
        """Set ``samples``/``targets``/``skipped``: with ``scan`` every file is decoded once and unreadable ones are
        dropped; a class ``present`` in this split (a folder, a label in the list) without (readable) images
        left is an error."""
        self._check_no_empty_class(present, candidates, "image file")
        self.skipped: list[tuple[Path, str]] = []
        if scan:
            start = time.perf_counter()
            good, self.skipped = scan_images([p for p, _ in candidates], workers=scan_workers)
            logger.info("%s: scanned %d file(s) in %.1f s", self.split_dir, len(candidates),
                        time.perf_counter() - start)
            if self.skipped:
                _log_skipped(self.split_dir, self.skipped)
            readable = set(good)
            candidates = [(p, t) for p, t in candidates if p in readable]
            self._check_no_empty_class(present, candidates, "readable image")
        self.samples: list[tuple[Path, int]] = candidates
        self.targets: list[int] = [t for _, t in candidates]

    def _check_no_empty_class(self, present: list[int], samples: list[tuple[Path, int]], what: str) -> None:
        have = {t for _, t in samples}
        empty = [k for k in present if k not in have]
        if empty:
            raise DatasetError(self._empty_message(empty, what))

    def _empty_message(self, labels: list[int], what: str) -> str:
        names = [self.classes[k] for k in labels]
        return f"{self.split_dir}: class(es) {names} have no {what} (extensions {', '.join(IMAGE_EXTENSIONS)})"

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


def _given_classes(classes: Sequence[str] | None, found: list[str], where: Path, split: str, kind: str) -> list[str]:
    """The label order: ``classes`` when given (every class ``found`` must be in it), else ``found``."""
    if classes is None:
        return found
    classes = _check_class_list(classes)
    unknown = [f for f in found if f not in classes]
    if unknown:
        raise DatasetError(
            f"{where} has {kind} {unknown} that are not among the given classes {list(classes)} "
            f"(e.g. a {split} class absent from train)"
        )
    absent = [c for c in classes if c not in found]
    if absent:
        logger.warning("%s has no %s for class(es) %s: no %s samples", where, kind, absent, split)
    return classes


class ImageFolderDataset(_LabelledImages):
    """Classification samples from ``ROOT/<split>/<class>/<files>`` (sub-folders of a class are included).

    Files with an extension in :data:`~detkit.data.images.IMAGE_EXTENSIONS` are samples; hidden files
    and folders, other files and FIFOs or devices are ignored (listed in ``ignored``). Symlinked folders are
    followed, each folder once, so a symlink loop ends and each file is listed once. With ``scan=True`` every
    sample is decoded once up front and unreadable files are dropped (listed in ``skipped`` and logged).

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
        self.classes = _given_classes(classes, folders, self.split_dir, split, "class folder(s)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        candidates, self.ignored = self._list_files(folders)
        if self.ignored:
            logger.info("%s: ignored %d hidden or non-image file(s)", self.split_dir, len(self.ignored))
        self._keep_readable(candidates, [self.class_to_idx[f] for f in folders], scan, scan_workers)

    def _empty_message(self, labels: list[int], what: str) -> str:
        empty = [self.split_dir / self.classes[k] for k in labels]
        return (f"class folder {empty[0]} holds no {what} (extensions {', '.join(IMAGE_EXTENSIONS)})"
                + (f"; also empty: {[str(e) for e in empty[1:]]}" if len(empty) > 1 else ""))

    def _list_files(self, folders: list[str]) -> tuple[list[tuple[Path, int]], list[Path]]:
        """Image files of the class folders, from one walk of the split so that a file reachable twice (a symlink
        loop, a folder linked into another class) is listed once, under the first class in sorted order."""
        files, ignored = walk_files(self.split_dir)
        samples: list[tuple[Path, int]] = []
        for path in files:
            parts = path.relative_to(self.split_dir).parts
            if len(parts) > 1 and parts[0] in folders and is_image_file(path):
                samples.append((path, self.class_to_idx[parts[0]]))
            else:
                ignored.append(path)
        samples.sort(key=lambda s: (s[1], str(s[0])))
        return samples, ignored

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self.samples)}, "
            f"classes={len(self.classes)}, skipped={len(self.skipped)}, ignored={len(self.ignored)})"
        )



_PATH_HEADERS = ("path", "file", "filename", "file_name", "image", "image_path", "filepath")
_LABEL_HEADERS = ("label", "class", "class_name", "category", "target")


def read_image_list(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``(path, label)`` rows of a classification list file, as written in it.

    CSV: one ``path,label`` row per image; a first row naming its columns (``path``/``file``/``filename``/
    ``image``... and ``label``/``class``/``category``...) is a header and may put them in any order; empty rows
    and rows starting with ``#`` are skipped. JSON: a list of ``{"path": ..., "label": ...}`` objects (the same
    key names as the CSV header), a list of ``[path, label]`` pairs, or a ``{path: label}`` mapping.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: it cannot be read or parsed, or rows lack a path or a label (listed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classification list {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
        rows = _json_rows(json.loads(text)) if path.suffix.lower() == ".json" else _csv_rows(text)
    except (UnicodeDecodeError, OSError, json.JSONDecodeError, csv.Error) as err:
        raise DatasetError(f"cannot read classification list {path}: {' '.join(str(err).split())}") from None
    bad = [f"row {k}: {row!r}"[:100] for k, row in enumerate(rows, start=1)
           if not (isinstance(row, (list, tuple)) and len(row) == 2 and all(isinstance(v, str) and v for v in row))]
    if bad:
        more = f"; ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        shown = "; ".join(bad[:_MAX_LISTED]) + more
        raise DatasetError(f"classification list {path}: {len(bad)} rows without a path and a label: {shown}")
    if not rows:
        raise DatasetError(f"classification list {path} lists no images")
    return [(p, lab) for p, lab in rows]


def _csv_rows(text: str) -> list[Any]:
    rows = [[v.strip() for v in r] for r in csv.reader(io.StringIO(text)) if r and not r[0].lstrip().startswith("#")]
    rows = [r for r in rows if any(r)]
    if rows:
        head = [v.lower() for v in rows[0]]
        p = next((i for i, v in enumerate(head) if v in _PATH_HEADERS), None)
        q = next((i for i, v in enumerate(head) if v in _LABEL_HEADERS), None)
        if p is not None and q is not None:
            return [[r[p], r[q]] if len(r) > max(p, q) else r for r in rows[1:]]
    return [r[:2] if len(r) >= 2 else r for r in rows]


def _json_rows(data: Any) -> list[Any]:
    if isinstance(data, dict):
        return [[str(k), str(v) if isinstance(v, (int, str)) else v] for k, v in data.items()]
    if not isinstance(data, list):
        return [data]
    rows = []
    for item in data:
        if isinstance(item, dict):
            p = next((item[k] for k in _PATH_HEADERS if k in item), None)
            q = next((item[k] for k in _LABEL_HEADERS if k in item), None)
            item = [p, q]
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], int) and not isinstance(item[1], bool):
            item = [item[0], str(item[1])]
        rows.append(item)
    return rows


def _sorted_labels(labels: set[str]) -> list[str]:
    """Class order of a list: numeric labels by value (``2`` before ``10``), others alphabetically."""
    if all(lab.lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=int)
    return sorted(labels)


class ImageListDataset(_LabelledImages):
    """Classification samples from a ``path,label`` list (CSV or JSON, see :func:`read_image_list`).

    Paths are relative to ``images_dir`` (default: the list's folder) and must stay inside it. Labels are
    class names; the classes are the sorted labels (numeric labels by value) unless ``classes`` is given
    (the train split's, for val/test: a label outside it is an error). A listed file that is missing or
    unreadable is skipped and listed in ``skipped`` (with ``scan``); hidden and non-image paths are
    ``ignored``.

    Args:
        list_file: the ``.csv`` or ``.json`` list.
        images_dir: the folder the listed paths are relative to.
        transform, classes, scan, scan_workers: as for :class:`ImageFolderDataset`.
        split: the split's name, for messages.

    Attributes:
        classes, class_to_idx, samples, targets, skipped, ignored: as for :class:`ImageFolderDataset`.

    Raises:
        FileNotFoundError: the list does not exist.
        DatasetError: a row is malformed or names a path outside ``images_dir``; a label is not among
            ``classes``; a class has no readable image.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        images_dir: str | os.PathLike | None = None,
        transform: Callable[..., Any] | None = None,
        classes: Sequence[str] | None = None,
        scan: bool = True,
        scan_workers: int | None = None,
        split: str = "train",
    ) -> None:
        self.list_file = Path(list_file)
        self.root = Path(images_dir) if images_dir is not None else self.list_file.parent
        self.split = split
        self.split_dir = self.list_file
        self.transform = transform
        rows = read_image_list(self.list_file)
        paths = inside_root(self.root, [p for p, _ in rows], f"paths of {self.list_file}")
        labels = _sorted_labels({lab for _, lab in rows})
        self.classes = _given_classes(classes, labels, self.list_file, split, "label(s)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        candidates = [(p, self.class_to_idx[lab]) for p, (_, lab) in zip(paths, rows)]
        self.ignored = [p for p, _ in candidates if not is_image_file(p)]
        candidates = list(dict.fromkeys((p, t) for p, t in candidates if is_image_file(p)))
        if self.ignored:
            logger.info("%s: ignored %d hidden or non-image path(s)", self.list_file, len(self.ignored))
        self._keep_readable(candidates, [self.class_to_idx[lab] for lab in labels], scan, scan_workers)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.list_file)!r}, samples={len(self.samples)}, "
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


def _log_skipped(split_dir: Path, skipped: list[tuple[Path, str]]) -> None:
    listed = "\n".join(f"  {p}: {r}" for p, r in skipped[:_MAX_LISTED])
    more = f"\n  ... and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
    logger.warning("%s: skipping %d unreadable file(s):\n%s%s", split_dir, len(skipped), listed, more)
