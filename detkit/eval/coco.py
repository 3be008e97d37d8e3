"""COCO detection evaluation through pycocotools: mAP, AR, per-class AP and precision-recall curves.

Predictions are collected per image, in original-image pixels with the dataset's category ids; prints are captured.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from detkit.viz.pr_curves import plot_pr_curves

__all__ = ["CocoEvaluator", "CocoMetrics", "plot_pr_curves", "predictions_to_coco_results"]

logger = logging.getLogger(__name__)

# Order of COCOeval.stats for bbox evaluation.
_STAT_NAMES = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip


def _as_numpy(name: str, value: Tensor | np.ndarray | Sequence[float], shape_tail: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != shape_tail:
        want = "[N, " + ", ".join(map(str, shape_tail)) + "]" if shape_tail else "[N]"
        raise ValueError(f"{name} must have shape {want}, got {list(arr.shape)}")
    return arr


def predictions_to_coco_results(
    image_id: int,
    boxes: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    category_ids: Tensor | np.ndarray | Sequence[int],
) -> list[dict[str, Any]]:
    """Turn one image's detections into COCO results entries.

    Args:
        image_id: COCO id of the image.
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` format, original-image pixels.
        scores: ``Tensor[N]`` confidences.
        category_ids: ``Tensor[N]`` COCO category ids (as in the dataset, not contiguous labels).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``, one per detection, in input order.
    """
    b = _as_numpy("boxes", boxes, (4,))
    s = _as_numpy("scores", scores, ())
    c = _as_numpy("category_ids", category_ids, ())
    if not len(b) == len(s) == len(c):
        raise ValueError(f"boxes, scores and category_ids must have the same length, got {len(b)}, {len(s)}, {len(c)}")
    if not np.isfinite(b).all() or not np.isfinite(s).all():
        raise ValueError(f"boxes and scores must be finite (image_id {image_id})")
    if not np.all(c == np.round(c)):
        raise ValueError(f"category_ids must be integers, got {c[c != np.round(c)][:5].tolist()}")
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    return [
        {"image_id": int(image_id), "category_id": int(ci), "bbox": [float(v) for v in box], "score": float(si)}
        for box, si, ci in zip(xywh, s, c)
    ]


def _quiet(fn: Any, *args: Any) -> tuple[Any, str]:
    """Call ``fn`` with pycocotools' prints captured; return its result and the captured text."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args)
    return out, buf.getvalue()


def _load_gt(coco_gt: COCO | str | os.PathLike | Mapping[str, Any]) -> COCO:
    if isinstance(coco_gt, COCO):
        gt = coco_gt
    else:
        if isinstance(coco_gt, (str, os.PathLike)):
            path = Path(coco_gt)
            if not path.is_file():
                raise FileNotFoundError(f"coco_gt file {path} does not exist")
            with open(path, encoding="utf-8") as f:
                dataset = json.load(f)
        elif isinstance(coco_gt, Mapping):
            dataset = copy.deepcopy(dict(coco_gt))
        else:
            raise TypeError(f"coco_gt must be a pycocotools COCO, a path or a dict, got {type(coco_gt).__name__}")
        for key in ("images", "categories"):
            if not isinstance(dataset.get(key), list):
                raise ValueError(f"coco_gt needs a list {key!r} (COCO instances format)")
        dataset.setdefault("annotations", [])
        gt = COCO()
        gt.dataset = dataset
        _quiet(gt.createIndex)
    # COCOeval reads "area" and "iscrowd" from every ground-truth box.
    for ann in gt.dataset.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return gt


@dataclass
class CocoMetrics:
    """Results of one COCO bbox evaluation; values follow pycocotools (``-1`` where nothing can be measured).

    Attributes:
        map, map50, map75: AP averaged over IoU 0.50:0.95, at IoU 0.50, at IoU 0.75 (all areas, 100 dets).
        map_small, map_medium, map_large: AP@[.5:.95] by object area (< 32², 32²–96², > 96² pixels).
        ar1, ar10, ar100: recall averaged over IoU 0.50:0.95 with at most 1, 10, 100 detections per image.
        ar_small, ar_medium, ar_large: AR@100 by object area.
        per_class_ap: AP@[.5:.95] by category name (``-1`` for a category without ground truth).
        per_class_ap50: AP@0.5 by category name.
        pr_curves: by category name, ``ndarray[101]`` interpolated precision at ``recall_thresholds`` for
            IoU 0.5, all areas, 100 detections (``-1`` entries for a category without ground truth).
        recall_thresholds: ``ndarray[101]`` recall points 0, 0.01, ..., 1.
        num_images, num_predictions: evaluated images and detections.
        summary: pycocotools' printed summary table.
    """

    map: float = -1.0
    map50: float = -1.0
    map75: float = -1.0
    map_small: float = -1.0
    map_medium: float = -1.0
    map_large: float = -1.0
    ar1: float = -1.0
    ar10: float = -1.0
    ar100: float = -1.0
    ar_small: float = -1.0
    ar_medium: float = -1.0
    ar_large: float = -1.0
    per_class_ap: dict[str, float] = field(default_factory=dict)
    per_class_ap50: dict[str, float] = field(default_factory=dict)
    pr_curves: dict[str, np.ndarray] = field(default_factory=dict)
    recall_thresholds: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 101))
    num_images: int = 0
    num_predictions: int = 0
    summary: str = ""

    def scalars(self) -> dict[str, float]:
        """The twelve summary numbers by name (``map``, ``map50``, ... ``ar_large``), e.g. for ``metrics.json``."""
        return {name: float(getattr(self, name)) for name in _STAT_NAMES}


def _class_keys(categories: list[dict[str, Any]]) -> list[str]:
    names = [str(c["name"]) for c in categories]
    # Duplicate names would collide as dict keys; disambiguate them with their ids.
    return [n if names.count(n) == 1 else f"{n} (id {c['id']})" for n, c in zip(names, categories)]


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


class CocoEvaluator:
    """Accumulate detections over a dataset and evaluate them with pycocotools' ``COCOeval`` (bbox).

    Every ground-truth image counts: an image without predictions contributes only misses. ``iscrowd``
    ground truth is an ignore region (COCOeval's rule). Results can be merged across processes with
    :meth:`add_results` (e.g. after ``torch.distributed.all_gather_object(evaluator.results)``).

    Args:
        coco_gt: ground truth as a pycocotools ``COCO``, a path to an instances ``.json``, or a dict
            (e.g. ``DetectionDataset.coco``); a dict is copied.
        iou_type: only ``"bbox"``.
        label_to_cat_id: maps a model's contiguous labels to category ids for :meth:`update`
            (e.g. ``DetectionDataset.label_to_cat_id``); ``None`` means labels already are category ids.
    """

    def __init__(
        self,
        coco_gt: COCO | str | os.PathLike | Mapping[str, Any],
        iou_type: str = "bbox",
        label_to_cat_id: Mapping[int, int] | None = None,
    ) -> None:
        if iou_type != "bbox":
            raise ValueError(f"iou_type must be 'bbox' (the only type detkit evaluates), got {iou_type!r}")
        self.iou_type = iou_type
        self.coco_gt = _load_gt(coco_gt)
        self.label_to_cat_id = dict(label_to_cat_id) if label_to_cat_id is not None else None
        self.categories = sorted(self.coco_gt.loadCats(self.coco_gt.getCatIds()), key=lambda c: c["id"])
        self.class_names = _class_keys(self.categories)
        self._img_ids = set(self.coco_gt.getImgIds())
        self._cat_ids = {c["id"] for c in self.categories}
        self.results: list[dict[str, Any]] = []
        self.metrics: CocoMetrics | None = None

    def reset(self) -> None:
        """Forget the accumulated predictions (e.g. before the next epoch's evaluation)."""
        self.results = []
        self.metrics = None

    def add(
        self,
        image_id: int,
        boxes: Tensor | np.ndarray,
        scores: Tensor | np.ndarray,
        category_ids: Tensor | np.ndarray | Sequence[int],
    ) -> None:
        """Add one image's detections.

        Args:
            image_id: COCO id of a ground-truth image.
            boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` format, original-image pixels.
            scores: ``Tensor[N]``.
            category_ids: ``Tensor[N]`` ground-truth category ids.

        Raises:
            ValueError: unknown image id or category ids, or inconsistent shapes.
        """
        if int(image_id) not in self._img_ids:
            raise ValueError(f"image_id {image_id} is not in the ground truth ({len(self._img_ids)} images)")
        entries = predictions_to_coco_results(image_id, boxes, scores, category_ids)
        unknown = sorted({e["category_id"] for e in entries} - self._cat_ids)
        if unknown:
            raise ValueError(
                f"category ids {unknown} (image {image_id}) are not in the ground truth {sorted(self._cat_ids)}; "
                "map model labels with label_to_cat_id"
            )
        self.results.extend(entries)
        self.metrics = None

    def update(self, predictions: Mapping[int, Mapping[str, Tensor | np.ndarray]]) -> None:
        """Add detections for several images (the torchvision reference's interface).

        Args:
            predictions: ``{image_id: {"boxes": Tensor[N, 4] xyxy original pixels, "scores": Tensor[N],
                "labels": Tensor[N]}}``; labels go through ``label_to_cat_id`` when it was given. A
                ``"category_ids"`` entry, when present, is used as is instead of ``"labels"``.
        """
        for image_id, pred in predictions.items():
            if "category_ids" in pred:
                cat_ids = pred["category_ids"]
            else:
                labels = _as_numpy("labels", pred["labels"], ()).astype(np.int64)
                if self.label_to_cat_id is None:
                    cat_ids = labels
                else:
                    missing = sorted(set(labels.tolist()) - set(self.label_to_cat_id))
                    if missing:
                        raise ValueError(f"labels {missing} (image {image_id}) have no entry in label_to_cat_id")
                    cat_ids = np.asarray([self.label_to_cat_id[int(v)] for v in labels], dtype=np.int64)
            self.add(image_id, pred["boxes"], pred["scores"], cat_ids)

    def add_results(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Merge COCO results entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``), e.g. from other ranks."""
        for r in results:
            if int(r["image_id"]) not in self._img_ids or int(r["category_id"]) not in self._cat_ids:
                raise ValueError(f"result {dict(r)} names an image or category id not in the ground truth")
            self.results.append(
                {
                    "image_id": int(r["image_id"]),
                    "category_id": int(r["category_id"]),
                    "bbox": [float(v) for v in r["bbox"]],
                    "score": float(r["score"]),
                }
            )
        self.metrics = None

    def _detections(self) -> COCO:
        if self.results:
            # loadRes adds keys to the entries it is given: hand it copies.
            dt, _ = _quiet(self.coco_gt.loadRes, [dict(r, bbox=list(r["bbox"])) for r in self.results])
            return dt
        # loadRes cannot take an empty list; an empty result set is still a valid evaluation (AP 0).
        dt = COCO()
        dt.dataset = {
            "images": list(self.coco_gt.dataset["images"]),
            "categories": copy.deepcopy(self.categories),
            "annotations": [],
        }
        _quiet(dt.createIndex)
        return dt

    def compute(self) -> CocoMetrics:
        """Run COCOeval (evaluate, accumulate, summarize) on everything added so far.

        Returns:
            :class:`CocoMetrics`; also kept in ``self.metrics``. With no ground-truth boxes at all every
            value is ``-1``; with ground truth but no predictions AP and AR are 0.
        """
        metrics = CocoMetrics(num_images=len(self._img_ids), num_predictions=len(self.results))
        ev = COCOeval(self.coco_gt, self._detections(), self.iou_type)
        text = ""
        for step in (ev.evaluate, ev.accumulate, ev.summarize):
            _, out = _quiet(step)
            text += out
        metrics.summary = text
        for name, value in zip(_STAT_NAMES, ev.stats):
            setattr(metrics, name, float(value))
        precision = ev.eval["precision"]  # (T iou thresholds, R=101 recall points, K classes, A areas, M max-dets)
        iou50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
        metrics.recall_thresholds = np.asarray(ev.params.recThrs, dtype=np.float64)
        k_of = {cid: k for k, cid in enumerate(ev.params.catIds)}
        for key, cat in zip(self.class_names, self.categories):
            p = precision[:, :, k_of[cat["id"]], 0, -1]  # (T, R) for area "all", maxDets 100
            metrics.per_class_ap[key] = _mean_valid(p)
            metrics.per_class_ap50[key] = _mean_valid(p[iou50])
            metrics.pr_curves[key] = p[iou50].astype(np.float64).copy()
        logger.debug("COCO evaluation of %d detections:\n%s", len(self.results), text)
        self.metrics = metrics
        return metrics

    def plot_pr_curves(self, path: str | os.PathLike) -> Path:
        """Save the per-class precision-recall curves (IoU 0.5) of the last :meth:`compute` as a PNG.

        Runs :meth:`compute` first when nothing has been computed since the last change.
        """
        return plot_pr_curves(self.metrics if self.metrics is not None else self.compute(), path)
