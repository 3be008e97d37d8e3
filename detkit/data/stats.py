"""Dataset statistics: per-channel RGB mean and std of the raw images, for normalising a model trained from scratch.

Images are read in parallel threads; sums are accumulated in float64 so large sets lose no precision.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from detkit.data.files import walk_files
from detkit.data.images import DatasetError, default_workers, is_image_file, read_image

__all__ = ["compute_mean_std"]

logger = logging.getLogger(__name__)

Triple = tuple[float, float, float]


def compute_mean_std(
    dataset_or_paths: object,
    max_images: int | None = 1000,
    img_size: int | None = None,
    workers: int | None = None,
) -> tuple[Triple, Triple]:
    """Per-channel mean and (population) std of RGB pixels, in [0, 1] units.

    Args:
        dataset_or_paths: a dataset with ``samples`` (list of ``(path, label)``, e.g.
            :class:`~detkit.data.classification.ImageFolderDataset`; its transform is not applied), an
            iterable of image paths, or a directory searched recursively for image files.
        max_images: use at most this many images, evenly spaced over the sorted list (deterministic);
            ``None`` uses all.
        img_size: when given, each image is first resized to ``img_size × img_size`` (area interpolation),
            so every image weighs the same; otherwise each pixel weighs the same.
        workers: reader threads (``None``: a few more than the CPU count; ``0``/``1``: serial).

    Returns:
        ``((mean_r, mean_g, mean_b), (std_r, std_g, std_b))`` in [0, 1] units, ready for
        :func:`~detkit.data.transforms.build_classification_transforms`.

    Raises:
        FileNotFoundError: a directory argument that does not exist.
        DatasetError: no image could be read.
    """
    paths = _as_paths(dataset_or_paths)
    if max_images is not None:
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
        if len(paths) > max_images:
            keep = np.linspace(0, len(paths) - 1, max_images).round().astype(np.int64)
            paths = [paths[i] for i in keep]
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1):
        raise ValueError(f"img_size must be a positive int or None, got {img_size!r}")
    if not paths:
        raise DatasetError("compute_mean_std got no image paths")
    workers = default_workers() if workers is None else workers

    def moments(path: Path) -> np.ndarray | None:
        try:
            image = read_image(path)
        except DatasetError as err:
            logger.warning("compute_mean_std: skipping %s", err)
            return None
        if img_size is not None:
            image = cv2.resize(image, (img_size, img_size), interpolation=cv2.INTER_AREA)
        mean, std = cv2.meanStdDev(image)  # per channel, float64, pixel units; OpenCV releases the GIL
        n = image.shape[0] * image.shape[1]
        mean, std = mean.ravel(), std.ravel()
        return np.concatenate([[n], mean * n, (std**2 + mean**2) * n])  # count, sum, sum of squares

    if workers <= 1:
        results = [moments(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
            results = list(pool.map(moments, paths))
    rows = [r for r in results if r is not None]
    if not rows:
        raise DatasetError(f"compute_mean_std could not read any of {len(paths)} image(s), e.g. {paths[0]}")
    total = np.sum(rows, axis=0, dtype=np.float64)
    count = total[0]
    mean = total[1:4] / count
    var = np.maximum(total[4:7] / count - mean**2, 0.0)
    mean, std = mean / 255.0, np.sqrt(var) / 255.0
    logger.info("mean/std over %d image(s): mean %s, std %s", len(rows), np.round(mean, 4), np.round(std, 4))
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def _as_paths(source: object) -> list[Path]:
    samples = getattr(source, "samples", None)
    if samples is not None:
        return [Path(s[0]) for s in samples]
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_dir():
            return [p for p in walk_files(root)[0] if is_image_file(p)]
        if root.is_file():
            return [root]
        raise FileNotFoundError(f"dataset_or_paths {root} does not exist")
    if isinstance(source, Iterable):
        return [Path(p) for p in source]
    raise TypeError(
        "dataset_or_paths must be a dataset with .samples, an iterable of paths or a directory, "
        f"got {type(source).__name__}"
    )
