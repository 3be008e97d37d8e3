"""Procedural "shapes" datasets drawn with OpenCV: coloured geometric shapes on textured, noisy backgrounds.

Each image has its own numpy Generator seeded by (seed, split, index): same seed, same bytes, whatever the threads.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detkit.data.images import default_workers, write_image
from detkit.io import atomic_write_json, atomic_write_text

__all__ = [
    "SHAPES",
    "CLASSIFICATION_CLASSES",
    "GENERATOR",
    "GENERATOR_VERSION",
    "ShapeSpec",
    "check_shape_classes",
    "clear_previous_set",
    "write_meta",
    "shape_polygon",
    "random_shape",
    "draw_shape",
    "render_background",
    "add_sensor_noise",
    "make_shape_image",
    "make_shapes_classification",
    "read_meta",
]

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "heart")  # every shape that can be drawn
# The default classification classes. Hexagon is left out: at 64 px a regular hexagon differs from a circle by
# about 1.5 px at its corners, and in a from-scratch ResNet-18 run the circle/hexagon pair made half of all errors.
CLASSIFICATION_CLASSES = ("circle", "cross", "heart", "square", "star", "triangle")
GENERATOR = "detkit.data.synthetic"  # recorded in meta.json: the sets this module may replace
GENERATOR_VERSION = 1  # bump whenever a change alters the pixels a seed produces
_SPLITS = ("train", "val", "test")
_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision: 1/16 of a supersampled pixel
_SUPERSAMPLE = 8  # anti-aliasing: coverage measured on an 8x finer grid (OpenCV fills edge pixels: +1/16 px bias)
_MIN_CONTRAST = 110.0  # minimum RGB distance between a shape and the background under it
_MIN_LUMA_CONTRAST = 50.0  # minimum luma difference between them (0-255)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights


@dataclass(frozen=True)
class ShapeSpec:
    """Geometry and colour of one shape.

    Attributes:
        kind: one of :data:`SHAPES`.
        center: ``(x, y)`` in pixels.
        radius: circumradius in pixels (the shape fits in a circle of this radius around ``center``).
        angle: rotation about the centre in degrees.
        color: ``(r, g, b)`` fill colour, 0-255.
    """

    kind: str
    center: tuple[float, float]
    radius: float
    angle: float
    color: tuple[int, int, int]


def shape_polygon(kind: str, center: tuple[float, float], radius: float, angle: float = 0.0) -> np.ndarray:
    """Vertices of a shape as a closed polygon (circles as a 72-gon).

    Args:
        kind: one of :data:`SHAPES`.
        center: ``(x, y)`` in pixels.
        radius: circumradius in pixels, > 0.
        angle: rotation in degrees.

    Returns:
        ``ndarray[K, 2]`` float64 vertices ``(x, y)`` in pixels, every one within ``radius`` of ``center``.
    """
    if kind not in SHAPES:
        raise ValueError(f"kind must be one of {SHAPES}, got {kind!r}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    unit = _UNIT_POLYGONS[kind]  # (K, 2) within the unit circle
    theta = np.deg2rad(angle)
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    return unit @ rot * radius + np.asarray(center, dtype=np.float64)  # (K, 2)


def random_shape(
    rng: np.random.Generator,
    kind: str,
    height: int,
    width: int,
    size_range: tuple[float, float] = (0.35, 0.8),
    background: np.ndarray | None = None,
) -> ShapeSpec:
    """Draw a random placement for one shape that fits inside the image.

    Args:
        rng: the generator to draw from.
        kind: one of :data:`SHAPES`.
        height, width: image size in pixels.
        size_range: range of the shape's diameter (2 × circumradius) as a fraction of ``min(height, width)``.
        background: ``ndarray[H, W, 3]`` uint8 RGB the shape will be drawn on; when given, the colour is
            chosen to stand out from the background under the shape. Colour never depends on ``kind``.

    Returns:
        A :class:`ShapeSpec` with uniform random diameter, centre (shape fully inside), angle and colour.
    """
    if not 0 < size_range[0] <= size_range[1] <= 1:
        raise ValueError(f"size_range must satisfy 0 < min <= max <= 1, got {size_range!r}")
    side = min(height, width)
    radius = rng.uniform(*size_range) * side / 2
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    angle = rng.uniform(0.0, 360.0)
    if background is None:
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
    else:
        x1, y1 = int(max(cx - radius, 0)), int(max(cy - radius, 0))
        x2, y2 = int(min(cx + radius + 1, width)), int(min(cy + radius + 1, height))
        under = background[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
        color = _contrasting_color(rng, under)
    return ShapeSpec(kind=kind, center=(float(cx), float(cy)), radius=float(radius), angle=float(angle), color=color)


def draw_shape(image: np.ndarray, spec: ShapeSpec) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """Draw one anti-aliased filled shape into ``image`` in place.

    Coordinates are continuous with pixel ``i`` covering ``[i, i + 1)``. Each pixel is blended with the
    colour by the fraction of it the polygon covers (measured by 8×8 supersampling), so edges are smooth
    and unbiased: OpenCV's own ``LINE_AA`` fill grows shapes by about half a pixel.

    Args:
        image: ``ndarray[H, W, 3]`` uint8 RGB, modified in place.
        spec: what to draw; it may extend past the image border (clipped).

    Returns:
        ``(mask, box)``: ``mask`` is ``ndarray[H, W]`` bool, True where the shape covers at least half a
        pixel; ``box`` is the mask's tight box ``(x1, y1, x2, y2)`` in pixels (x2, y2 exclusive, so
        ``x2 - x1`` is the width in pixels), or ``None`` when the shape falls outside the image.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an ndarray[H, W, 3] uint8, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    mask = np.zeros((height, width), dtype=bool)
    points = shape_polygon(spec.kind, spec.center, spec.radius, spec.angle)  # (K, 2)
    # Work inside the polygon's pixel rectangle (clipped to the image): outside it the coverage is zero.
    x1, y1 = max(int(np.floor(points[:, 0].min())), 0), max(int(np.floor(points[:, 1].min())), 0)
    x2, y2 = min(int(np.ceil(points[:, 0].max())), width), min(int(np.ceil(points[:, 1].max())), height)
    if x1 >= x2 or y1 >= y2:
        return mask, None
    alpha = _coverage(points - (x1, y1), y2 - y1, x2 - x1)  # (h, w) float32 in [0, 1]
    roi = image[y1:y2, x1:x2].astype(np.float32)
    roi += (np.asarray(spec.color, dtype=np.float32) - roi) * alpha[..., None]
    image[y1:y2, x1:x2] = np.rint(roi).astype(np.uint8)
    mask[y1:y2, x1:x2] = alpha >= 0.5
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return mask, None
    return mask, (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def _coverage(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel of a ``height × width`` grid covered by the polygon ``points`` (``[K, 2]``)."""
    s = _SUPERSAMPLE
    # OpenCV puts pixel centres at integer coordinates; ours are at i + 0.5, hence the half-pixel shift.
    fixed = np.round((points * s - 0.5) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    fine = np.zeros((height * s, width * s), dtype=np.uint8)
    cv2.fillPoly(fine, [fixed], 255, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    coarse = cv2.resize(fine, (width, height), interpolation=cv2.INTER_AREA)  # mean of each s × s block
    return coarse.astype(np.float32) / 255.0


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured background: a colour gradient at a random angle, smooth low-frequency texture, a few
    random lines and faint small blobs (all much smaller or thinner than a shape).

    Returns:
        ``ndarray[height, width, 3]`` uint8 RGB.
    """
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    xs, ys = _centred_grid(height, width)
    proj = xs * np.float32(np.cos(theta)) + ys * np.float32(np.sin(theta))  # (H, W)
    t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)  # (H, W) in [0, 1]
    image = c0 + t[..., None] * (c1 - c0)  # (H, W, 3)
    # Smooth texture: a coarse random grid upsampled with bicubic interpolation.
    grid = rng.normal(0.0, rng.uniform(5, 25), size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    image += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image, 0, 255).astype(np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(2, 7))):
        p1 = tuple(int(v) for v in rng.integers(0, [width, height]))
        p2 = tuple(int(v) for v in rng.integers(0, [width, height]))
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.line(image, p1, p2, color, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    overlay = image.copy()
    for _ in range(int(rng.integers(2, 7))):
        center = tuple(int(v) for v in rng.integers(0, [width, height]))
        axes = tuple(int(v) for v in rng.uniform(0.02, 0.08, size=2) * side + 1)
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.ellipse(overlay, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
    return cv2.addWeighted(overlay, 0.4, image, 0.6, 0.0)


def add_sensor_noise(
    rng: np.random.Generator, image: np.ndarray, sigma_range: tuple[float, float] = (2.0, 8.0)
) -> np.ndarray:
    """Optionally blur slightly, then add per-pixel Gaussian noise with a random sigma (0-255 units).

    Args:
        image: ``ndarray[H, W, 3]`` uint8 RGB (not modified).

    Returns:
        A new ``ndarray[H, W, 3]`` uint8 RGB.
    """
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=float(rng.uniform(0.5, 1.0)))
    noise = rng.standard_normal(size=image.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(*sigma_range))
    noise += image
    return np.rint(np.clip(noise, 0, 255, out=noise)).astype(np.uint8)


def make_shape_image(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """One classification sample: a single shape of ``kind`` on a random background.

    The shape's diameter is 35-80 % of the image side, its colour stands out from the background under it
    and is independent of ``kind``; a thin line may cross it.

    Returns:
        ``ndarray[size, size, 3]`` uint8 RGB.
    """
    image = render_background(rng, size, size)
    spec = random_shape(rng, kind, size, size, background=image)
    draw_shape(image, spec)
    if rng.random() < 0.3:  # occasional thin occluder over the shape
        p1 = tuple(int(v) for v in rng.integers(0, size, size=2))
        p2 = tuple(int(v) for v in rng.integers(0, size, size=2))
        cv2.line(image, p1, p2, tuple(int(c) for c in rng.integers(0, 256, size=3)), 1, cv2.LINE_AA)
    return add_sensor_noise(rng, image)


def make_shapes_classification(
    out: str | os.PathLike,
    n_train: int = 2000,
    n_val: int = 400,
    n_test: int = 0,
    size: int = 128,
    seed: int = 0,
    classes: Sequence[str] = CLASSIFICATION_CLASSES,
    workers: int | None = None,
    overwrite: bool = False,
) -> tuple[dict, bool]:
    """Write the shapes classification set in ImageFolder layout.

    Layout: ``OUT/<split>/<class>/NNNNN.png`` (``NNNNN`` = index within the split; classes take turns, so
    counts are balanced), ``OUT/classes.txt`` (one name per line in label order, which is sorted order as
    :class:`~detkit.data.classification.ImageFolderDataset` assigns it) and ``OUT/meta.json`` (seed,
    counts, size, classes, generator version, ``complete``). Each PNG is written under a hidden temporary
    name and renamed, and ``meta.json`` is marked complete last, so an interrupted run never leaves a
    half-written image that looks valid nor a set that looks finished.

    Args:
        out: output directory (created).
        n_train, n_val, n_test: images per split (``n_test=0``: no ``test/`` split).
        size: image side in pixels (>= 32).
        seed: non-negative; the same seed gives byte-identical files.
        classes: two or more of :data:`SHAPES` (sorted into label order); default
            :data:`CLASSIFICATION_CLASSES`.
        workers: generator threads (``None``: a few more than the CPU count); does not change the output.
        overwrite: replace an existing set previously written by this generator with other settings.

    Returns:
        ``(meta, created)``: the metadata written (or found), and False when ``out`` already held exactly
        this set (complete, same settings and version, every image present), in which case nothing is
        written. The same set found unfinished (interrupted run, deleted files) is written again.

    Raises:
        ValueError: bad counts, size, seed or classes.
        FileExistsError: ``out`` holds a different set and ``overwrite`` is False, or holds files this
            generator did not write.
    """
    out = Path(out)
    meta = _classification_meta(n_train, n_val, n_test, size, seed, classes, workers)
    classes, splits = meta["classes"], meta["splits"]
    existing = read_meta(out)
    same = existing is not None and _same_request(existing, meta)
    if same and existing.get("complete") and _all_files_present(out, meta):
        logger.info("%s already holds this shapes set (seed %d, version %d): nothing to do", out, seed, GENERATOR_VERSION)
        return existing, False
    # The same set left unfinished (interrupted, or files deleted) is simply written again.
    clear_previous_set(out, existing, overwrite or same, generator=GENERATOR, what="shapes set",
                       entries=[*_SPLITS, "classes.txt"], settings=("seed", "size", "splits"))

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    write_meta(out, {**meta, "complete": False})
    jobs = []
    for split, n in splits.items():
        for c in classes:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        jobs += [(split, i) for i in range(n)]

    def make(job: tuple[str, int]) -> None:
        split, index = job
        rng = np.random.default_rng([seed, _SPLITS.index(split), index])
        kind = classes[index % len(classes)]
        write_image(_image_path(out, split, classes, index), make_shape_image(rng, kind, size))

    workers = default_workers() if workers is None else workers
    if workers <= 1:
        for job in jobs:
            make(job)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(make, jobs):  # consume the results so worker errors are raised here
                pass
    atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    meta["complete"] = True
    write_meta(out, meta)
    logger.info("wrote %d shapes images to %s in %.1f s", len(jobs), out, time.perf_counter() - start)
    return meta, True


def _classification_meta(
    n_train: int, n_val: int, n_test: int, size: int, seed: int, classes: Sequence[str], workers: int | None
) -> dict:
    """Validate the arguments of :func:`make_shapes_classification` and describe the set they ask for."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n_{name} must be a non-negative int, got {n!r}")
    classes = sorted(check_shape_classes(classes))  # label order = ImageFolder's sorted folder order
    if n_train < len(classes) or n_val < len(classes):
        raise ValueError(
            f"n_train and n_val must be at least the number of classes ({len(classes)}), got {n_train} and {n_val}"
        )
    if 0 < n_test < len(classes):
        raise ValueError(f"n_test must be 0 or at least the number of classes ({len(classes)}), got {n_test}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32 pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be a non-negative int or None, got {workers!r}")
    splits = {s: n for s, n in counts.items() if n > 0}
    meta = {
        "generator": GENERATOR,
        "dataset": "shapes",
        "task": "classify",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "classes": classes,
        "splits": splits,
        "counts": {s: {c: len(range(i, n, len(classes))) for i, c in enumerate(classes)} for s, n in splits.items()},
    }
    return meta


def read_meta(out: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a generated set in ``out``, or ``None`` when there is none (or it is unreadable)."""
    path = Path(out) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


@functools.lru_cache(maxsize=8)
def _centred_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates relative to the image centre, ``ndarray[H, W]`` float32 each (read-only)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs -= width / 2
    ys -= height / 2
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def _regular_polygon(k: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(t), np.sin(t)], axis=1)  # (k, 2)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)  # (2 * points, 2)


def _heart(points: int = 96) -> np.ndarray:
    # The classic parametric heart, point down in image coordinates, centred on its box and scaled to the unit circle.
    t = 2 * np.pi * np.arange(points) / points
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(axis=0) + pts.min(axis=0)) / 2
    return pts / np.hypot(pts[:, 0], pts[:, 1]).max()  # (points, 2)


def _cross(half_width: float = 0.3) -> np.ndarray:
    # A plus sign whose arm tips touch the unit circle.
    w = half_width
    arm = np.sqrt(1.0 - w * w)
    pts = [(w, w), (arm, w), (arm, -w), (w, -w), (w, -arm), (-w, -arm),
           (-w, -w), (-arm, -w), (-arm, w), (-w, w), (-w, arm), (w, arm)]  # fmt: skip
    return np.asarray(pts, dtype=np.float64)  # (12, 2)


_UNIT_POLYGONS = {
    "circle": _regular_polygon(72),
    "square": _regular_polygon(4, np.pi / 4),
    "triangle": _regular_polygon(3, np.pi / 2),
    "star": _star(),
    "hexagon": _regular_polygon(6),
    "cross": _cross(),
    "heart": _heart(),
}


def _contrasting_color(rng: np.random.Generator, under: np.ndarray, tries: int = 32) -> tuple[int, int, int]:
    """A uniform random colour that differs from ``under`` by at least ``_MIN_CONTRAST`` in RGB and
    ``_MIN_LUMA_CONTRAST`` in luma (so edges show in grayscale too); else the best of ``tries``."""
    best, best_score = None, -np.inf
    for _ in range(tries):
        color = rng.integers(0, 256, size=3)
        dist = float(np.linalg.norm(color - under))
        luma = abs(float(_LUMA @ (color - under)))
        if dist >= _MIN_CONTRAST and luma >= _MIN_LUMA_CONTRAST:
            return tuple(int(c) for c in color)
        score = min(dist / _MIN_CONTRAST, luma / _MIN_LUMA_CONTRAST)
        if score > best_score:
            best, best_score = color, score
    return tuple(int(c) for c in best)


def check_shape_classes(classes: Sequence[str], min_classes: int = 2) -> list[str]:
    """``classes`` as a list of distinct names from :data:`SHAPES` (at least ``min_classes``), else ``ValueError``."""
    classes = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or len(classes) < min_classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be {min_classes} or more distinct names from {SHAPES}, got {classes}")
    return classes


def _image_path(out: Path, split: str, classes: Sequence[str], index: int) -> Path:
    """Where image ``index`` of ``split`` lives: classes take turns, so its class is ``index mod C``."""
    return out / split / classes[index % len(classes)] / f"{index:05d}.png"


def _all_files_present(out: Path, meta: dict) -> bool:
    classes = meta["classes"]
    return all(_image_path(out, s, classes, i).is_file() for s, n in meta["splits"].items() for i in range(n))


def _same_request(existing: dict, meta: dict) -> bool:
    return all(existing.get(k) == v for k, v in meta.items())


def clear_previous_set(out: Path, existing: dict | None, overwrite: bool, *, generator: str, what: str,
                       entries: Sequence[str], settings: Sequence[str]) -> None:
    """Make ``out`` ready for a fresh generated set, refusing to delete anything that generator did not write.

    Args:
        out: the set's root.
        existing: its ``meta.json`` (:func:`read_meta`), or None.
        overwrite: replace a set of the same generator written with other settings.
        generator: the generator's name as recorded in ``meta.json``.
        what: the set's name in messages (``shapes set``).
        entries: the folders and files the generator writes under ``out`` (``meta.json`` besides).
        settings: ``meta.json`` keys named in the message when another set is found.

    Raises:
        FileExistsError: ``out`` holds entries of another generator (or of none), or a set with other
            settings while ``overwrite`` is False.
    """
    present = [out / e for e in entries if (out / e).exists()]
    if existing is None and not present:
        return
    if existing is None or existing.get("generator") != generator:
        raise FileExistsError(
            f"{out} already holds {', '.join(p.name for p in present) or 'meta.json'} not written by this generator "
            f"({generator}); choose another output folder or delete it"
        )
    if not overwrite:
        described = ", ".join(f"{k} {existing.get(k)}" for k in settings)
        raise FileExistsError(
            f"{out} holds a {what} with other settings ({described}, version {existing.get('version')}"
            f"{'' if existing.get('complete') else ', incomplete'}); pass overwrite=True (--overwrite) to replace it"
        )
    for path in present:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "meta.json").unlink(missing_ok=True)


def write_meta(out: Path, meta: dict) -> Path:
    """Write a generated set's ``meta.json`` atomically."""
    return atomic_write_json(out / "meta.json", meta)
