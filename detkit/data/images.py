"""Image files: reading any supported file as an RGB uint8 array, and a fast parallel validity scan.

Everything that touches image bytes on disk goes through here, so every dataset agrees on what a readable image is.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from detkit.errors import DatasetError
from detkit.io import atomic_write_bytes

__all__ = [
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "default_workers",
    "is_image_file",
    "read_image",
    "scan_image_sizes",
    "scan_images",
    "write_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_JPEG_MAGIC = b"\xff\xd8\xff"
# In JPEG entropy-coded data 0xFF is followed by 0x00 (byte stuffing), a restart marker 0xD0-0xD7,
# or more 0xFF fill bytes; any other byte after 0xFF starts a real marker and ends the scan.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


class _UnreadableImage(DatasetError):
    """Raised by the readers below; keeps the bare reason so the scan can report it next to the path."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.reason = reason


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and is not hidden."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def default_workers() -> int:
    """Thread count for I/O-and-decode pools: a few more threads than cores, since reads block."""
    return min(32, (os.cpu_count() or 1) + 4)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    JPEGs are decoded in colour with their EXIF orientation applied; other formats are read unchanged and
    converted: grayscale → RGB (channel repeated), RGBA → RGB (alpha dropped, as PIL's ``convert("RGB")``),
    16-bit → 8-bit (scaled by 255/65535), float → 8-bit (values taken as [0, 1]).

    Args:
        path: an image file with one of :data:`IMAGE_EXTENSIONS`.

    Returns:
        ``ndarray[H, W, 3]`` uint8, RGB channel order, C-contiguous.

    Raises:
        DatasetError: ``"cannot read image {path}: {reason}"`` when the file is missing, empty, truncated,
            corrupt or not an image.
    """
    data = _read_bytes(path)
    image = _decode(data, path, reduced=False)
    return _to_rgb8(image, path)


def scan_images(
    paths: Iterable[str | os.PathLike], workers: int | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Check that every file decodes, in parallel, so bad files are found before training starts.

    Each file is read and fully entropy-decoded (JPEGs at 1/8 scale, which still reads every byte of the
    compressed stream but skips most of the pixel work); truncated JPEGs are caught by a marker walk that
    requires the end-of-image marker. OpenCV releases the GIL while decoding, so a thread pool scales.
    FIFOs, devices and other non-regular files are reported, never opened for a blocking read.

    Args:
        paths: files to check, in any order.
        workers: threads to use; ``None`` means :func:`default_workers`, ``0`` or ``1`` checks serially.

    Returns:
        ``(good, bad)``: the readable paths in input order, and ``(path, reason)`` for each unreadable one
        (unsupported extension, missing, empty, truncated, corrupt, undecodable, not a regular file), also in
        input order.
    """
    sizes = scan_image_sizes(paths, workers)
    good = [p for p, r in sizes.items() if not isinstance(r, str)]
    bad = [(p, r) for p, r in sizes.items() if isinstance(r, str)]
    return good, bad


def scan_image_sizes(
    paths: Iterable[str | os.PathLike], workers: int | None = None
) -> dict[Path, tuple[int, int] | str]:
    """The scan of :func:`scan_images`, also giving each readable image's exact size as :func:`read_image` sees it.

    The size is exact although JPEGs are decoded at 1/8 scale: it comes from the frame header, swapped when
    the reduced decode shows that the EXIF orientation rotates the image; the rare near-square JPEG where
    the reduced shape cannot tell is decoded in full.

    Args:
        paths: files to check (a path given twice is checked once).
        workers: threads, as for :func:`scan_images`.

    Returns:
        ``{path: (height, width)}`` for readable files, ``{path: reason}`` (a ``str``) for the others, in input order.
    """
    paths = list(dict.fromkeys(Path(p) for p in paths))
    if workers is None:
        workers = default_workers()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be a non-negative int or None, got {workers!r}")
    if workers <= 1 or len(paths) <= 1:
        results = [_scan_one(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
            results = list(pool.map(_scan_one, paths))
    return dict(zip(paths, results))


def _scan_one(path: Path) -> tuple[int, int] | str:
    """``(height, width)`` of ``path`` as :func:`read_image` would return it, or why it is unusable."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"unsupported file type {path.suffix or '(no extension)'!r}; expected one of {IMAGE_EXTENSIONS}"
    try:
        data = _read_bytes(path)
        image = _decode(data, path, reduced=True)
        _check_layout(image, path)
        if data[:3].tobytes() != _JPEG_MAGIC:
            return int(image.shape[0]), int(image.shape[1])
        size = _jpeg_size(data.tobytes(), image.shape[:2])
        if size is None:  # orientation ambiguous from the reduced shape: decode in full (rare)
            full = _decode(data, path, reduced=False)
            size = int(full.shape[0]), int(full.shape[1])
    except _UnreadableImage as err:
        return err.reason
    return size


def _jpeg_size(data: bytes, reduced: tuple[int, ...]) -> tuple[int, int] | None:
    """Exact ``(height, width)`` after EXIF rotation, from the frame header and the 1/8-scale decode's shape.

    libjpeg's 1/8 decode is ``ceil(h / 8) x ceil(w / 8)`` before OpenCV applies the EXIF orientation, so
    its shape says whether height and width were swapped; ``None`` when it cannot tell (or has no header).
    """
    header = _jpeg_frame_size(data)
    if header is None:
        return None
    h, w = header
    upright, rotated = (math.ceil(h / 8), math.ceil(w / 8)), (math.ceil(w / 8), math.ceil(h / 8))
    if h == w or upright != rotated:
        if tuple(reduced) == upright:
            return h, w
        if tuple(reduced) == rotated:
            return w, h
    return None


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the first start-of-frame segment (SOF0-SOF15 but DHT, JPG, DAC), or ``None``."""
    pos, n = 2, len(data)  # after SOI
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > n:
                return None
            return (data[pos + 5] << 8) | data[pos + 6], (data[pos + 7] << 8) | data[pos + 8]
        if marker == 0xDA or length < 2:  # image data before any frame header: malformed
            return None
        pos += 2 + length
    return None


def _read_bytes(path: str | os.PathLike) -> np.ndarray:
    # Opened non-blocking and checked to be a regular file before reading: a plain open of a FIFO named like
    # an image would wait for a writer forever. Reading the bytes ourselves (rather than cv2.imread) handles
    # any path encoding and lets us inspect them.
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise _UnreadableImage(path, "file not found") from None
    except OSError as err:
        raise _UnreadableImage(path, str(err.strerror or err)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
            raise _UnreadableImage(path, f"not a regular file ({kind})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except OSError as err:
        raise _UnreadableImage(path, str(err.strerror or err)) from None
    finally:
        os.close(fd)
    if data.size == 0:
        raise _UnreadableImage(path, "empty file (0 bytes)")
    return data


def _decode(data: np.ndarray, path: str | os.PathLike, *, reduced: bool) -> np.ndarray:
    is_jpeg = data[:3].tobytes() == _JPEG_MAGIC
    if is_jpeg:
        problem = _jpeg_structure_problem(data.tobytes())
        if problem is not None:
            raise _UnreadableImage(path, problem)
        # JPEG has no alpha and (in practice) no 16-bit data, so colour decoding loses nothing and applies
        # the EXIF orientation, which IMREAD_UNCHANGED would ignore.
        flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 if reduced else cv2.IMREAD_COLOR
    else:
        flags = cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as err:
        raise _UnreadableImage(path, f"OpenCV failed to decode it ({err.msg or err})") from None
    if image is None or image.size == 0:
        raise _UnreadableImage(path, "corrupt, truncated or not an image (OpenCV cannot decode it)")
    return image


def _jpeg_structure_problem(data: bytes) -> str | None:
    """Walk a JPEG's marker segments; return why it is incomplete, or ``None`` if it reaches end-of-image.

    OpenCV builds differ on truncated JPEGs: some return the partially decoded image with only a libjpeg
    warning on stderr. The walk is cheap (segment lengths are skipped, entropy data is searched by regex)
    and tolerates data after the end-of-image marker and thumbnails inside APP segments.
    """
    n = len(data)
    pos = 2  # after SOI
    while True:
        # Stray bytes before a marker are tolerated, as libjpeg does (it only warns about them).
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return "truncated JPEG (no end-of-image marker)"
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            return "truncated JPEG (no end-of-image marker)"
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM and RSTn stand alone
            continue
        if pos + 2 > n:
            return "truncated JPEG (segment header cut off)"
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            return f"corrupt JPEG (segment length {length} at byte {pos})"
        pos += length
        if pos > n:
            return "truncated JPEG (segment cut off)"
        if marker == 0xDA:  # SOS: entropy-coded data runs until the next real marker
            match = _MARKER_AFTER_SCAN.search(data, pos)
            if match is None:
                return "truncated JPEG (image data cut off before the end-of-image marker)"
            pos = match.start()


def _check_layout(image: np.ndarray, path: str | os.PathLike) -> None:
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
        raise _UnreadableImage(path, f"unsupported array shape {tuple(image.shape)}")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise _UnreadableImage(path, f"unsupported pixel type {image.dtype}")


def _to_rgb8(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    _check_layout(image, path)
    if image.dtype == np.uint16:
        image = np.rint(image.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif image.dtype != np.uint8:  # float TIFF/EXR-like data, taken as [0, 1]
        image = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 2:  # gray + alpha
        image = image[:, :, 0]
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(image.reshape(image.shape[:2])), cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


def write_image(path: str | os.PathLike, image: np.ndarray, png_compression: int = 1) -> Path:
    """Write an RGB image atomically: encode in memory, write a hidden temporary file beside it, rename.

    An interrupted write leaves at most a hidden ``.NAME.<random>.tmp`` file (ignored by the datasets,
    removed by :func:`detkit.io.remove_stale_temp_files`), never a truncated image under the final name;
    a write that fails (a full disk) raises ``OSError`` and keeps any previous file.

    Args:
        path: destination; the format follows its extension (one of :data:`IMAGE_EXTENSIONS`).
        image: ``ndarray[H, W, 3]`` uint8 RGB, or ``ndarray[H, W]`` uint8 grayscale.
        png_compression: zlib level 0-9 for PNG (fixed so output bytes do not depend on OpenCV's default).

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"path must end with one of {IMAGE_EXTENSIONS}, got {path}")
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be an ndarray[H, W, 3] or [H, W] uint8, got {image.dtype} {image.shape}")
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)] if path.suffix.lower() == ".png" else []
    ok, encoded = cv2.imencode(path.suffix.lower(), bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image.shape} as {path.suffix}")
    return atomic_write_bytes(path, encoded.tobytes())  # a failed or short write (full disk) raises
