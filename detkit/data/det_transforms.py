"""Box-aware image transforms for detection: albumentations training pipelines (presets, mosaic) and exact
letterbox/resize.

Eval letterbox/resize is done here, not by albumentations, so predictions map back to the original image exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor

from detkit.config.augment import DetectionAugment
from detkit.config.sections import RESIZE_MODES
from detkit.data.images import read_image
from detkit.data.transforms import MIRROR_NOTE, step_line

__all__ = [
    "DetectionAugment",
    "EvalDetectionTransform",
    "LetterboxParams",
    "MosaicTransform",
    "bbox_params",
    "build_detection_transforms",
    "describe_detection_augment",
    "letterbox_boxes",
    "letterbox_image",
    "letterbox_params",
    "mosaic",
    "resize_image",
    "resize_params",
    "unletterbox_boxes",
    "unresize_boxes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LetterboxParams(NamedTuple):
    """Exact map from original to transformed pixels: ``x' = x * scale_x + pad_x``, ``y' = y * scale_y + pad_y``.

    Coordinates are continuous pixel-edge coordinates (a box covering the whole ``W``-pixel-wide image is
    ``[0, W]``). For a letterbox the two scales differ only by the rounding of the resized short side
    (less than half a pixel over that side); keeping both makes the inverse exact.
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float


def _check_hw(orig_hw: Sequence[int] | Tensor, name: str = "orig_hw") -> tuple[int, int]:
    values = orig_hw.tolist() if isinstance(orig_hw, Tensor) else list(orig_hw)
    if len(values) != 2 or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{name} must be (height, width) with two positive integers, got {orig_hw!r}")
    return int(values[0]), int(values[1])


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (the square output side in pixels), got {size!r}")
    return size


def letterbox_params(orig_hw: Sequence[int] | Tensor, size: int) -> LetterboxParams:
    """Parameters of a letterbox: aspect-preserving resize of the long side to ``size``, centred padding.

    The resized image is ``round(W * s) x round(H * s)`` with ``s = size / max(H, W)`` (at least 1 pixel),
    placed at integer offsets ``pad_x = (size - new_w) // 2``, ``pad_y = (size - new_h) // 2``.

    Args:
        orig_hw: original image ``(height, width)`` in pixels.
        size: side of the square output in pixels.

    Returns:
        LetterboxParams ``(scale_x, scale_y, pad_x, pad_y)``: ``scale_x = new_w / W``, ``scale_y = new_h / H``.
    """
    h, w = _check_hw(orig_hw)
    size = _check_size(size)
    s = size / max(h, w)
    new_w = max(1, min(size, int(round(w * s))))
    new_h = max(1, min(size, int(round(h * s))))
    return LetterboxParams(new_w / w, new_h / h, float((size - new_w) // 2), float((size - new_h) // 2))


def resize_params(orig_hw: Sequence[int] | Tensor, size: int) -> LetterboxParams:
    """Parameters of a plain (aspect-changing) resize to ``size x size``: ``scale = size / side``, no padding.

    Args:
        orig_hw: original image ``(height, width)`` in pixels.
        size: side of the square output in pixels.

    Returns:
        LetterboxParams ``(size / W, size / H, 0, 0)``.
    """
    h, w = _check_hw(orig_hw)
    size = _check_size(size)
    return LetterboxParams(size / w, size / h, 0.0, 0.0)


def _params_tuple(params: LetterboxParams | Sequence[float] | Tensor) -> tuple[float, float, float, float]:
    values = params.tolist() if isinstance(params, Tensor) else list(params)
    if len(values) == 3:  # (scale, pad_x, pad_y): one scale for both axes
        values = [values[0], values[0], values[1], values[2]]
    if len(values) != 4:
        raise ValueError(
            f"params must be (scale_x, scale_y, pad_x, pad_y) or (scale, pad_x, pad_y), got {params!r}"
        )
    sx, sy, px, py = (float(v) for v in values)
    if not (sx > 0 and sy > 0 and math.isfinite(sx) and math.isfinite(sy)):
        raise ValueError(f"params scales must be positive and finite, got scale_x={sx}, scale_y={sy}")
    return sx, sy, px, py


def _affine_boxes(boxes: Tensor | np.ndarray, mul: tuple[float, float], add: tuple[float, float]) -> Any:
    if isinstance(boxes, np.ndarray):
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
        dtype = boxes.dtype if np.issubdtype(boxes.dtype, np.floating) else np.float32
        scale = np.array([mul[0], mul[1], mul[0], mul[1]], dtype=np.float64)
        shift = np.array([add[0], add[1], add[0], add[1]], dtype=np.float64)
        return (boxes.astype(np.float64) * scale + shift).astype(dtype)
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor or numpy.ndarray, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    # Work in float64 so the forward and inverse maps cancel to float32 rounding, then return the input dtype.
    work = boxes.to(torch.float64)
    scale = work.new_tensor([mul[0], mul[1], mul[0], mul[1]])
    shift = work.new_tensor([add[0], add[1], add[0], add[1]])
    return (work * scale + shift).to(dtype)


def letterbox_boxes(
    boxes: Tensor | np.ndarray, params: LetterboxParams | Sequence[float] | Tensor
) -> Tensor | np.ndarray:
    """Map boxes from original-image pixels into letterboxed (or resized) pixels.

    Args:
        boxes: ``Tensor[N, 4]`` or ``ndarray[N, 4]`` in ``(x1, y1, x2, y2)`` format, original pixels.
        params: from :func:`letterbox_params` / :func:`resize_params`, or a ``Tensor[4]`` of the same values.

    Returns:
        Boxes of the same type, shape and (floating) dtype in output pixels.
    """
    sx, sy, px, py = _params_tuple(params)
    return _affine_boxes(boxes, (sx, sy), (px, py))


def unletterbox_boxes(
    boxes: Tensor | np.ndarray,
    params: LetterboxParams | Sequence[float] | Tensor,
    clip_hw: Sequence[int] | Tensor | None = None,
) -> Tensor | np.ndarray:
    """Map boxes from letterboxed (or resized) pixels back to the original image: the exact inverse.

    Args:
        boxes: ``Tensor[N, 4]`` or ``ndarray[N, 4]`` in ``(x1, y1, x2, y2)`` format, output pixels
            (e.g. a detector's predictions on the transformed image).
        params: the parameters used for the forward map (e.g. ``target["letterbox"]``).
        clip_hw: when given, the original ``(height, width)``: boxes are clipped to ``[0, W] x [0, H]``
            (predictions reaching into the padding). ``None`` keeps the exact inverse.

    Returns:
        Boxes of the same type, shape and (floating) dtype in original-image pixels.
    """
    sx, sy, px, py = _params_tuple(params)
    out = _affine_boxes(boxes, (1.0 / sx, 1.0 / sy), (-px / sx, -py / sy))
    if clip_hw is None:
        return out
    h, w = _check_hw(clip_hw, "clip_hw")
    if isinstance(out, np.ndarray):
        out[:, 0::2] = np.clip(out[:, 0::2], 0, w)
        out[:, 1::2] = np.clip(out[:, 1::2], 0, h)
        return out
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


# Plain resize uses the same affine map with zero padding.
unresize_boxes = unletterbox_boxes


def _interpolation(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    # INTER_AREA avoids aliasing when shrinking; INTER_LINEAR is the better choice when enlarging.
    shrinking = dst_hw[0] < src_hw[0] or dst_hw[1] < src_hw[1]
    return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR


def _check_image(image: np.ndarray) -> tuple[int, int]:
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a non-empty ndarray[H, W] or ndarray[H, W, C], got shape {shape}")
    return int(image.shape[0]), int(image.shape[1])


def letterbox_image(image: np.ndarray, size: int, fill: int = 114) -> tuple[np.ndarray, LetterboxParams]:
    """Letterbox an image into a ``size x size`` square (see :func:`letterbox_params` for the geometry).

    Args:
        image: ``ndarray[H, W, C]`` (or ``[H, W]``) of any dtype OpenCV resizes.
        size: side of the square output in pixels.
        fill: value of the padding.

    Returns:
        ``(ndarray[size, size, C], params)`` with the same dtype as ``image``.
    """
    h, w = _check_image(image)
    params = letterbox_params((h, w), size)
    new_w, new_h = int(round(w * params.scale_x)), int(round(h * params.scale_y))
    resized = image
    if (new_h, new_w) != (h, w):
        resized = cv2.resize(image, (new_w, new_h), interpolation=_interpolation((h, w), (new_h, new_w)))
    if resized.ndim == 2 and image.ndim == 3:  # cv2 drops a trailing channel axis of size 1
        resized = resized[:, :, None]
    out = np.full((size, size) + image.shape[2:], fill, dtype=image.dtype)
    x0, y0 = int(params.pad_x), int(params.pad_y)
    out[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return out, params


def resize_image(image: np.ndarray, size: int) -> tuple[np.ndarray, LetterboxParams]:
    """Resize an image to ``size x size`` ignoring its aspect ratio.

    Args:
        image: ``ndarray[H, W, C]`` (or ``[H, W]``).
        size: side of the square output in pixels.

    Returns:
        ``(ndarray[size, size, C], params)`` with ``params = resize_params((H, W), size)``.
    """
    h, w = _check_image(image)
    params = resize_params((h, w), size)
    out = image
    if (h, w) != (size, size):
        out = cv2.resize(image, (size, size), interpolation=_interpolation((h, w), (size, size)))
        if out.ndim == 2 and image.ndim == 3:
            out = out[:, :, None]
    return out, params


def _normalize_to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std must be 3 values in [0, 1] units with std > 0, got mean={mean}, std={std}")
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def bbox_params(min_visibility: float = 0.0, min_area: float = 0.0) -> A.BboxParams:
    """The albumentations box settings detkit pipelines use: pixel ``(x1, y1, x2, y2)`` boxes, ``labels`` field.

    Args:
        min_visibility: boxes keeping less than this fraction of their area are dropped.
        min_area: boxes smaller than this (output pixels²) are dropped.
    """
    return A.BboxParams(
        format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, min_area=min_area, clip=True
    )


class EvalDetectionTransform:
    """Deterministic eval transform: letterbox or resize to a square, normalise, convert to a tensor.

    Called like an albumentations ``Compose`` (``transform(image=..., bboxes=..., labels=...)``) and returns
    its keys plus ``"letterbox"``, the exact :class:`LetterboxParams` used, so that predictions can be
    mapped back with :func:`unletterbox_boxes`.

    Args:
        size: side of the square output in pixels.
        mode: ``"letterbox"`` (keep aspect, pad) or ``"resize"`` (stretch).
        mean, std: normalisation in [0, 1] units.
        fill: padding grey level for ``"letterbox"``.
    """

    def __init__(
        self,
        size: int,
        mode: str = "letterbox",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        fill: int = 114,
    ) -> None:
        if mode not in RESIZE_MODES:
            raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
        self.size = _check_size(size)
        self.mode = mode
        self.fill = fill
        self.finish = A.Compose(_normalize_to_tensor(mean, std))

    def __call__(
        self, *, image: np.ndarray, bboxes: np.ndarray | None = None, labels: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """Transform one sample.

        Args:
            image: ``ndarray[H, W, 3]`` uint8 RGB.
            bboxes: ``ndarray[K, 4]`` in ``(x1, y1, x2, y2)`` original pixels, or ``None``.
            labels: ``K`` labels, passed through.

        Returns:
            dict with ``image`` (``Tensor[3, size, size]`` float32), ``bboxes`` (``ndarray[K, 4]`` float32 in
            output pixels), ``labels`` (``ndarray[K]``) and ``letterbox`` (:class:`LetterboxParams`).
        """
        if self.mode == "letterbox":
            out, params = letterbox_image(image, self.size, self.fill)
        else:
            out, params = resize_image(image, self.size)
        boxes = np.zeros((0, 4), np.float32) if bboxes is None else np.asarray(bboxes, dtype=np.float32).reshape(-1, 4)
        return {
            "image": self.finish(image=out)["image"],
            "bboxes": letterbox_boxes(boxes, params),
            "labels": np.asarray([] if labels is None else labels),
            "letterbox": params,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mode={self.mode!r}, fill={self.fill})"


def build_detection_transforms(
    train: bool,
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    aug: DetectionAugment | None = None,
    resize_mode: str = "letterbox",
    seed: int | None = None,
    mosaic_source: Sequence[Any] | None = None,
) -> A.Compose | EvalDetectionTransform | MosaicTransform:
    """Detection transforms producing ``Tensor[3, img_size, img_size]`` float32 and boxes in output pixels.

    Train (albumentations, boxes handled by ``BboxParams(format="pascal_voc", label_fields=["labels"])``):
    box-safe random crop (``A.RandomSizedBBoxSafeCrop``, resized to the square) or letterbox
    (``LongestMaxSize`` + centred ``PadIfNeeded``), then zoom/shift (``A.Affine``, keep ratio), flips,
    colour jitter, ``Normalize(mean, std)``, ``ToTensorV2``. Boxes cut below ``aug.min_visibility`` or
    ``aug.min_area`` are dropped with their labels. Options left null come from ``aug.preset`` (``auto``:
    ``standard``). With ``aug.mosaic_p > 0`` and a ``mosaic_source``, a :class:`MosaicTransform` puts the sample
    and 3 random others on a 2 x 2 mosaic (:func:`mosaic`) first, with that probability.

    Eval: :class:`EvalDetectionTransform` (exact letterbox or resize, parameters returned).

    Both are called as ``t(image=rgb_uint8, bboxes=ndarray[K, 4], labels=ndarray[K])`` and return a dict
    with ``image``, ``bboxes``, ``labels`` (eval adds ``letterbox``).

    Args:
        train: training pipeline (random) or eval pipeline (deterministic).
        img_size: side of the square output in pixels.
        mean, std: normalisation in [0, 1] units (ImageNet by default).
        aug: training options (defaults when ``None``); its ``fill`` is also the eval padding value.
        resize_mode: eval geometry, ``"letterbox"`` or ``"resize"``.
        seed: seed of the albumentations random state for reproducible training pipelines.
        mosaic_source: the training samples mosaic partners are drawn from: objects with ``path``, ``boxes``
            (``ndarray[K, 4]`` ``(x1, y1, x2, y2)`` pixels) and ``labels`` (``ndarray[K]``), e.g. a
            :class:`~detkit.data.detection.DetectionDataset`'s ``records``. Without it mosaic stays off.
    """
    aug = (aug if aug is not None else DetectionAugment()).resolved()
    img_size = _check_size(img_size)
    if not train:
        return EvalDetectionTransform(img_size, mode=resize_mode, mean=mean, std=std, fill=aug.fill)
    steps = _train_steps(img_size, mean, std, aug)
    params = bbox_params(aug.min_visibility, aug.min_area)
    pipeline = A.Compose(steps, bbox_params=params, seed=seed)
    if aug.mosaic_p <= 0 or not mosaic_source:
        return pipeline
    return MosaicTransform(pipeline, mosaic_source, aug.mosaic_p, img_size, fill=aug.fill,
                           min_visibility=aug.min_visibility, seed=seed)


def _train_steps(img_size: int, mean: Sequence[float], std: Sequence[float], aug: DetectionAugment
                 ) -> list[A.BasicTransform]:
    lo, hi = aug.scale_range
    return [
        A.RandomSizedBBoxSafeCrop(height=img_size, width=img_size, erosion_rate=aug.crop_erosion, p=aug.crop_p),
        A.LongestMaxSize(max_size=img_size),
        A.PadIfNeeded(
            min_height=img_size, min_width=img_size, position="center", border_mode=cv2.BORDER_CONSTANT, fill=aug.fill
        ),
        A.Affine(
            scale=(lo, hi),
            translate_percent=(-aug.translate, aug.translate),
            keep_ratio=True,
            border_mode=cv2.BORDER_CONSTANT,
            fill=aug.fill,
            p=aug.scale_p,
        ),
        A.HorizontalFlip(p=aug.hflip_p),
        A.VerticalFlip(p=aug.vflip_p),
        A.ColorJitter(
            brightness=(max(0.0, 1 - aug.brightness), 1 + aug.brightness),
            contrast=(max(0.0, 1 - aug.contrast), 1 + aug.contrast),
            saturation=(max(0.0, 1 - aug.saturation), 1 + aug.saturation),
            hue=(-aug.hue, aug.hue),
            p=aug.color_p,
        ),
        *_normalize_to_tensor(mean, std),
    ]


def mosaic(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray], size: int,
           centre: tuple[float, float], fill: int = 114, min_visibility: float = 0.3
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2 x 2 mosaic (YOLOv4): four images letterboxed into the quadrants of a ``2 size`` square, cropped to
    ``size x size`` around ``centre``.

    Each image keeps the scale of its own letterbox (objects look as large as in a letterboxed eval image). A box
    is clipped to the crop and kept when at least ``min_visibility`` of its letterboxed area stays in view.

    Args:
        images: four ``ndarray[H, W, 3]`` uint8 images (top-left, top-right, bottom-left, bottom-right).
        boxes: their ``ndarray[K, 4]`` boxes in ``(x1, y1, x2, y2)`` pixels.
        labels: their ``ndarray[K]`` labels.
        size: side of the output square.
        centre: ``(x, y)`` of the crop centre on the ``2 size`` canvas, each in ``[size / 2, 3 size / 2]``.
        fill: grey level of the padding.
        min_visibility: share of a box's area that must stay in view.

    Returns:
        ``(image ndarray[size, size, 3] uint8, boxes ndarray[M, 4] float32 in output pixels, labels ndarray[M])``.
    """
    if len(images) != 4 or len(boxes) != 4 or len(labels) != 4:
        raise ValueError(f"mosaic: expected 4 images, boxes and labels, got {len(images)}, {len(boxes)}, {len(labels)}")
    canvas = np.full((2 * size, 2 * size, 3), fill, np.uint8)
    x0, y0 = int(round(centre[0] - size / 2)), int(round(centre[1] - size / 2))
    if not (0 <= x0 <= size and 0 <= y0 <= size):
        raise ValueError(f"centre: expected x and y in [{size / 2}, {3 * size / 2}], got {centre}")
    kept_boxes, kept_labels = [], []
    for k, (image, b, lab) in enumerate(zip(images, boxes, labels)):
        square, params = letterbox_image(image, size, fill)
        ox, oy = (k % 2) * size, (k // 2) * size
        canvas[oy:oy + size, ox:ox + size] = square
        placed = letterbox_boxes(np.asarray(b, np.float32).reshape(-1, 4), params) + np.array([ox, oy, ox, oy],
                                                                                                np.float32)
        shifted = placed - np.array([x0, y0, x0, y0], np.float32)  # (K, 4) in crop pixels
        clipped = np.clip(shifted, 0, size)
        area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
        seen = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = (seen > 0) & (seen >= min_visibility * area)
        kept_boxes.append(clipped[keep])
        kept_labels.append(np.asarray(lab).reshape(-1)[keep])
    image = canvas[y0:y0 + size, x0:x0 + size].copy()
    return image, np.concatenate(kept_boxes).astype(np.float32), np.concatenate(kept_labels)


class MosaicTransform:
    """A training pipeline that, with probability ``p``, first builds a :func:`mosaic` of the sample and 3 others.

    Called like the albumentations ``Compose`` it wraps (``t(image=..., bboxes=..., labels=...)``); the mosaic
    (``size x size``) then goes through that pipeline (its letterbox is a no-op, zoom, flips and colour apply).
    Partners are read from ``source`` only when the mosaic fires; the sample takes a random quadrant.

    Args:
        pipeline: the training pipeline.
        source: samples with ``path``, ``boxes`` ``ndarray[K, 4]`` and ``labels`` ``ndarray[K]``.
        p: probability of a mosaic.
        size: side of the square output.
        fill: padding grey level.
        min_visibility: share of a box's area that must stay in view.
        seed: seed of the mosaic's own draws and of the pipeline (:meth:`set_random_seed` reseeds both).
    """

    def __init__(self, pipeline: A.Compose, source: Sequence[Any], p: float, size: int, fill: int = 114,
                 min_visibility: float = 0.3, seed: int | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.pipeline, self.source, self.p, self.size = pipeline, source, float(p), _check_size(size)
        self.fill, self.min_visibility = fill, min_visibility
        self.rng = np.random.default_rng(seed)

    def set_random_seed(self, seed: int) -> None:
        """Reseed the mosaic's draws and the pipeline (what the datasets' reseeding calls)."""
        self.rng = np.random.default_rng(seed)
        self.pipeline.set_random_seed(seed)

    def __call__(self, *, image: np.ndarray, bboxes: np.ndarray, labels: Sequence[int]) -> dict[str, Any]:
        if self.rng.random() < self.p:
            partners = [self.source[int(i)] for i in self.rng.integers(0, len(self.source), size=3)]
            items = [(read_image(s.path), s.boxes, s.labels) for s in partners]
            items.insert(int(self.rng.integers(4)), (image, bboxes, labels))
            centre = tuple(self.rng.uniform(0.5 * self.size, 1.5 * self.size, size=2))
            image, bboxes, labels = mosaic(*zip(*items), self.size, centre, self.fill, self.min_visibility)
        return self.pipeline(image=image, bboxes=bboxes, labels=labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, partners from {len(self.source)} samples, {self.pipeline!r})"


def describe_detection_augment(aug: DetectionAugment, prefix: str = "detect.augment") -> list[str]:
    """The enabled detection training transforms in words, each with the key that turns it off (run summary)."""
    a = aug.resolved()
    steps = [
        (a.mosaic_p > 0, f"Mosaic 2 x 2 p={a.mosaic_p:g}", "mosaic_p=0", ""),
        (a.crop_p > 0, f"box-safe crop p={a.crop_p:g}", "crop_p=0", ""),
        (a.scale_p > 0, f"zoom {_range(a.scale_range)} with shift {a.translate:g} p={a.scale_p:g}", "scale_p=0", ""),
        (a.hflip_p > 0, f"HorizontalFlip p={a.hflip_p:g}", "hflip_p=0", MIRROR_NOTE),
        (a.vflip_p > 0, f"VerticalFlip p={a.vflip_p:g}", "vflip_p=0", MIRROR_NOTE),
        (a.color_p > 0, f"ColorJitter p={a.color_p:g}", "color_p=0", ""),
    ]
    return [step_line(text, off, note, prefix) for on, text, off, note in steps if on]


def _range(values: Sequence[float]) -> str:
    return f"[{values[0]:.3g}, {values[1]:.3g}]"
