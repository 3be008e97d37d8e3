"""Dataset files on disk: names from annotation files resolved inside their root, and a walk that lists each file once.

Untrusted names (``file_name`` entries, list-file lines, XML ``<filename>``) never reach outside the dataset folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from detkit.errors import DatasetError

__all__ = ["inside_root", "resolve_inside", "walk_files"]

_MAX_LISTED = 10


def resolve_inside(root: str | os.PathLike, name: str | os.PathLike) -> Path | None:
    """``root / name`` when it stays inside ``root``, else ``None``.

    The check is lexical (``..`` segments are collapsed, symlinks are not followed), so a dataset whose image
    folder is a symlink to another disk still works, while ``/etc/passwd``, ``../x.jpg`` or ``a/../../x.jpg``
    are refused. An absolute ``name`` is accepted only when it already lies under ``root``.

    Args:
        root: the folder that names are relative to (an image folder, a dataset root).
        name: a path read from a file.

    Returns:
        The joined, normalised path, or ``None`` when it would leave ``root`` (or ``name`` is empty).
    """
    text = os.fspath(name)
    if not text or "\x00" in text:
        return None
    base = os.path.normpath(os.path.abspath(os.fspath(root)))
    joined = os.path.normpath(os.path.join(base, text))
    if joined == base or not joined.startswith(base.rstrip(os.sep) + os.sep):
        return None
    return Path(os.fspath(root)) / os.path.relpath(joined, base)


def inside_root(root: str | os.PathLike, names: list[str], what: str) -> list[Path]:
    """:func:`resolve_inside` for every name, raising one error that lists the names leaving ``root``.

    Args:
        root: the folder the names are relative to.
        names: the names, in order.
        what: how the error names them, e.g. ``"image file_name entries of train/annotations.json"``.

    Returns:
        The resolved paths, in input order.

    Raises:
        DatasetError: when a name is empty, absolute outside ``root`` or climbs out of it with ``..``.
    """
    out, bad = [], []
    for name in names:
        path = resolve_inside(root, name)
        if path is None:
            bad.append(repr(name))
        else:
            out.append(path)
    if bad:
        more = f" ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DatasetError(f"{len(bad)} {what} point outside {root} (absolute or with '..'); they must be relative "
                           f"paths inside it: {', '.join(bad[:_MAX_LISTED])}{more}")
    return out


def walk_files(root: str | os.PathLike, skip_hidden: bool = True) -> tuple[list[Path], list[Path]]:
    """Every regular file under ``root``, following symlinks, each once, sorted by path.

    Symlinked folders are followed, but a folder (by device and inode) is entered only once, so a symlink loop
    ends and a folder linked twice is not listed twice; a symlinked file whose target was already listed is
    left out. FIFOs, sockets, devices and broken links are never opened (reading a FIFO would block).

    Args:
        root: the folder to walk.
        skip_hidden: leave out names starting with ``.`` (files and folders).

    Returns:
        ``(files, ignored)``: the regular files, and what was left out: hidden entries, non-regular files,
        unreadable folders and further names (links) of a file already listed.

    Raises:
        FileNotFoundError: when ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist")
    files: list[Path] = []
    ignored: list[Path] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of the folders entered and the files listed
    pending = [root]
    while pending:  # depth first in sorted order, so which of two links to one file is listed never varies
        folder = pending.pop()
        try:
            info = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name) if (info.st_dev, info.st_ino) not in seen else []
        except OSError:
            ignored.append(folder)
            continue
        seen.add((info.st_dev, info.st_ino))  # a folder is entered once: a symlink loop ends here
        subfolders: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            if skip_hidden and entry.name.startswith("."):
                ignored.append(path)
            elif entry.is_symlink():
                _follow_link(entry, path, files, ignored, subfolders, seen)
            elif entry.is_dir(follow_symlinks=False):
                subfolders.append(path)
            elif entry.is_file(follow_symlinks=False) and (info.st_dev, entry.inode()) not in seen:
                seen.add((info.st_dev, entry.inode()))
                files.append(path)
            else:
                ignored.append(path)
        pending.extend(reversed(subfolders))
    return sorted(files, key=lambda p: p.as_posix()), sorted(ignored, key=lambda p: p.as_posix())


def _follow_link(entry: os.DirEntry, path: Path, files: list[Path], ignored: list[Path], subfolders: list[Path],
                 seen: set[tuple[int, int]]) -> None:
    """Sort one symlink into a folder to walk, a file to list (when its target is new) or an ignored entry."""
    try:
        target = entry.stat()  # follows the link
    except OSError:  # broken link, or a loop the OS refuses to resolve
        ignored.append(path)
        return
    if stat.S_ISDIR(target.st_mode):
        subfolders.append(path)
    elif stat.S_ISREG(target.st_mode) and (target.st_dev, target.st_ino) not in seen:
        seen.add((target.st_dev, target.st_ino))
        files.append(path)
    else:
        ignored.append(path)
