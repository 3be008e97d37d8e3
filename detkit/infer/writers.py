"""What inference writes: annotated images, COCO-results ``predictions.json`` and YOLO txt, from a source folder.

``run_detection`` drives a :class:`~detkit.infer.predictor.Predictor` over a source; every file is written atomically.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from detkit.data.images import read_image, write_image
from detkit.errors import DatasetError
from detkit.infer.predictor import Predictor
from detkit.infer.sources import find_sources
from detkit.io import atomic_write_json, atomic_write_text
from detkit.viz.draw import as_numpy, draw_detections

__all__ = ["DetectRunSummary", "run_detection", "yolo_lines"]

logger = logging.getLogger(__name__)


def yolo_lines(boxes: np.ndarray | Tensor, labels: Sequence[int] | np.ndarray | Tensor,
               scores: np.ndarray | Tensor | None, image_hw: tuple[int, int]) -> list[str]:
    """YOLO txt rows ``label cx cy w h [score]`` with coordinates normalised by the image size.

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)`` in the image's pixels.
        labels: ``[N]`` contiguous class indices.
        scores: ``[N]`` confidences appended as a sixth column, or None.
        image_hw: ``(height, width)`` of the image in pixels.
    """
    h, w = image_hw
    b = as_numpy(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h
    bw, bh = (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h
    lab = as_numpy(labels, np.int64).reshape(-1)
    s = None if scores is None else as_numpy(scores, np.float64).reshape(-1)
    rows = []
    for i in range(len(b)):
        row = f"{lab[i]} {cx[i]:.6f} {cy[i]:.6f} {bw[i]:.6f} {bh[i]:.6f}"
        rows.append(row + (f" {s[i]:.5f}" if s is not None else ""))
    return rows


@dataclass
class DetectRunSummary:
    """What :func:`run_detection` did; ``str()`` gives a one-line summary."""

    output: Path
    images: int = 0  # images read and detected
    detections: int = 0  # detections written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files
    seconds: float = 0.0  # wall time of reading, detection and writing

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.images} images, {self.detections} detections, {len(self.skipped)} unreadable skipped, "
                f"{self.images_per_s:.1f} images/s; results in {self.output}")


def run_detection(
    predictor: Predictor,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    save_txt: bool = False,
    save_images: bool = True,
) -> DetectRunSummary:
    """Detect on every image of ``source`` and write the results to ``output``.

    Writes (each file atomically): annotated images ``OUTPUT/<stem>.jpg`` (boxes, class names, scores),
    ``OUTPUT/predictions.json`` (COCO results: ``file_name``, ``image_id`` (index in the sorted source list),
    ``category_id`` (the training set's), ``bbox`` ``[x, y, w, h]`` original pixels, ``score``) and, with
    ``save_txt``, ``OUTPUT/labels/<stem>.txt`` (YOLO rows ``label cx cy w h score``). Unreadable files are
    logged, listed in the summary and skipped.

    Args:
        predictor: a :class:`Predictor`.
        source: an image file, a folder of images or a glob pattern.
        output: results folder (created).
        save_txt: also write YOLO txt files.
        save_images: write annotated images.

    Returns:
        A :class:`DetectRunSummary`.
    """
    files = find_sources(source)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = DetectRunSummary(output=output)
    results: list[dict[str, Any]] = []
    names = _unique_stems(files)
    start = time.perf_counter()
    for offset in range(0, len(files), predictor.batch_size):
        chunk, images = [], []
        for index in range(offset, min(offset + predictor.batch_size, len(files))):
            try:
                images.append(read_image(files[index]))
                chunk.append(index)
            except DatasetError as err:
                logger.warning("%s; skipped", err)
                summary.skipped.append((str(files[index]), str(err)))
        if not images:
            continue
        for index, image, det in zip(chunk, images, predictor.predict(images)):
            path = files[index]
            summary.images += 1
            summary.detections += len(det["scores"])
            xywh = det["boxes"].clone()
            xywh[:, 2:] -= xywh[:, :2]
            for box, score, cat in zip(xywh.tolist(), det["scores"].tolist(), det["category_ids"].tolist()):
                results.append({"image_id": index, "file_name": str(path), "category_id": int(cat),
                                "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
            if save_images:
                drawn = draw_detections(image, det["boxes"], det["labels"], predictor.classes, det["scores"])
                write_image(output / f"{names[index]}.jpg", drawn)
            if save_txt:
                rows = yolo_lines(det["boxes"], det["labels"], det["scores"], image.shape[:2])
                atomic_write_text(output / "labels" / f"{names[index]}.txt", "".join(r + "\n" for r in rows))
    summary.seconds = time.perf_counter() - start
    atomic_write_json(output / "predictions.json", results, indent=1)
    logger.info("%s", summary)
    return summary


def _unique_stems(files: Sequence[Path]) -> list[str]:
    """Output names: each file's stem, with ``_2``, ``_3`` ... appended where stems repeat (folders, globs)."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        n = seen.get(f.stem, 0) + 1
        seen[f.stem] = n
        names.append(f.stem if n == 1 else f"{f.stem}_{n}")
    return names
