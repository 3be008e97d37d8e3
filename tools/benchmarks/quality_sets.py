"""Small real-image benchmark sets for `tools/bench.py quality`, written in detkit's ImageFolder and COCO layouts.

Every source ships inside an installed wheel (scikit-learn, scikit-image, matplotlib): nothing is downloaded.

Sets (``SETS``; the natural input size is the one the benchmark trains at):

- ``digits`` (classify, 32 px): scikit-learn's handwritten digits (UCI optical recognition set, 1,797 8x8
  scans of 43 writers' digits), upscaled to 32 px RGB; a seeded, stratified 75/25 split (1,347 / 450).
- ``fonts`` (classify, 32 px): the letters A-J rendered from the 22 font faces matplotlib ships (DejaVu,
  STIX, Computer Modern), rotated, scaled and placed on crops of real photos; val uses 5 faces that train
  never sees.
- ``textures`` (classify, 32 px): grey patches of 8 real photographs, micrographs and scans from
  scikit-image (brick, grass, gravel, moon, stars, tissue, cells, text); train patches come from the left
  three quarters of each picture, val patches from the right quarter, so no val pixel was seen in training.
- ``digits_det`` (detect, 128 px): 1-5 handwritten digits (train / val from the digits split) inked onto
  160-256 px crops of real photos; boxes are the tight boxes of each glyph's ink.
- ``glyphs_det`` (detect, 128 px): 1-5 letters A-J from the train / val font faces on real photo crops.
- ``objects_det`` (detect, 128 px): real faces (scikit-image's LFW subset) and real coins (segmented from
  scikit-image's coins photo) pasted onto grey crops of real photos; held-out faces and coins for val.
- ``shapes`` / ``shapes_det``: detkit's own generated shapes sets (:mod:`detkit.data.synthetic`), as a
  reference point.

Each set is deterministic for its seed (each image has its own generator seeded by set, split and index)
and records its settings in ``ROOT/meta.json``; :func:`build_set` reuses a finished set with the same
settings instead of writing it again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detkit.data.formats import write_coco
from detkit.data.images import write_image
from detkit.io import atomic_write_json

__all__ = ["SETS", "QualitySet", "build_set", "render_glyph"]

VERSION = 1  # bump when any builder's output changes
SPLITS = ("train", "val")
LETTERS = tuple("ABCDEFGHIJ")
TEXTURES = {  # class name -> scikit-image picture
    "brick": "brick", "grass": "grass", "gravel": "gravel", "moon": "moon", "stars": "hubble_deep_field",
    "tissue": "immunohistochemistry", "cells": "cell", "text": "page",
}  # fmt: skip
# Photos for backgrounds: none shows a face, a coin, a digit or a letter that would be an unlabelled object.
BACKGROUNDS = ("sklearn:china.jpg", "sklearn:flower.jpg", "coffee", "chelsea", "rocket", "brick", "grass",
               "gravel", "moon", "immunohistochemistry", "colorwheel")  # fmt: skip
_FONT_FACES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)  # fmt: skip
_DET_CANVAS = (160, 256)  # detection image sides in pixels
_DET_OBJECTS = (1, 5)  # objects per detection image
_DET_OBJECT_SIDE = (0.14, 0.3)  # object side as a fraction of the canvas' shorter side


@dataclass(frozen=True)
class QualitySet:
    """One benchmark set: what it is, its default size and the function that writes it.

    Attributes:
        name: folder name under the data root.
        task: ``"classify"`` (ImageFolder) or ``"detect"`` (COCO layout).
        source: where the pictures come from, in words.
        img_size: network input side the benchmark trains at, in pixels.
        n_train, n_val: default images per split.
        write: ``write(out, n_train, n_val, seed) -> counts`` fills ``out`` (an empty folder).
    """

    name: str
    task: str
    source: str
    img_size: int
    n_train: int
    n_val: int
    write: Callable[[Path, int, int, int], dict[str, Any]]


# ----------------------------------------------------------------------------------------------- sources


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: ``(images uint8 [1797, 8, 8] in 0..255, labels int64 [1797])``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 17 grey levels 0..16
    return images, digits.target.astype(np.int64)


def _split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Stratified split: within each class a seeded permutation, the first ``val_fraction`` to val.

    Each split's indices take the classes in turns, so any prefix of them is balanced across classes.
    """
    rng = np.random.default_rng([seed, 7])
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        parts["val"].append(idx[:n_val])
        parts["train"].append(idx[n_val:])
    return {s: _round_robin(p) for s, p in parts.items()}


def _round_robin(groups: list[np.ndarray]) -> np.ndarray:
    """``[a0, b0, c0, a1, b1, c1, ...]`` from groups ``a, b, c`` (shorter groups drop out when empty)."""
    longest = max(len(g) for g in groups)
    order = [g[k] for k in range(longest) for g in groups if k < len(g)]
    return np.asarray(order, np.int64)


@lru_cache(maxsize=1)
def _font_faces() -> dict[str, list[str]]:
    """Font files shipped with matplotlib, split by face: every 4th face (5 of 22) is val only."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [str(folder / name) for name in _FONT_FACES]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"matplotlib's font files are missing: {missing}")
    return {"train": [p for i, p in enumerate(paths) if i % 4 != 3], "val": paths[3::4]}


@lru_cache(maxsize=None)
def _font(path: str, size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def render_glyph(char: str, font_path: str, height: int, angle: float = 0.0) -> np.ndarray:
    """Render one character as an anti-aliased ink mask, cropped to its ink.

    Args:
        char: the character.
        font_path: a TrueType font file.
        height: font size in pixels (the em size; capitals are about 0.7 of it).
        angle: rotation in degrees, counter-clockwise.

    Returns:
        ``ndarray[h, w]`` float32 ink coverage in ``[0, 1]``, tight around pixels with any ink.
    """
    from PIL import Image, ImageDraw

    side = 2 * height + 8
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((side / 2, side / 2), char, font=_font(font_path, height), fill=255, anchor="mm")
    if angle:
        canvas = canvas.rotate(angle, resample=Image.BICUBIC)
    ink = np.asarray(canvas, np.float32) / 255.0
    ys, xs = np.nonzero(ink > 0.05)
    if len(ys) == 0:
        raise ValueError(f"font {font_path} drew no ink for {char!r} at {height} px")
    return ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _skimage_picture(name: str) -> np.ndarray:
    """A picture bundled with scikit-learn (``sklearn:FILE``) or scikit-image, as ``ndarray[H, W, 3]`` uint8."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(name.split(":", 1)[1])
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8) if image.max() <= 1 else image.astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


@lru_cache(maxsize=1)
def _pictures() -> dict[str, np.ndarray]:
    return {name: _skimage_picture(name) for name in {*BACKGROUNDS, *TEXTURES.values()}}


@lru_cache(maxsize=1)
def _faces() -> np.ndarray:
    """The 100 face crops of scikit-image's LFW subset: ``ndarray[100, 25, 25]`` uint8."""
    import skimage.data

    return np.round(skimage.data.lfw_subset()[:100] * 255).astype(np.uint8)


@lru_cache(maxsize=1)
def _coins() -> list[tuple[np.ndarray, np.ndarray]]:
    """Coins cut out of scikit-image's coins photo: ``[(grey uint8 [h, w], mask bool [h, w])]``, sorted by position."""
    import skimage.data
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu

    photo = skimage.data.coins()
    smooth = gaussian(photo, sigma=1.5, preserve_range=True)
    labels, n = ndimage.label(ndimage.binary_fill_holes(smooth > threshold_otsu(smooth)))
    coins = []
    for k, window in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[window] == k
        if 800 <= mask.sum() <= 4000:  # whole coins; drops specks and the merged blob at the border
            coins.append((photo[window].copy(), mask))
    return coins


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, image)


def _gray(image: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


# ------------------------------------------------------------------------------------------- composition


def _photo_crop(rng: np.random.Generator, height: int, width: int, gray: bool = False) -> np.ndarray:
    """A random crop of a background photo, resized to ``height x width``, at 40-80 % of its contrast."""
    photo = _pictures()[BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]]
    ph, pw = photo.shape[:2]
    zoom = rng.uniform(0.5, 1.0) * min(ph / height, pw / width)  # crop side relative to the output
    ch, cw = max(8, int(height * zoom)), max(8, int(width * zoom))
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = cv2.resize(photo[y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_AREA)
    if gray:
        crop = _gray(crop)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    contrast = rng.uniform(0.4, 0.8)
    mean = crop.reshape(-1, 3).mean(0)
    return np.clip(mean + (crop.astype(np.float32) - mean) * contrast, 0, 255).astype(np.uint8)


def _ink_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """An ink colour far from the mean of the pixels it covers: dark on light ground, light on dark."""
    dark = under.reshape(-1, 3).mean() > 128
    return rng.uniform(0, 70, 3) if dark else rng.uniform(185, 255, 3)


def _ink(image: np.ndarray, alpha: np.ndarray, y: int, x: int, colour: np.ndarray) -> None:
    """Blend ``colour`` into ``image[y:y+h, x:x+w]`` with coverage ``alpha`` (``ndarray[h, w]`` in [0, 1])."""
    h, w = alpha.shape
    region = image[y : y + h, x : x + w].astype(np.float32)
    a = alpha[:, :, None]
    image[y : y + h, x : x + w] = np.round(region * (1 - a) + colour * a).astype(np.uint8)


def _noise(rng: np.random.Generator, image: np.ndarray, std: float = 4.0) -> np.ndarray:
    return np.clip(image + rng.normal(0.0, std, image.shape), 0, 255).astype(np.uint8)


def _digit_alpha(digit: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 digit scan upscaled to ``side x side`` ink coverage in [0, 1] (bilinear, as a scanner would blur)."""
    return cv2.resize(digit.astype(np.float32) / 255.0, (side, side), interpolation=cv2.INTER_LINEAR)


def _tight(alpha: np.ndarray, threshold: float = 0.25) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)`` pixel-edge box (``x2`` exclusive) of the pixels with coverage above ``threshold``."""
    ys, xs = np.nonzero(alpha > threshold)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _place(rng: np.random.Generator, h: int, w: int, taken: list[tuple[int, int, int, int]], height: int,
           width: int, tries: int = 30) -> tuple[int, int] | None:
    """Top-left corner for an ``h x w`` object inside the image that overlaps no box in ``taken`` (2 px apart)."""
    if h > height or w > width:
        return None
    for _ in range(tries):
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        if all(x + w + 2 <= a or b + 2 <= x or y + h + 2 <= c or d + 2 <= y for a, c, b, d in taken):
            return y, x
    return None


# -------------------------------------------------------------------------------------- classification


def _digits_classify(out: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    images, labels = _digits()
    split = _split_indices(labels, 0.25, seed)
    counts = {}
    for name, limit in (("train", n_train), ("val", n_val)):
        idx = split[name][: limit]
        for i in idx:
            rgb = np.repeat(cv2.resize(images[i], (32, 32), interpolation=cv2.INTER_LINEAR)[:, :, None], 3, axis=2)
            _save(out / name / str(labels[i]) / f"{i:04d}.png", rgb)
        counts[name] = len(idx)
    return counts


def _glyph_image(rng: np.random.Generator, char: str, faces: Sequence[str], size: int = 32) -> np.ndarray:
    """One letter from a random face of ``faces``, rotated and placed on a photo crop."""
    face = faces[int(rng.integers(len(faces)))]
    alpha = render_glyph(char, face, int(rng.integers(size // 2, size - 2)), float(rng.uniform(-12, 12)))
    scale = min(1.0, (size - 2) / max(alpha.shape))
    if scale < 1.0:
        alpha = cv2.resize(alpha, (max(1, int(alpha.shape[1] * scale)), max(1, int(alpha.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    image = _photo_crop(rng, size, size)
    h, w = alpha.shape
    y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    _ink(image, alpha, y, x, _ink_colour(rng, image[y : y + h, x : x + w]))
    return _noise(rng, image)


def _fonts_classify(out: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    faces = _font_faces()
    counts = {}
    for s, (name, n) in enumerate((("train", n_train), ("val", n_val))):
        for i in range(n):
            rng = np.random.default_rng([seed, 2, s, i])
            char = LETTERS[i % len(LETTERS)]
            _save(out / name / char / f"{i:05d}.png", _glyph_image(rng, char, faces[name]))
        counts[name] = n
    return counts


def _texture_patch(rng: np.random.Generator, picture: np.ndarray, split: str, size: int = 32) -> np.ndarray:
    """A grey patch from the left three quarters (train) or the right quarter (val) of ``picture``.

    The patch covers 1-4 times ``size`` pixels of the picture and is turned by a multiple of 90 degrees, with
    a random gain and offset, so neither scale, orientation nor brightness gives its class away.
    """
    h, w = picture.shape[:2]
    border = (3 * w) // 4
    x0, x1 = (0, border) if split == "train" else (border, w)
    side = int(rng.integers(size, min(4 * size, h, x1 - x0) + 1))  # scale varies 1-4x
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(x0, x1 - side + 1))
    patch = cv2.resize(_gray(picture[y : y + side, x : x + side]), (size, size), interpolation=cv2.INTER_AREA)
    patch = np.rot90(patch, int(rng.integers(4)))
    gain, offset = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
    return _noise(rng, np.clip(patch.astype(np.float32) * gain + offset, 0, 255), std=3.0)


def _textures_classify(out: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    classes = sorted(TEXTURES)
    pictures = _pictures()
    counts = {}
    for s, (name, n) in enumerate((("train", n_train), ("val", n_val))):
        for i in range(n):
            rng = np.random.default_rng([seed, 3, s, i])
            cls = classes[i % len(classes)]
            _save(out / name / cls / f"{i:05d}.png", _texture_patch(rng, pictures[TEXTURES[cls]], name))
        counts[name] = n
    return counts


# ------------------------------------------------------------------------------------------- detection


def _object_side(rng: np.random.Generator, height: int, width: int) -> int:
    return int(min(height, width) * rng.uniform(*_DET_OBJECT_SIDE))


def _draw_inked(rng: np.random.Generator, draw_alpha: Callable[[np.random.Generator, int], tuple[np.ndarray, int]],
                gray: bool = False) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int]]:
    """A photo-crop canvas with 1-5 inked objects; ``draw_alpha(rng, side) -> (coverage [h, w], label)``."""
    height, width = (int(v) for v in rng.integers(_DET_CANVAS[0], _DET_CANVAS[1] + 1, size=2))
    image = _photo_crop(rng, height, width, gray)
    boxes, labels = [], []
    for _ in range(int(rng.integers(_DET_OBJECTS[0], _DET_OBJECTS[1] + 1))):
        alpha, label = draw_alpha(rng, _object_side(rng, height, width))
        box = _tight(alpha)
        if box is None:
            continue
        alpha = alpha[box[1] : box[3], box[0] : box[2]]
        spot = _place(rng, *alpha.shape, boxes, height, width)
        if spot is None:
            continue
        y, x = spot
        _ink(image, alpha, y, x, _ink_colour(rng, image[y : y + alpha.shape[0], x : x + alpha.shape[1]]))
        boxes.append((x, y, x + alpha.shape[1], y + alpha.shape[0]))
        labels.append(label)
    return _noise(rng, image), boxes, labels


def _pasted_objects(rng: np.random.Generator, split: str,
                    seed: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int]]:
    """A grey photo-crop canvas with 1-5 real faces (label 0) and coins (label 1) of the split pasted on it.

    The split's faces and coins are a seeded quarter (val) or the other three quarters (train) of each source.
    """
    faces, coins = _faces(), _coins()
    face_split = _split_indices(np.zeros(len(faces), np.int64), 0.25, seed)[split]
    coin_split = _split_indices(np.zeros(len(coins), np.int64), 0.25, seed)[split]
    height, width = (int(v) for v in rng.integers(_DET_CANVAS[0], _DET_CANVAS[1] + 1, size=2))
    image = _photo_crop(rng, height, width, gray=True)
    boxes, labels = [], []
    for _ in range(int(rng.integers(_DET_OBJECTS[0], _DET_OBJECTS[1] + 1))):
        side, label = _object_side(rng, height, width), int(rng.integers(2))
        if label == 0:
            patch = cv2.resize(faces[face_split[int(rng.integers(len(face_split)))]], (side, side),
                               interpolation=cv2.INTER_AREA)
            mask = np.ones(patch.shape, np.float32)
        else:
            grey, coin_mask = coins[coin_split[int(rng.integers(len(coin_split)))]]
            scale = side / max(grey.shape)
            size = (max(2, int(grey.shape[1] * scale)), max(2, int(grey.shape[0] * scale)))
            patch = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(coin_mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            patch, mask = patch[:, ::-1], mask[:, ::-1]
        patch = np.clip(patch.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255)
        spot = _place(rng, *patch.shape, boxes, height, width)
        if spot is None:
            continue
        y, x = spot
        h, w = patch.shape
        region = image[y : y + h, x : x + w].astype(np.float32)
        image[y : y + h, x : x + w] = np.round(region * (1 - mask[:, :, None]) + patch[:, :, None] * mask[:, :, None])
        box = _tight(mask, 0.5)
        boxes.append((x + box[0], y + box[1], x + box[2], y + box[3]))
        labels.append(label)
    return _noise(rng, image), boxes, labels


def _write_detection(out: Path, n_train: int, n_val: int, seed: int, set_id: int, classes: Sequence[str],
                     draw: Callable[[np.random.Generator, str], tuple[np.ndarray, list, list[int]]]) -> dict[str, Any]:
    """Write ``OUT/{train,val}/`` with PNG images and a COCO ``annotations.json`` (category ids ``1..C``)."""
    categories = [{"id": k + 1, "name": c, "supercategory": "object"} for k, c in enumerate(classes)]
    counts, image_id, ann_id = {}, 1, 1
    for s, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        images, annotations = [], []
        for i in range(n):
            image, boxes, labels = draw(np.random.default_rng([seed, set_id, s, i]), split)
            name = f"{image_id:06d}.png"
            _save(out / split / name, image)
            images.append({"id": image_id, "file_name": name, "width": image.shape[1], "height": image.shape[0]})
            for (x1, y1, x2, y2), label in zip(boxes, labels):
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": label + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
                ann_id += 1
            image_id += 1
        coco = {"info": {"description": f"detkit quality set, {split} split, seed {seed}"}, "images": images,
                "annotations": annotations, "categories": categories}
        write_coco(coco, out / split, out, split=split, copy_images=False)
        counts[split] = {"images": n, "boxes": len(annotations)}
    return counts


def _digits_detect(out: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    images, labels = _digits()
    split_idx = _split_indices(labels, 0.25, seed)

    def draw(rng: np.random.Generator, split: str):
        def alpha(r: np.random.Generator, side: int) -> tuple[np.ndarray, int]:
            i = split_idx[split][int(r.integers(len(split_idx[split])))]
            return _digit_alpha(images[i], side), int(labels[i])

        return _draw_inked(rng, alpha)

    return _write_detection(out, n_train, n_val, seed, 4, [str(d) for d in range(10)], draw)


def _glyphs_detect(out: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    faces = _font_faces()

    def draw(rng: np.random.Generator, split: str):
        def alpha(r: np.random.Generator, side: int) -> tuple[np.ndarray, int]:
            label = int(r.integers(len(LETTERS)))
            face = faces[split][int(r.integers(len(faces[split])))]
            return render_glyph(LETTERS[label], face, int(side / 0.75), float(r.uniform(-12, 12))), label

        return _draw_inked(rng, alpha)

    return _write_detection(out, n_train, n_val, seed, 5, list(LETTERS), draw)


def _objects_detect(out: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    return _write_detection(out, n_train, n_val, seed, 6, ["face", "coin"],
                            lambda rng, split: _pasted_objects(rng, split, seed))


# ----------------------------------------------------------------------------------------- detkit shapes


def _shapes_classify(out: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    from detkit.data.synthetic import make_shapes_classification

    meta, _ = make_shapes_classification(out, n_train=n_train, n_val=n_val, size=64, seed=seed, workers=1)
    return meta["splits"]


def _shapes_detect(out: Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    from detkit.data.det_synthetic import make_shapes_detection

    meta, _ = make_shapes_detection(out, n_train=n_train, n_val=n_val, seed=seed, workers=1)
    return meta["counts"]


SETS: dict[str, QualitySet] = {s.name: s for s in (
    QualitySet("digits", "classify", "scikit-learn handwritten digits (UCI, 43 writers), 8x8 scans upscaled",
               32, 1347, 450, _digits_classify),
    QualitySet("fonts", "classify", "letters A-J from matplotlib's 22 font faces (5 val-only) on real photo crops",
               32, 1000, 300, _fonts_classify),
    QualitySet("textures", "classify", "grey patches of 8 scikit-image photos/micrographs/scans, disjoint regions",
               32, 1000, 400, _textures_classify),
    QualitySet("shapes", "classify", "detkit's generated shapes (make_dataset.py shapes --task classify)",
               64, 1000, 300, _shapes_classify),
    QualitySet("digits_det", "detect", "handwritten digits inked on 160-256 px real photo crops",
               128, 400, 100, _digits_detect),
    QualitySet("glyphs_det", "detect", "font letters A-J (val faces held out) on 160-256 px real photo crops",
               128, 400, 100, _glyphs_detect),
    QualitySet("objects_det", "detect", "real LFW faces and coins pasted on 160-256 px grey real photo crops",
               128, 400, 100, _objects_detect),
    QualitySet("shapes_det", "detect", "detkit's generated shapes (make_dataset.py shapes --task detect)",
               128, 400, 100, _shapes_detect),
)}  # fmt: skip


def build_set(name: str, root: str | Path, n_train: int | None = None, n_val: int | None = None,
              seed: int = 0) -> Path:
    """Write set ``name`` to ``root/name`` (or reuse it when it already holds exactly these settings).

    Args:
        name: a key of :data:`SETS`.
        root: data folder; the set lands in ``root/name``.
        n_train, n_val: images per split (default: the set's own; at most the source's size for ``digits``).
        seed: non-negative seed; the same arguments give the same files.

    Returns:
        The set's folder: ImageFolder ``{train,val}/<class>/*.png`` or COCO ``{train,val}/annotations.json``.

    Raises:
        ValueError: unknown name, or counts below 1.
        FileExistsError: the folder holds files but no ``meta.json`` of this module.
    """
    if name not in SETS:
        raise ValueError(f"unknown quality set {name!r}; choose from {sorted(SETS)}")
    spec = SETS[name]
    n_train = spec.n_train if n_train is None else n_train
    n_val = spec.n_val if n_val is None else n_val
    if n_train < 1 or n_val < 1 or seed < 0:
        raise ValueError(f"need n_train >= 1, n_val >= 1 and seed >= 0, got {n_train}, {n_val}, {seed}")
    out = Path(root) / name
    settings = {"generator": "tools/benchmarks/quality_sets.py", "version": VERSION, "set": name, "task": spec.task,
                "seed": seed, "n_train": n_train, "n_val": n_val}
    meta_path = out / "quality_meta.json"
    if meta_path.is_file():
        existing = json.loads(meta_path.read_text(encoding="utf-8"))
        if existing.get("complete") and {k: existing.get(k) for k in settings} == settings:
            return out
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} holds files not written by quality_sets.build_set; choose another data folder")
    out.mkdir(parents=True, exist_ok=True)
    counts = spec.write(out, n_train, n_val, seed)
    atomic_write_json(meta_path, {**settings, "source": spec.source, "counts": counts, "complete": True}, indent=None)
    return out
