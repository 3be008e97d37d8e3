"""Box statistics of a detection train set and default boxes fitted to them (the YOLOv5 'autoanchor' idea for SSDs).

Boxes are taken as the network sees them (letterboxed or resized into the square input); anchor coverage is the
share of ground-truth boxes whose best default box has IoU >= 0.5, the test SSD matching applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detkit.data.det_transforms import letterbox_boxes, letterbox_params, resize_params
from detkit.ops import DefaultBoxGenerator

__all__ = ["AnchorFit", "anchor_coverage", "fit_ssd_anchors", "input_boxes", "ssd_default_boxes"]

#: the IoU from which a ground-truth box counts as covered (SSD's matching threshold)
COVERAGE_IOU = 0.5


@dataclass(frozen=True)
class AnchorFit:
    """Default-box settings for an SSD and how well they cover a set of boxes.

    Attributes:
        scales: ``L + 1`` scales (fractions of the input side; level ``k`` uses ``scales[k]`` and
            ``sqrt(scales[k] * scales[k + 1])``), as :class:`detkit.ops.DefaultBoxGenerator` takes them.
        ratios: one list of width/height ratios per level (each also used transposed).
        coverage: share of the boxes whose best default box has IoU >= 0.5.
        mean_iou: mean over the boxes of the best default box's IoU.
        num_boxes: boxes the figures were measured on.
    """

    scales: list[float]
    ratios: list[list[float]]
    coverage: float
    mean_iou: float
    num_boxes: int


def input_boxes(records: Sequence[Any], img_size: int, resize_mode: str = "letterbox") -> Tensor:
    """Every training box in the pixels of the ``img_size`` square input (no augmentation).

    Args:
        records: samples with ``height``, ``width`` and ``boxes`` (``ndarray[K, 4]`` ``(x1, y1, x2, y2)`` pixels),
            e.g. :class:`~detkit.data.detection.DetectionDataset` ``records``.
        img_size: side of the square network input.
        resize_mode: ``letterbox`` (keep aspect, pad) or ``resize`` (stretch), as the training geometry.

    Returns:
        ``Tensor[N, 4]`` float32 ``(x1, y1, x2, y2)`` in input pixels, every box of every record.
    """
    geometry = letterbox_params if resize_mode == "letterbox" else resize_params
    parts = [letterbox_boxes(np.asarray(r.boxes, np.float32).reshape(-1, 4), geometry((r.height, r.width), img_size))
             for r in records]
    boxes = np.concatenate(parts) if parts else np.zeros((0, 4), np.float32)
    return torch.from_numpy(boxes.astype(np.float32))


def ssd_default_boxes(scales: Sequence[float], ratios: Sequence[Sequence[float]],
                      feature_shapes: Sequence[tuple[int, int]], img_size: int) -> Tensor:
    """The default boxes an SSD with these settings places on ``feature_shapes`` of an ``img_size`` square.

    Returns:
        ``Tensor[A, 4]`` ``(x1, y1, x2, y2)`` pixels (:class:`detkit.ops.DefaultBoxGenerator`).
    """
    generator = DefaultBoxGenerator([list(r) for r in ratios], scales=list(scales))
    return generator.grid_anchors([tuple(s) for s in feature_shapes], (img_size, img_size), dtype=torch.float32,
                                  device=torch.device("cpu"))


def anchor_coverage(boxes: Tensor, anchors: Tensor, threshold: float = COVERAGE_IOU) -> tuple[float, float]:
    """``(share of boxes with best-anchor IoU >= threshold, mean best-anchor IoU)``.

    Args:
        boxes: ``Tensor[N, 4]`` ground truth ``(x1, y1, x2, y2)``.
        anchors: ``Tensor[A, 4]`` default boxes in the same pixels. Memory: ``256 x A`` float32 at a time.

    Computed with numpy (single-threaded): the fit calls this for ~100 candidates, and small torch ops on a
    loaded machine spend more time synchronising threads than computing.
    """
    if boxes.numel() == 0:
        return 0.0, 0.0
    b = boxes.detach().cpu().numpy().astype(np.float32)
    a = anchors.detach().cpu().numpy().astype(np.float32)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # (A,)
    best = np.empty(len(b))
    for start in range(0, len(b), 256):
        chunk = b[start:start + 256, None, :]  # (n, 1, 4)
        w = (np.minimum(chunk[..., 2], a[:, 2]) - np.maximum(chunk[..., 0], a[:, 0])).clip(min=0)  # (n, A)
        h = (np.minimum(chunk[..., 3], a[:, 3]) - np.maximum(chunk[..., 1], a[:, 1])).clip(min=0)
        inter = w * h
        area_b = (chunk[..., 2] - chunk[..., 0]) * (chunk[..., 3] - chunk[..., 1])  # (n, 1)
        best[start:start + 256] = (inter / (area_b + area_a - inter)).max(axis=1)
    return float((best >= threshold).mean()), float(best.mean())


def _candidate_ratios(boxes: Tensor, num_levels: int) -> list[list[list[float]]]:
    """Ratio sets to try: SSD's pattern, squares only, and 1 or 2 ratios at quantiles of the boxes' elongation."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    elongation = (wh[:, 0] / wh[:, 1]).log().abs()  # |log(w / h)|: a ratio a covers both a and 1 / a
    ssd = [[2.0] if i == 0 or i >= num_levels - 2 else [2.0, 3.0] for i in range(num_levels)]
    sets = [ssd, [[] for _ in range(num_levels)]]
    for qs in ((0.5,), (0.25, 0.75)):
        values = sorted({round(math.exp(float(elongation.quantile(q))), 2) for q in qs})
        values = [v for v in values if v >= 1.15]  # closer to 1 is a square, which every level has
        if values:
            sets.append([list(values) for _ in range(num_levels)])
    return sets


def _candidate_scales(boxes: Tensor, img_size: int, num_levels: int) -> list[list[float]]:
    """Geometric scale ladders ``s_0 .. s_L`` whose ends sit at quantiles of the boxes' sizes (and SSD's own)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    size = (wh[:, 0] * wh[:, 1]).sqrt() / img_size  # (N,) square-root area as a fraction of the side
    lows = [float(size.quantile(q)) for q in (0.02, 0.1, 0.25)]
    highs = [float(size.quantile(q)) for q in (0.75, 0.9, 0.98)] + [0.9]
    ladders = [[0.1 + 0.8 * k / (num_levels - 1) for k in range(num_levels)] + [1.0]]  # SSD's 0.1 .. 0.9
    for low in lows:
        for high in highs:
            if high <= low:
                continue
            for span in (num_levels - 1, max(1, num_levels // 2)):  # spread over every level, or the finer half
                ratio = (high / low) ** (1.0 / span)
                ladder = [min(low * ratio**k, 1.0) for k in range(num_levels + 1)]
                ladders.append([max(s, 1e-3) for s in ladder])
    return ladders


def fit_ssd_anchors(boxes: Tensor, feature_shapes: Sequence[tuple[int, int]], img_size: int, *,
                    max_boxes: int = 600, seed: int = 0) -> AnchorFit:
    """Default-box scales and ratios that cover ``boxes`` best on an SSD's feature levels.

    Tries SSD's own scales and geometric scale ladders between quantiles of the boxes' sizes (with SSD's ratio
    pattern), then, on the best ladder, squares only and ratios at quantiles of the boxes' elongation; keeps the
    highest coverage (then mean IoU, then fewer default boxes). Coverage is measured on the real grid, so a level
    too coarse for small boxes (centres a cell apart) scores low.

    Args:
        boxes: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)`` training boxes in input pixels (:func:`input_boxes`).
        feature_shapes: ``(h, w)`` of each feature level, finest first.
        img_size: side of the square input.
        max_boxes: boxes sampled (seeded) to measure coverage; the IoU matrix is ``max_boxes x A``.
        seed: seed of that sample.

    Raises:
        ValueError: when there are no boxes.
    """
    if boxes.numel() == 0:
        raise ValueError("boxes: the train set has no boxes to fit default boxes to")
    if len(boxes) > max_boxes:
        generator = torch.Generator().manual_seed(seed)
        boxes = boxes[torch.randperm(len(boxes), generator=generator)[:max_boxes]]
    levels = len(feature_shapes)
    ratio_sets = _candidate_ratios(boxes, levels)  # SSD's pattern first
    best = max((_score(boxes, scales, ratio_sets[0], feature_shapes, img_size)
                for scales in _candidate_scales(boxes, img_size, levels)), key=lambda scored: scored[0])
    for ratios in ratio_sets[1:]:
        best = max(best, _score(boxes, best[1].scales, ratios, feature_shapes, img_size), key=lambda sc: sc[0])
    return best[1]


def _score(boxes: Tensor, scales: list[float], ratios: list[list[float]], feature_shapes: Sequence[tuple[int, int]],
           img_size: int) -> tuple[tuple[float, float, int], AnchorFit]:
    """``(sort key, fit)`` of one candidate: coverage, then mean IoU, then fewer default boxes."""
    scales = [round(s, 4) for s in scales]
    anchors = ssd_default_boxes(scales, ratios, feature_shapes, img_size)
    coverage, mean_iou = anchor_coverage(boxes, anchors)
    return (round(coverage, 3), round(mean_iou, 3), -len(anchors)), AnchorFit(scales, ratios, coverage, mean_iou,
                                                                                len(boxes))
