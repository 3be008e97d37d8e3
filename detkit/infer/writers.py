"""What detection inference writes for image sources: annotated images, COCO-results ``predictions.json``, YOLO txt.

``run_detection`` drives a :class:`~detkit.infer.predictor.Predictor` (or a tiled one) over a source; every file is
written atomically, and the output folder may not be, or lie inside, the source (the originals stay untouched).
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch import Tensor

from detkit.data.images import read_image, write_image
from detkit.errors import DatasetError
from detkit.infer.image_ids import dataset_image_ids
from detkit.infer.sources import find_sources
from detkit.io import atomic_write_json, atomic_write_text
from detkit.viz.draw import as_numpy, draw_detections

__all__ = ["DetectRunSummary", "ImageRunSummary", "check_output_location", "coco_results", "read_batch",
           "run_detection", "write_errors_as_user_errors", "write_yolo_names", "yolo_lines"]

logger = logging.getLogger(__name__)

#: the data.yaml key detkit's YOLO reader takes the dataset's category ids from (detkit.data.formats)
YOLO_IDS_KEY = "coco_category_ids"


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


def write_yolo_names(output: str | os.PathLike, classes: Sequence[str], category_ids: Sequence[int]) -> None:
    """``OUTPUT/classes.txt`` (one name per line, label order) and ``OUTPUT/data.yaml`` (``nc``, ``names`` and the
    dataset's category ids), so YOLO label files keep their class names; both written atomically."""
    output = Path(output)
    names = [str(c) for c in classes]
    atomic_write_text(output / "classes.txt", "".join(n + "\n" for n in names))
    data = {"nc": len(names), "names": dict(enumerate(names)), YOLO_IDS_KEY: [int(i) for i in category_ids]}
    atomic_write_text(output / "data.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def coco_results(det: dict[str, Tensor], image_id: int, file_name: str) -> list[dict[str, Any]]:
    """COCO results entries of one image: ``image_id``, ``file_name``, ``category_id``, ``bbox`` ``[x, y, w, h]``
    (original pixels, 3 decimals) and ``score`` (5 decimals), from a :meth:`Predictor.predict` dict."""
    xywh = det["boxes"].clone()
    xywh[:, 2:] -= xywh[:, :2]
    return [{"image_id": int(image_id), "file_name": file_name, "category_id": int(cat),
             "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)}
            for box, score, cat in zip(xywh.tolist(), det["scores"].tolist(), det["category_ids"].tolist())]


@contextmanager
def write_errors_as_user_errors(output: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing results (a full disk, a read-only folder) into a ``ValueError``
    naming ``output``, the one-line error of a CLI; the atomic writers leave no partial file behind."""
    try:
        yield
    except OSError as err:
        if isinstance(err, (FileNotFoundError, PermissionError, NotADirectoryError)):
            raise  # already user errors with their own messages
        raise ValueError(f"cannot write the results to {output}: {err}") from err


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_location(source: str | os.PathLike, output: str | os.PathLike, files: Sequence[Path] = ()) -> None:
    """Refuse an output folder that would put results among the user's sources.

    Raises ``ValueError`` when ``output`` is a source folder (or the folder of a recursive ``**`` pattern) or lies
    inside it, or is the folder of any source file (annotated copies would replace originals of the same name).
    """
    out = Path(output).resolve()
    text = os.fspath(source)
    roots = [Path(text)] if Path(text).is_dir() else []
    if glob.has_magic(text) and "**" in text:  # a recursive pattern reads everything below its folder
        prefix = text[: min(text.index(c) for c in "*?[" if c in text)]
        roots.append(Path(prefix) if prefix.endswith(("/", os.sep)) else Path(prefix).parent)
    for root in roots:
        if _is_within(out, root.resolve()):
            raise ValueError(f"output: {output} is, or is inside, the source {root}; annotated copies would mix with "
                             "(or overwrite) the original images: choose another --output folder")
    for f in files:
        if out == Path(f).resolve().parent:
            raise ValueError(f"output: {output} is the folder of the source file {f}; its annotated copy would "
                             "overwrite originals: choose another --output folder")


@dataclass
class ImageRunSummary:
    """What a run over image files did (detection or classification); ``str()`` gives a one-line summary."""

    output: Path
    images: int = 0  # images read and processed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files
    seconds: float = 0.0  # wall time of reading, inference and writing

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def problems(self, source: str | os.PathLike) -> list[str]:
        """Lines for stderr: each skipped file, and an ``error:`` line when no file of ``source`` could be read."""
        lines = [f"skipped {path}: {reason}" for path, reason in self.skipped]
        return lines + ([f"error: none of the files of {source} could be read"] if self.images == 0 else [])

    @property
    def exit_code(self) -> int:
        """0, or 1 when no image could be read."""
        return 0 if self.images else 1


@dataclass
class DetectRunSummary(ImageRunSummary):
    """What :func:`run_detection` did; ``str()`` gives a one-line summary."""

    detections: int = 0  # detections written
    annotations: Path | None = None  # the COCO file whose image ids predictions.json uses (None: sequential ids)

    def __str__(self) -> str:
        ids = f"image ids of {self.annotations}" if self.annotations else "sequential image ids"
        return (f"{self.images} images, {self.detections} detections, {len(self.skipped)} unreadable skipped, "
                f"{self.images_per_s:.1f} images/s; results in {self.output} ({ids})")


def read_batch(files: Sequence[Path], indices: range,
               skipped: list[tuple[str, str]]) -> tuple[list[int], list[np.ndarray]]:
    """``(indices, images)`` of the readable files among ``files[indices]`` (``ndarray[H, W, 3]`` uint8 RGB);
    unreadable ones are logged and appended to ``skipped`` as ``(path, reason)``."""
    chunk, images = [], []
    for index in indices:
        try:
            images.append(read_image(files[index]))
            chunk.append(index)
        except DatasetError as err:
            logger.warning("%s; skipped", err)
            skipped.append((str(files[index]), str(err)))
    return chunk, images


def iter_batches(files: Sequence[Path], batch_size: int,
                 skipped: list[tuple[str, str]]) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """``(indices, images)`` for each run of ``batch_size`` files that holds a readable one (:func:`read_batch`:
    unreadable files are appended to ``skipped``)."""
    for offset in range(0, len(files), batch_size):
        chunk, images = read_batch(files, range(offset, min(offset + batch_size, len(files))), skipped)
        if images:
            yield chunk, images


def run_detection(
    predictor: Any,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    save_txt: bool = False,
    save_images: bool = True,
    annotations: str | os.PathLike | None = None,
) -> DetectRunSummary:
    """Detect on every image of ``source`` and write the results to ``output``.

    Writes (each file atomically): annotated images ``OUTPUT/<stem>.jpg`` (boxes, class names, scores),
    ``OUTPUT/predictions.json`` (COCO results: ``image_id``, ``file_name``, ``category_id`` (the training set's),
    ``bbox`` ``[x, y, w, h]`` original pixels, ``score``) and, with ``save_txt``, ``OUTPUT/labels/<stem>.txt``
    (YOLO rows ``label cx cy w h score``) with ``OUTPUT/classes.txt`` and ``OUTPUT/data.yaml`` naming the labels.
    ``image_id`` is the dataset's id, matched by file name, when ``annotations`` is given or ``source`` is a
    split folder holding ``annotations.json`` (so ``pycocotools`` ``loadRes`` takes the file as it is);
    otherwise the position in the sorted source list. Unreadable files are skipped and listed in the summary.

    Args:
        predictor: a :class:`~detkit.infer.predictor.Predictor` or :class:`~detkit.infer.tiling.TiledPredictor`.
        source: an image file, a folder of images or a glob pattern (see :func:`find_sources`).
        output: results folder (created); it may not be the source folder or lie inside it.
        save_txt: also write YOLO txt files.
        save_images: write annotated images.
        annotations: a COCO instances file listing every source image (its ids are used).

    Returns:
        A :class:`DetectRunSummary`.
    """
    files = find_sources(source)
    check_output_location(source, output, files)
    ids, used = dataset_image_ids(files, source, annotations)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = DetectRunSummary(output=output, annotations=used)
    results: list[dict[str, Any]] = []
    names = _unique_stems(files)
    start = time.perf_counter()
    for chunk, images in iter_batches(files, predictor.batch_size, summary.skipped):
        for index, image, det in zip(chunk, images, predictor.predict(images)):
            summary.images += 1
            summary.detections += len(det["scores"])
            image_id = ids[files[index]] if ids is not None else index
            results += coco_results(det, image_id, str(files[index]))
            if save_images:
                drawn = draw_detections(image, det["boxes"], det["labels"], predictor.classes, det["scores"])
                write_image(output / f"{names[index]}.jpg", drawn)
            if save_txt:
                rows = yolo_lines(det["boxes"], det["labels"], det["scores"], image.shape[:2])
                atomic_write_text(output / "labels" / f"{names[index]}.txt", "".join(r + "\n" for r in rows))
    summary.seconds = time.perf_counter() - start
    if save_txt:
        write_yolo_names(output, predictor.classes, predictor.category_ids)
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
