"""What inference reads: the image files named by a source (a file, a folder or a glob pattern).

Sorted and deduplicated, so every run over the same source sees the same files in the same order.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from detkit.data.images import IMAGE_EXTENSIONS, is_image_file

__all__ = ["find_sources"]


def find_sources(source: str | os.PathLike) -> list[Path]:
    """The image files named by ``source``: one file, every image file in a folder (sorted), or a glob.

    Files in a folder or glob without an image extension are ignored; a file given by name is always
    returned (an unreadable one is reported later, when it is read).

    Raises:
        FileNotFoundError: when ``source`` matches nothing.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise FileNotFoundError(f"source folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file() and is_image_file(p))
        if not files:
            raise FileNotFoundError(f"source pattern {text!r} matches no image files")
        return files
    raise FileNotFoundError(f"source {text} is neither a file, a folder nor a glob pattern that matches files")
