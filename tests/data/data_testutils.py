"""Helpers for the data tests: tiny images written with plain OpenCV (never through detkit, which is under test)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or gray, or RGBA) array with plain OpenCV, converting to its BGR order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), rgb):
        raise RuntimeError(f"test setup could not write {path}")
    return path


def random_rgb(seed: int, height: int = 12, width: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def jpeg_bytes(seed: int = 0, height: int = 24, width: int = 32) -> bytes:
    ok, buf = cv2.imencode(".jpg", random_rgb(seed, height, width))
    assert ok
    return buf.tobytes()
