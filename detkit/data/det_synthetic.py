"""The embedded shapes detection set: several overlapping shapes per image on textured noise, in COCO layout.

Drawing reuses :mod:`detkit.data.synthetic`; an instance map makes each box tight to the shape's visible part.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detkit.data.images import default_workers, write_image
from detkit.data.synthetic import (
    GENERATOR_VERSION,
    ShapeSpec,
    add_sensor_noise,
    check_shape_classes,
    clear_previous_set,
    draw_shape,
    random_shape,
    read_meta,
    render_background,
    write_meta,
)
from detkit.io import atomic_write_json

__all__ = [
    "DET_CLASSES",
    "DET_GENERATOR_VERSION",
    "SyntheticDetectionImage",
    "draw_detection_image",
    "make_shapes_detection",
    "paint_shapes",
    "shape_categories",
]

logger = logging.getLogger(__name__)

DET_CLASSES = ("circle", "square", "triangle", "star")  # default classes: distinct even when small
DET_GENERATOR_VERSION = 1  # bump whenever a change alters what a seed produces (with synthetic.GENERATOR_VERSION)
_GENERATOR = "detkit.data.det_synthetic"
_SPLITS = ("train", "val")
_MIN_COLOUR_DISTANCE = 110.0  # RGB distance between a shape and the shape it is placed over


@dataclass
class SyntheticDetectionImage:
    """One generated image and its objects.

    Attributes:
        image: ``ndarray[H, W, 3]`` uint8 RGB.
        boxes: ``ndarray[K, 4]`` float32 ``(x1, y1, x2, y2)`` pixel-edge boxes tight to each visible shape part.
        labels: ``ndarray[K]`` int64 index into the ``classes`` the image was drawn with.
        areas: ``ndarray[K]`` int64 visible pixels of each object.
        num_hidden: shapes drawn but mostly hidden by later ones (no box).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    num_hidden: int


def shape_categories(
    classes: Sequence[str] = DET_CLASSES, category_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """COCO categories of the shapes set: ``[{"id", "name", "supercategory"}]`` in ``classes`` order.

    Args:
        classes: shape names (from :data:`detkit.data.synthetic.SHAPES`).
        category_ids: one distinct positive id per class (e.g. ``(3, 7, 11, 20)`` to test that ids are kept
            end to end); ``None`` gives ``1..C``.
    """
    classes = check_shape_classes(classes, min_classes=1)
    ids = list(range(1, len(classes) + 1)) if category_ids is None else [int(i) for i in category_ids]
    if len(ids) != len(classes) or len(set(ids)) != len(ids) or min(ids) < 1:
        raise ValueError(
            f"category_ids must be {len(classes)} distinct positive ints (one per class {classes}), got {category_ids!r}"
        )
    return [{"id": i, "name": n, "supercategory": "shape"} for i, n in zip(ids, classes)]


def _place_over(rng: np.random.Generator, spec: ShapeSpec, prev: ShapeSpec, height: int, width: int) -> ShapeSpec:
    """Move ``spec`` beside ``prev`` so that they overlap partly; the centre stays inside the image.

    Centres end up 0.55-1.0 times the sum of the radii apart: the shapes touch or overlap, but one rarely
    buries the other, which would leave an unlabelled sliver.
    """
    theta = rng.uniform(0.0, 2 * np.pi)
    d = rng.uniform(0.55, 1.0) * (prev.radius + spec.radius)
    cx = float(np.clip(prev.center[0] + d * np.cos(theta), 0, width - 1))
    cy = float(np.clip(prev.center[1] + d * np.sin(theta), 0, height - 1))
    return dataclasses.replace(spec, center=(cx, cy))


def paint_shapes(
    image: np.ndarray, specs: Sequence[ShapeSpec], min_visible: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint shapes in order (later over earlier) and box the visible part of each.

    An instance map records which shape owns each pixel (a pixel belongs to the last shape covering at
    least half of it, :func:`detkit.data.synthetic.draw_shape`'s mask). Each shape's box is the tight box
    of the pixels it still owns at the end; a shape owning less than ``min_visible`` of the pixels it
    covered when drawn (mostly hidden), or none (outside the image), gets no box.

    Args:
        image: ``ndarray[H, W, 3]`` uint8 RGB, painted in place.
        specs: the shapes, in painting order (at most 255).
        min_visible: visible fraction below which a shape gets no box.

    Returns:
        ``(boxes, index, areas)``: ``ndarray[K, 4]`` float32 ``(x1, y1, x2, y2)`` pixel-edge boxes (``x2``
        exclusive), ``ndarray[K]`` int64 position in ``specs`` of each boxed shape, ``ndarray[K]`` int64
        visible pixel counts.
    """
    if len(specs) > 255:
        raise ValueError(f"at most 255 shapes per image, got {len(specs)}")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    owner = np.zeros(image.shape[:2], np.uint8)  # 0 = background, k + 1 = specs[k]
    full_areas = np.zeros(len(specs), np.int64)
    for k, spec in enumerate(specs):
        mask, _ = draw_shape(image, spec)
        owner[mask] = k + 1
        full_areas[k] = np.count_nonzero(mask)
    visible = np.bincount(owner.ravel(), minlength=len(specs) + 1)[1:]  # (n,) pixels each shape still owns
    boxes, index = [], []
    for k in range(len(specs)):
        if visible[k] == 0 or visible[k] < min_visible * full_areas[k]:
            continue
        x, y, w, h = cv2.boundingRect((owner == k + 1).view(np.uint8))
        boxes.append((x, y, x + w, y + h))
        index.append(k)
    index_arr = np.asarray(index, np.int64)
    return np.asarray(boxes, np.float32).reshape(-1, 4), index_arr, visible[index_arr].astype(np.int64)


def draw_detection_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    classes: Sequence[str] = DET_CLASSES,
    max_shapes: int = 6,
    empty_prob: float = 0.05,
    min_visible: float = 0.5,
    overlap_prob: float = 0.35,
    size_range: tuple[float, float] = (0.16, 0.45),
) -> SyntheticDetectionImage:
    """Draw one image with 1..``max_shapes`` shapes (or none, with probability ``empty_prob``).

    Shapes are painted in order, later ones over earlier ones (:func:`paint_shapes`); with probability
    ``overlap_prob`` a shape is placed over an earlier one, in a contrasting colour. Each object's box is
    the tight box of its *visible* part; a shape with less than ``min_visible`` of its pixels visible is
    mostly hidden and gets no box (its visible sliver stays in the image, unlabelled, as real occluded
    objects are). Sensor noise is added last and moves no boundary.

    Args:
        rng: the generator all randomness comes from.
        height, width: image size in pixels (>= 32).
        classes: shape names to draw from; labels index this list.
        max_shapes: most shapes per non-empty image (<= 255).
        empty_prob: probability of an image without shapes (a negative).
        min_visible: visible fraction below which a shape gets no box.
        overlap_prob: probability that a shape is placed over an earlier one.
        size_range: shape diameter as a fraction of ``min(height, width)``.
    """
    classes = check_shape_classes(classes, min_classes=1)
    if height < 32 or width < 32:
        raise ValueError(f"height and width must be at least 32 pixels, got {height}x{width}")
    if not 1 <= max_shapes <= 255:
        raise ValueError(f"max_shapes must be in [1, 255], got {max_shapes}")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    image = render_background(rng, height, width)
    n = 0 if rng.random() < empty_prob else int(rng.integers(1, max_shapes + 1))
    specs: list[ShapeSpec] = []
    kinds: list[int] = []
    for _ in range(n):
        kind = int(rng.integers(0, len(classes)))
        spec = random_shape(rng, classes[kind], height, width, size_range=size_range, background=image)
        if specs and rng.random() < overlap_prob:
            prev = specs[int(rng.integers(0, len(specs)))]
            for _ in range(8):  # re-draw the colour until the occluder stands out from what it covers
                if np.linalg.norm(np.subtract(spec.color, prev.color)) >= _MIN_COLOUR_DISTANCE:
                    break
                spec = dataclasses.replace(spec, color=tuple(int(c) for c in rng.integers(0, 256, size=3)))
            spec = _place_over(rng, spec, prev, height, width)
        specs.append(spec)
        kinds.append(kind)
    boxes, index, areas = paint_shapes(image, specs, min_visible)
    return SyntheticDetectionImage(
        image=add_sensor_noise(rng, image),
        boxes=boxes,
        labels=np.asarray(kinds, np.int64)[index],
        areas=areas,
        num_hidden=len(specs) - len(boxes),
    )


def make_shapes_detection(
    out: str | os.PathLike,
    n_train: int = 1000,
    n_val: int = 200,
    min_size: int = 160,
    max_size: int = 320,
    seed: int = 0,
    classes: Sequence[str] = DET_CLASSES,
    category_ids: Sequence[int] | None = None,
    max_shapes: int = 6,
    empty_prob: float = 0.05,
    min_visible: float = 0.5,
    ext: str = ".jpg",
    workers: int | None = None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Write the shapes detection set: ``OUT/{train,val}/`` each with images and a COCO ``annotations.json``.

    Image heights and widths are drawn independently in ``[min_size, max_size]`` (mostly non-square).
    Image ids are unique across splits (train ``1..n_train``, val after) and files are named
    ``{id:06d}{ext}``. Every image is drawn from its own generator seeded by ``(seed, image id)``, so the
    same arguments give byte-identical files whatever ``workers`` is. Boxes follow occlusion as in
    :func:`draw_detection_image`; annotation ``area`` is the visible pixel count. ``OUT/meta.json``
    records the settings and is marked ``complete`` last: re-running with the same settings on a finished
    set writes nothing.

    Args:
        out: output root.
        n_train, n_val: images per split (``n_val=0`` writes no val split).
        min_size, max_size: range of image heights and widths in pixels.
        seed: seed of the whole set (non-negative).
        classes: shape names (:data:`DET_CLASSES` by default), in category order.
        category_ids: COCO ids of ``classes`` (default ``1..C``), e.g. non-contiguous ones.
        max_shapes: most shapes per image.
        empty_prob: probability of an image without shapes.
        min_visible: visible fraction below which an occluded shape gets no box.
        ext: image format, ``".jpg"`` (small files) or ``".png"`` (lossless).
        workers: threads (``None``: a few more than the CPU count); does not change the output.
        overwrite: replace a set this generator wrote earlier with other settings.

    Returns:
        ``(meta, created)``: the settings and counts written (``meta["annotations"]`` maps each split to
        its annotation file), and False when ``out`` already held exactly this set.

    Raises:
        ValueError: bad counts, sizes, seed, classes or ext.
        FileExistsError: ``out`` holds another set and ``overwrite`` is False, or files this generator did not write.
    """
    meta = _detection_meta(n_train, n_val, min_size, max_size, seed, classes, category_ids, max_shapes, empty_prob,
                           min_visible, ext)
    out = Path(out)
    existing = read_meta(out)
    if existing is not None and existing.get("complete") and all(existing.get(k) == v for k, v in meta.items()):
        logger.info("%s already holds this shapes detection set (seed %d); nothing to do", out, seed)
        return existing, False
    clear_previous_set(out, existing, overwrite, generator=_GENERATOR, what="shapes detection set", entries=_SPLITS,
                       settings=("seed", "splits"))

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    write_meta(out, {**meta, "complete": False})
    first_id, ann_id = 1, 1
    meta["annotations"], meta["counts"] = {}, {}
    workers = default_workers() if workers is None else max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split, n in meta["splits"].items():
            ann_path, counts, ann_id = _write_split(pool, out / split, range(first_id, first_id + n), ann_id, meta)
            first_id += n
            meta["annotations"][split] = str(ann_path)
            meta["counts"][split] = counts
    meta["complete"] = True
    write_meta(out, meta)
    logger.info("wrote the shapes detection set to %s in %.1f s", out, time.perf_counter() - start)
    return meta, True


def _detection_meta(n_train: int, n_val: int, min_size: int, max_size: int, seed: int, classes: Sequence[str],
                    category_ids: Sequence[int] | None, max_shapes: int, empty_prob: float, min_visible: float,
                    ext: str) -> dict[str, Any]:
    """Validate the arguments of :func:`make_shapes_detection` and describe the set they ask for."""
    for name, v in (("n_train", n_train), ("n_val", n_val), ("seed", seed), ("min_size", min_size), ("max_size", max_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if ext.lower() not in (".jpg", ".jpeg", ".png"):
        raise ValueError(f"ext must be '.jpg', '.jpeg' or '.png', got {ext!r}")
    if isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or not 1 <= max_shapes <= 255:
        raise ValueError(f"max_shapes must be an int in [1, 255], got {max_shapes!r}")
    for name, v in (("empty_prob", empty_prob), ("min_visible", min_visible)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    categories = shape_categories(classes, category_ids)
    return {
        "generator": _GENERATOR,
        "dataset": "shapes",
        "task": "detect",
        "version": [DET_GENERATOR_VERSION, GENERATOR_VERSION],
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        "classes": [c["name"] for c in categories],
        "category_ids": [c["id"] for c in categories],
        "max_shapes": max_shapes,
        "empty_prob": empty_prob,
        "min_visible": min_visible,
        "ext": ext,
        "splits": {s: n for s, n in (("train", n_train), ("val", n_val)) if n > 0},
    }


def _write_split(pool: ThreadPoolExecutor, split_dir: Path, ids: range, ann_id: int, meta: dict[str, Any]
                 ) -> tuple[Path, dict[str, int], int]:
    """Draw and write the images ``ids`` of one split and its ``annotations.json``.

    Returns:
        ``(annotation file, counts, next annotation id)``.
    """
    seed, classes = meta["seed"], meta["classes"]
    categories = shape_categories(classes, meta["category_ids"])

    def make(image_id: int) -> tuple[dict[str, Any], SyntheticDetectionImage]:
        rng = np.random.default_rng([seed, image_id])
        h, w = (int(v) for v in rng.integers(meta["min_size"], meta["max_size"] + 1, size=2))
        sample = draw_detection_image(rng, h, w, classes=classes, max_shapes=meta["max_shapes"],
                                      empty_prob=meta["empty_prob"], min_visible=meta["min_visible"])
        name = f"{image_id:06d}{meta['ext']}"
        write_image(split_dir / name, sample.image)
        return {"id": image_id, "file_name": name, "width": w, "height": h}, sample

    split_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, hidden = [], [], 0
    for info, sample in pool.map(make, ids):
        images.append(info)
        hidden += sample.num_hidden
        for box, label, area in zip(sample.boxes.tolist(), sample.labels.tolist(), sample.areas.tolist()):
            x1, y1, x2, y2 = box
            annotations.append({"id": ann_id, "image_id": info["id"], "category_id": categories[label]["id"],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": 0})
            ann_id += 1
    coco = {
        "info": {"description": f"detkit shapes detection set, {split_dir.name} split, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_path = atomic_write_json(split_dir / "annotations.json", coco, compact=True)
    empty = len(images) - len({a["image_id"] for a in annotations})
    logger.info("%s: %d images (%d without objects), %d boxes, %d shapes hidden by occlusion",
                split_dir, len(images), empty, len(annotations), hidden)
    return ann_path, {"images": len(images), "negatives": empty, "boxes": len(annotations), "hidden": hidden}, ann_id
