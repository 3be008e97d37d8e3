"""An in-memory cache of decoded images (``data.cache: ram``): every image is decoded once, before training.

The pixels of all cached images live in one ``uint8`` buffer; datasets read from it, so augmentation is the only
per-epoch image work. The cache's size is checked against ``data.cache_max_gb`` before anything is decoded.

How it meets DataLoader workers: the cache is filled in the main process before the loaders exist. Forked workers
(Linux's default) share the buffer copy-on-write (the pixels are only read, so no page is ever copied); with the
``spawn``/``forkserver`` start methods the buffer, a torch tensor, is moved to shared memory once when the dataset
is sent to the workers, so every worker maps the same pages. Under DDP each rank holds its own cache.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from detkit.config.sections import CACHE_MODES, DataConfig
from detkit.data.images import default_workers, read_image
from detkit.errors import DatasetError

__all__ = ["ImageCache", "attach_image_cache", "cache_bytes", "dataset_image_sizes", "read_image_sizes"]

logger = logging.getLogger(__name__)

_GB = 1e9
_CHANNELS = 3  # the cache holds what read_image returns: RGB uint8


def cache_bytes(sizes: Iterable[tuple[int, int] | None]) -> int:
    """Bytes of decoded RGB uint8 pixels for images of ``(height, width)`` sizes (``None``: not cached, 0 bytes)."""
    return sum(h * w * _CHANNELS for h, w in (s for s in sizes if s is not None))


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header (nothing is decoded), or None when it cannot be read.

    EXIF orientation may swap the two sides of the decoded image, never its number of pixels, so the bytes a
    cache needs are exact either way.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return int(height), int(width)


def read_image_sizes(paths: Sequence[str | os.PathLike], workers: int | None = None) -> list[tuple[int, int] | None]:
    """Image sizes read from the file headers, in parallel threads, without decoding the pixels.

    Args:
        paths: image files.
        workers: threads (``None``: :func:`~detkit.data.images.default_workers`; ``0``/``1``: serial).

    Returns:
        ``(height, width)`` in pixels per path, in order; ``None`` for a file whose header cannot be read.
    """
    paths = [Path(p) for p in paths]
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(paths) <= 1:
        return [_header_size(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        return list(pool.map(_header_size, paths))


def dataset_image_sizes(dataset: Any, workers: int | None = None) -> tuple[list[Path], list[tuple[int, int] | None]]:
    """The image files a dataset reads and their ``(height, width)``, known before decoding.

    A detection dataset (``records``, e.g. :class:`~detkit.data.detection.DetectionDataset`) gives the sizes its
    annotations hold (checked against the files by its upfront scan); a classification dataset (``samples`` of
    ``(path, label)``, e.g. :class:`~detkit.data.classification.ImageFolderDataset`) has them read from the file
    headers (:func:`read_image_sizes`).

    Raises:
        TypeError: for a dataset with neither ``records`` nor ``samples``.
    """
    records = getattr(dataset, "records", None)
    if records is not None:
        return [Path(r.path) for r in records], [(int(r.height), int(r.width)) for r in records]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise TypeError(f"data.cache: cannot cache {type(dataset).__name__}: it lists neither records (detection) "
                        f"nor samples (classification)")
    paths = [Path(p) for p, _ in samples]
    return paths, read_image_sizes(paths, workers)


class ImageCache:
    """Decoded RGB images, each stored once in one ``uint8`` buffer and looked up by path.

    Args:
        paths: the image files (duplicates are stored once).
        sizes: their ``(height, width)`` in pixels, as the decoded images will have them (up to EXIF rotation);
            ``None`` leaves an image out (it is then read from disk on every use).

    Attributes:
        nbytes: bytes of the pixel buffer.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], sizes: Sequence[tuple[int, int] | None]) -> None:
        if len(paths) != len(sizes):
            raise ValueError(f"paths and sizes must have one entry per image, got {len(paths)} and {len(sizes)}")
        self._index: dict[str, int] = {}
        self.paths: list[Path] = []
        nbytes: list[int] = []
        for path, size in zip(paths, sizes):
            key = os.fspath(path)
            if size is None or key in self._index:
                continue
            self._index[key] = len(self.paths)
            self.paths.append(Path(path))
            nbytes.append(cache_bytes([size]))
        counts = np.asarray(nbytes, dtype=np.int64).reshape(-1)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [N + 1]
        self._shapes = np.zeros((len(self.paths), 2), dtype=np.int64)  # [N, 2] decoded (h, w); 0: not filled
        # a tensor rather than an ndarray: sent to spawned workers it moves to shared memory instead of being copied
        self._pixels = torch.empty(int(self._offsets[-1]), dtype=torch.uint8)
        self.nbytes = int(self._offsets[-1])

    def __len__(self) -> int:
        """Images decoded into the cache."""
        return int((self._shapes[:, 0] > 0).sum())

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False
        index = self._index.get(os.fspath(path))
        return index is not None and bool(self._shapes[index, 0] > 0)

    def fill(self, workers: int | None = None) -> list[tuple[Path, str]]:
        """Decode every image into the buffer with :func:`~detkit.data.images.read_image`, in parallel threads.

        An image that fails to decode, or decodes to another number of pixels than its size said, is left out
        (read from disk, and reported there, each time it is used, as without a cache).

        Args:
            workers: threads (``None``: :func:`~detkit.data.images.default_workers`; ``0``/``1``: serial).

        Returns:
            ``(path, reason)`` of the images left out.
        """
        workers = default_workers() if workers is None else workers
        indices = range(len(self.paths))
        if workers <= 1 or len(self.paths) <= 1:
            problems = [self._fill_one(i) for i in indices]
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(self.paths))) as pool:
                problems = list(pool.map(self._fill_one, indices))
        return [(self.paths[i], p) for i, p in zip(indices, problems) if p is not None]

    def _fill_one(self, index: int) -> str | None:
        path = self.paths[index]
        try:
            image = read_image(path)  # OpenCV releases the GIL while decoding: the threads scale
        except DatasetError as err:
            return str(err)
        start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
        if image.size != stop - start:
            return f"decoded to {image.shape[0]}x{image.shape[1]} px, not the {(stop - start) // _CHANNELS} px expected"
        self._pixels.numpy()[start:stop] = image.reshape(-1)
        self._shapes[index] = image.shape[:2]
        return None

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """The image at ``path``, as :func:`~detkit.data.images.read_image` returns it.

        Returns:
            ``ndarray[H, W, 3]`` uint8 RGB, C-contiguous: a fresh copy (a transform may write to it); a path the
            cache does not hold is read from disk.

        Raises:
            DatasetError: for a path not held that cannot be read (as ``read_image``).
        """
        index = self._index.get(os.fspath(path))
        if index is None or self._shapes[index, 0] == 0:
            return read_image(path)
        start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
        height, width = (int(v) for v in self._shapes[index])
        return self._pixels.numpy()[start:stop].reshape(height, width, _CHANNELS).copy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(images={len(self)}, gb={self.nbytes / _GB:.3f})"


def attach_image_cache(data_cfg: DataConfig, datasets: Sequence[Any | None]) -> ImageCache | None:
    """Decode the images of ``datasets`` into one :class:`ImageCache` and set it as their ``image_cache``.

    Does nothing for ``data.cache: none``. For ``ram`` the decoded size (RGB uint8) is computed from the image
    sizes first and checked against ``data.cache_max_gb``; only then is anything decoded (with
    ``data.scan_workers`` threads).

    Args:
        data_cfg: the ``data`` section (``cache``, ``cache_max_gb``, ``scan_workers``).
        datasets: the splits to cache (``None`` entries, e.g. no validation split, are skipped; wrappers such as
            ``Subset`` are followed to the dataset they wrap); each reads through its ``image_cache`` attribute.

    Returns:
        The cache, or None for ``data.cache: none``.

    Raises:
        ValueError: for an unknown ``data.cache``, or a set whose decoded size exceeds ``data.cache_max_gb``
            (the message gives the size needed).
    """
    if data_cfg.cache not in CACHE_MODES:
        raise ValueError(f"data.cache: expected one of {', '.join(CACHE_MODES)}, got {data_cfg.cache!r}")
    datasets = _image_datasets(datasets)
    if data_cfg.cache == "none" or not datasets:
        return None
    start = time.perf_counter()
    paths: list[Path] = []
    sizes: list[tuple[int, int] | None] = []
    for dataset in datasets:
        more_paths, more_sizes = dataset_image_sizes(dataset, data_cfg.scan_workers)
        paths += more_paths
        sizes += more_sizes
    cache = ImageCache(paths, sizes)
    _check_fits(cache, data_cfg.cache_max_gb)
    left_out = cache.fill(data_cfg.scan_workers)
    for dataset in datasets:
        dataset.image_cache = cache
    logger.info("data.cache: ram: %d images decoded into %.3f GB in %.1f s", len(cache), cache.nbytes / _GB,
                time.perf_counter() - start)
    if left_out:
        logger.warning("data.cache: %d image(s) not cached (read from disk when used), e.g. %s: %s",
                       len(left_out), *left_out[0])
    return cache


def _image_datasets(datasets: Sequence[Any | None]) -> list[Any]:
    """The datasets that read the images, each once: wrappers (``Subset``, folds) are followed through ``.dataset``."""
    found: dict[int, Any] = {}
    for dataset in datasets:
        while dataset is not None and not hasattr(dataset, "records") and not hasattr(dataset, "samples"):
            dataset = getattr(dataset, "dataset", None)
        if dataset is not None:
            found.setdefault(id(dataset), dataset)
    return list(found.values())


def _check_fits(cache: ImageCache, max_gb: float) -> None:
    """Refuse, before decoding, a cache larger than ``data.cache_max_gb``; the message gives the size needed."""
    if cache.nbytes <= max_gb * _GB:
        return
    need = cache.nbytes / _GB
    raise ValueError(f"data.cache: ram needs {need:.3g} GB for the {len(cache.paths):,} images decoded as RGB uint8 "
                     f"(every split cached), more than data.cache_max_gb = {max_gb:g}; raise data.cache_max_gb to at "
                     f"least {_round_up(need):g} if the machine has that much free memory, or set data.cache: none")


def _round_up(value: float, digits: int = 3) -> float:
    """``value`` rounded up to ``digits`` significant digits (the smallest cap that admits it, as printed)."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale) / scale
