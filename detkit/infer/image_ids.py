"""COCO image ids for inference results: the dataset's own ids matched by file name, so results score as written.

``split_annotations(source)`` finds detkit's ``ROOT/<split>/annotations.json`` beside a source folder's images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from detkit.data.detection import load_coco_json
from detkit.errors import DatasetError

__all__ = ["dataset_image_ids", "match_image_ids", "split_annotations"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 5


def split_annotations(source: str | os.PathLike) -> Path | None:
    """``SOURCE/annotations.json`` when ``source`` is a folder that holds one (detkit's split layout), else None."""
    path = Path(os.fspath(source))
    candidate = path / "annotations.json"
    return candidate if path.is_dir() and candidate.is_file() else None


def _parts(name: str | os.PathLike) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(os.fspath(name).replace("\\", "/")).parts if p not in (".", "/"))


def match_image_ids(files: Sequence[Path], coco: dict[str, Any], source: str = "annotations") -> dict[Path, int]:
    """The COCO image id of each file whose path ends with an entry's ``file_name``.

    ``file_name`` may be a bare name (``a.jpg``) or a relative path (``images/val/a.jpg``); a file matches the
    entry whose path components are the longest suffix of its own path. Files without a match are left out.

    Args:
        files: image paths (as :func:`~detkit.infer.sources.find_sources` gives them).
        coco: a COCO instances dict (``images`` with ``id`` and ``file_name``).
        source: what ``coco`` was read from, for error messages.

    Raises:
        DatasetError: an ``images`` entry without ``id``/``file_name``, the same ``file_name`` twice, or two
            files matching one entry.
    """
    by_parts: dict[tuple[str, ...], int] = {}
    for entry in coco.get("images", []):
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise DatasetError(f"{source}: every images entry needs 'id' and 'file_name', got {entry!r}")
        key = _parts(entry["file_name"])
        if key in by_parts and by_parts[key] != int(entry["id"]):
            raise DatasetError(f"{source}: file_name {entry['file_name']!r} appears twice (ids {by_parts[key]} "
                               f"and {entry['id']}); image ids cannot be matched by file name")
        by_parts[key] = int(entry["id"])
    longest = max((len(k) for k in by_parts), default=0)
    ids: dict[Path, int] = {}
    for f in files:
        parts = _parts(Path(f).resolve().as_posix())
        for n in range(min(longest, len(parts)), 0, -1):
            if parts[-n:] in by_parts:
                ids[f] = by_parts[parts[-n:]]
                break
    owners: dict[int, Path] = {}
    for f, image_id in ids.items():
        if image_id in owners:
            raise DatasetError(f"{source}: the source files {owners[image_id]} and {f} both match image id "
                               f"{image_id}; give file_name entries with their folders")
        owners[image_id] = f
    return ids


def dataset_image_ids(files: Sequence[Path], source: str | os.PathLike,
                      annotations: str | os.PathLike | None) -> tuple[dict[Path, int] | None, Path | None]:
    """The dataset image ids for ``files``, or None for sequential ids, and the annotation file used.

    With ``annotations`` given, every file must be in it (else the results could not be scored against it).
    Without, a folder ``source`` holding ``annotations.json`` (detkit's split layout) is used when it lists
    every file; otherwise a WARNING says why the ids are sequential.

    Raises:
        FileNotFoundError: ``annotations`` does not exist.
        DatasetError: ``annotations`` is not a COCO file, or some files are not in it (the message lists them).
    """
    path = Path(annotations) if annotations is not None else split_annotations(source)
    if path is None:
        return None, None
    coco = load_coco_json(path)
    ids = match_image_ids(files, coco, str(path))
    missing = [str(f) for f in files if f not in ids]
    if not missing:
        return ids, path
    listed = ", ".join(missing[:_MAX_LISTED]) + (f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED
                                                 else "")
    if annotations is not None:
        raise DatasetError(f"{len(missing)} source images are not in the annotations {path} (matched by file "
                           f"name): {listed}; give the annotations of these images or drop --annotations")
    logger.warning("%s does not list %d of the source images (%s): image_id is the position in the sorted "
                   "source list instead of the dataset's id", path, len(missing), listed)
    return None, None
