"""Atomic file writes: readers see either the old file or the complete new one, never a partial write.

Torch-free, so data tools and the trainer share one writer for checkpoints, metrics, annotations and images.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "json_default",
           "remove_stale_temp_files"]

logger = logging.getLogger(__name__)

#: every temporary file of :func:`atomic_write` is named ``.<final name>.<random>`` + this suffix
TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Write a file so that readers see either the old or the complete new content, never a mix.

    ``write(f)`` fills a temporary file ``.NAME.<random>.tmp`` in the same directory; it is flushed,
    fsync'ed and then renamed over ``path`` with ``os.replace``. If ``write`` (or the flush, e.g. on a
    full disk) raises, the temporary file is removed and ``path`` is left untouched.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows opening a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``; returns the path."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``; returns the path."""
    return atomic_write(path, lambda f: f.write(data))


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for detkit's values: tensors and numpy arrays/scalars as lists/numbers, paths."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and numpy scalars
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, compact: bool = False) -> Path:
    """Atomically write ``obj`` as JSON (tensors, arrays and paths allowed; see :func:`json_default`).

    Args:
        path: destination file.
        obj: the value.
        indent: indentation of the pretty form.
        compact: no whitespace at all (large annotation files).
    """
    if compact:
        text = json.dumps(obj, separators=(",", ":"), default=json_default)
    else:
        text = json.dumps(obj, indent=indent, default=json_default)
    return atomic_write_text(path, text + "\n")


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls left in ``directory`` (not recursive).

    Call it when a process that owns the folder starts (a training run in its output folder), never while
    another process may be writing there. Only names of the form ``.NAME.<random>.tmp`` whose ``NAME`` is a
    file of the folder's kind (anything) are removed; other hidden files stay.

    Returns:
        The removed paths.
    """
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        name = entry.name
        if name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3 and entry.is_file():
            try:
                entry.unlink()
            except OSError as err:
                logger.warning("could not remove the stale temporary file %s: %s", entry, err)
                continue
            removed.append(entry)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted write in %s", len(removed), directory)
    return removed
