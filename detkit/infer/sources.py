"""What inference reads: image files (a file, a folder or a glob pattern) and frame streams (videos, cameras, URLs).

Image lists are sorted and deduplicated, so every run over the same source sees the same files in the same order;
a :class:`VideoFrames` yields one frame at a time, so a long video never sits in memory.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from detkit.data.images import IMAGE_EXTENSIONS, is_image_file

__all__ = ["VIDEO_EXTENSIONS", "VideoFrames", "find_sources", "is_stream_source"]

#: file extensions read as videos (any other non-image file given by name is also tried as one)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif")


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


def is_stream_source(source: str | os.PathLike) -> bool:
    """Whether ``source`` is read frame by frame: a camera index (``"0"``), a URL (``rtsp://...``) or a video file.

    A video file is an existing file with a :data:`VIDEO_EXTENSIONS` extension; image files, folders and globs
    are not streams.
    """
    text = os.fspath(source)
    if text.isdigit() or "://" in text:
        return True
    path = Path(text)
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


class VideoFrames:
    """The frames of a video file, a camera or a stream URL, read one at a time with OpenCV.

    Use as a context manager (the capture is released on exit) and iterate: each item is an
    ``ndarray[H, W, 3]`` uint8 RGB frame. Iteration stops at the end of the video, after ``max_frames``
    frames, or when a camera/stream stops delivering.

    Args:
        source: a video file (any format OpenCV reads), a camera index (``0`` or ``"0"``) or a stream URL.
        max_frames: stop after this many frames (None: all; a camera runs until interrupted).

    Attributes:
        name: a file-name stem for outputs (the video's stem, ``camera0``, ``stream``).
        fps: frames per second the source reports (25 when it reports none).
        width, height: frame size in pixels.
        frame_count: frames the source reports (0 when unknown: cameras, streams).

    Raises:
        FileNotFoundError: a video file that does not exist.
        ValueError: a source OpenCV cannot open or read a first frame from.
    """

    def __init__(self, source: str | int | os.PathLike, *, max_frames: int | None = None) -> None:
        text = os.fspath(source) if not isinstance(source, int) else str(source)
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames: expected >= 1 or None, got {max_frames}")
        self.is_camera = text.isdigit()
        if not self.is_camera and "://" not in text and not Path(text).is_file():
            raise FileNotFoundError(f"video {text} does not exist")
        self.source, self.max_frames = text, max_frames
        self.name = f"camera{text}" if self.is_camera else ("stream" if "://" in text else Path(text).stem)
        self._capture = cv2.VideoCapture(int(text) if self.is_camera else text)
        first = self._read() if self._capture.isOpened() else None
        if first is None:
            self._capture.release()
            raise ValueError(f"source {text} cannot be opened as a video, camera or stream by OpenCV")
        self._first: np.ndarray | None = first
        self.height, self.width = first.shape[:2]
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else 25.0
        self.frame_count = max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0))

    def _read(self) -> np.ndarray | None:
        ok, frame = self._capture.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB if frame.shape[2] == 4 else cv2.COLOR_BGR2RGB)

    def __iter__(self) -> Iterator[np.ndarray]:
        count = 0
        while self.max_frames is None or count < self.max_frames:
            frame, self._first = (self._first, None) if self._first is not None else (self._read(), None)
            if frame is None:
                return
            count += 1
            yield frame

    def close(self) -> None:
        """Release the capture (also done on leaving a ``with`` block)."""
        self._capture.release()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
