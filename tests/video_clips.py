"""Generated video clips for the video-inference tests (a module named so that no test folder shadows it)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_clip(path: Path, frames: int = 7, size: tuple[int, int] = (96, 64)) -> Path:
    """An mp4v clip of a moving disc (MJPG .avi where OpenCV has no mp4 writer); returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        out = path.with_suffix(suffix)
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*codec), 10.0, size)
        if writer.isOpened():
            break
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 40, np.uint8)
        cv2.circle(frame, (10 + 8 * i, 32), 9, (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    return out
