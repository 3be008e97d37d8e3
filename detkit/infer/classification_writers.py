"""What classification inference writes: top-k labels and probabilities (CSV and JSON) and a contact sheet PNG.

``run_classification`` drives a :class:`~detkit.infer.classifier.ClassificationPredictor` over images; files are atomic.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from detkit.data.images import write_image
from detkit.infer.classifier import ClassificationPredictor
from detkit.infer.sources import find_sources
from detkit.infer.writers import ImageRunSummary, check_output_location, iter_batches
from detkit.io import atomic_write_json, atomic_write_text
from detkit.viz.sheet import render_contact_sheet

__all__ = ["ClassifyRunSummary", "run_classification", "top_k"]

logger = logging.getLogger(__name__)

_SHEET_TILE = 160


def top_k(probabilities: torch.Tensor, classes: list[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row of ``Tensor[B, C]`` probabilities, the ``k`` best ``{"label", "class_index", "probability"}``
    (decreasing; ``k`` is capped at ``C``)."""
    if k < 1:
        raise ValueError(f"topk: expected >= 1, got {k}")
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [[{"label": classes[i], "class_index": int(i), "probability": round(float(v), 6)}
             for v, i in zip(row_v.tolist(), row_i.tolist())] for row_v, row_i in zip(values, indices)]


@dataclass
class ClassifyRunSummary(ImageRunSummary):
    """What :func:`run_classification` did; ``str()`` gives a one-line summary."""

    files: list[Path] = field(default_factory=list)  # the files written

    def __str__(self) -> str:
        return (f"{self.images} images classified, {len(self.skipped)} unreadable skipped, "
                f"{self.images_per_s:.1f} images/s; results in {self.output}")


def _csv_text(rows: list[dict[str, Any]], k: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file_name"] + [f"{name}{r}" for r in range(1, k + 1) for name in ("label", "probability")])
    for row in rows:
        cells = [row["file_name"]]
        for entry in row["top"]:
            cells += [entry["label"], f"{entry['probability']:.6f}"]
        writer.writerow(cells + [""] * (1 + 2 * k - len(cells)))
    return buf.getvalue()


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """A copy at most ``_SHEET_TILE`` pixels on its longer side, so the sheet's memory does not grow with images."""
    scale = _SHEET_TILE / max(image.shape[:2])
    if scale >= 1:
        return image.copy()
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def run_classification(
    predictor: ClassificationPredictor,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    topk: int = 5,
    contact_sheet: bool = False,
    sheet_images: int = 60,
) -> ClassifyRunSummary:
    """Classify every image of ``source`` and write the top-k labels and probabilities to ``output``.

    Writes (atomically) ``OUTPUT/predictions.csv`` (``file_name, label1, probability1, ..., labelK,
    probabilityK``), ``OUTPUT/predictions.json`` (per image ``file_name`` and ``top``: ``label``,
    ``class_index``, ``probability``, decreasing) and, with ``contact_sheet``, ``OUTPUT/contact_sheet.png``
    (the first ``sheet_images`` images with their top-2 labels). Unreadable files are skipped and listed.

    Args:
        predictor: the :class:`ClassificationPredictor`.
        source: an image file, a folder of images or a glob pattern (see :func:`find_sources`).
        output: results folder (created); not the source folder, nor inside it.
        topk: labels kept per image (capped at the class count).
        contact_sheet: also write the contact sheet.
        sheet_images: images shown on the sheet.

    Returns:
        A :class:`ClassifyRunSummary`.
    """
    files = find_sources(source)
    check_output_location(source, output, files)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = ClassifyRunSummary(output=output)
    rows: list[dict[str, Any]] = []
    thumbs: list[tuple[np.ndarray, list[str]]] = []
    start = time.perf_counter()
    for chunk, images in iter_batches(files, predictor.batch_size, summary.skipped):
        for index, image, top in zip(chunk, images, top_k(predictor.predict(images), predictor.classes, topk)):
            rows.append({"file_name": str(files[index]), "top": top})
            if contact_sheet and len(thumbs) < sheet_images:
                thumbs.append((_thumbnail(image), [f"{t['label'][:18]} {t['probability']:.2f}" for t in top[:2]]))
        summary.images += len(images)
    k = min(topk, len(predictor.classes))
    summary.files.append(atomic_write_text(output / "predictions.csv", _csv_text(rows, k)))
    summary.files.append(atomic_write_json(output / "predictions.json", rows, indent=1))
    if contact_sheet:
        sheet = render_contact_sheet([t[0] for t in thumbs], [t[1] for t in thumbs], tile=_SHEET_TILE)
        summary.files.append(write_image(output / "contact_sheet.png", sheet))
    summary.seconds = time.perf_counter() - start
    logger.info("%s", summary)
    return summary
