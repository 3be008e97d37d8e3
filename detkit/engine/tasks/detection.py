"""The detection task for the one trainer: COCO, YOLO and Pascal VOC splits as they are, detectors from the registry, COCO evaluation and plots.

``DetectionSplit`` is the dataset a split loads into; ``best.pt`` maximises COCO mAP@[.5:.95] (``val_map``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkit.config.sections import DetectConfig, ExperimentConfig
from detkit.data.det_transforms import build_detection_transforms
from detkit.data.detection import DetectionDataset, detection_collate
from detkit.data.images import read_image, write_image
from detkit.data.layouts import find_detection_split
from detkit.engine.anchors import LOW_COVERAGE, resolve_anchors
from detkit.engine.tasks.base import Task, register_task
from detkit.eval.coco import CocoEvaluator, CocoMetrics
from detkit.eval.detection import DetectionEvaluator
from detkit.models.detector import build_detector
from detkit.viz.pr_curves import plot_pr_curves

__all__ = ["DetectionSplit", "DetectionTask"]

logger = logging.getLogger(__name__)


class DetectionSplit(DetectionDataset):
    """A :class:`~detkit.data.detection.DetectionDataset` with the attributes the trainer's ``Task`` contract reads.

    Adds ``skipped`` (``(Path, reason)`` of unreadable images) and ``samples`` (``(Path, number of boxes)``
    per image, what :func:`detkit.data.stats.compute_mean_std` reads).
    """

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        return [(Path(p), reason) for p, reason in self.summary.skipped]

    @property
    def samples(self) -> list[tuple[Path, int]]:
        return [(r.path, len(r.labels)) for r in self.records]


@register_task("detect")
class DetectionTask(Task):
    """Object detection; ``best.pt`` maximises COCO mAP@[.5:.95] on the validation set (``val_map``).

    Batches are ``(images Tensor[B, 3, S, S], targets, paths)`` from :func:`detection_collate`, each target
    holding ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` in input pixels, ``labels`` ``Tensor[K]`` in
    ``0..C-1``, ``image_id``, ``orig_size`` and (eval) ``letterbox``.

    Args:
        classes: class names; label ``i`` names ``classes[i]``.
        category_ids: the dataset's category id of each label (default ``1..C``); stored with the model.
        detect: detection options (thresholds, eval geometry, loss, augmentation).
        eval_dataset: the dataset validated on (its ``coco`` is the ground truth), unless
            :meth:`new_evaluator` is given one.
    """

    best_metric = "val_map"
    best_mode = "max"

    def __init__(self, classes: list[str], category_ids: list[int] | None = None, detect: DetectConfig | None = None,
                 eval_dataset: DetectionDataset | None = None) -> None:
        if len(classes) < 1:
            raise ValueError(f"classes: a detector needs at least 1 class, got {list(classes)}")
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.category_ids = [int(c) for c in category_ids] if category_ids is not None \
            else list(range(1, self.num_classes + 1))
        if len(self.category_ids) != self.num_classes or len(set(self.category_ids)) != self.num_classes:
            raise ValueError(f"category_ids: expected {self.num_classes} distinct ids (one per class {self.classes}), "
                             f"got {self.category_ids}")
        self.detect = detect if detect is not None else DetectConfig()
        self.eval_dataset = eval_dataset
        self._gt_cache: tuple[int, Any] | None = None

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, classes: list[str], *, train_set: DetectionDataset | None = None,
                    val_set: DetectionDataset | None = None, category_ids: list[int] | None = None
                    ) -> DetectionTask:
        """The task for an ``ExperimentConfig`` (its ``detect`` section; defaults when it has none).

        Category ids: ``category_ids`` (e.g. a checkpoint's ``model_meta["category_ids"]``), else
        ``train_set``'s, else ``val_set``'s. Validation ground truth: ``val_set``.
        """
        detect = getattr(cfg, "detect", None) or DetectConfig()
        source = train_set if train_set is not None else val_set
        if category_ids is None and source is not None:
            category_ids = list(source.cat_ids)
        return cls(classes, category_ids, detect, eval_dataset=val_set)

    # ------------------------------------------------------------------ data

    @staticmethod
    def load_split(data_cfg: Any, split: str, classes: list[str] | None = None) -> DetectionSplit:
        """``DetectionSplit`` of one split, in whichever layout ``data_cfg`` points at (COCO, YOLO, Pascal VOC).

        The split is found by :func:`detkit.data.layouts.find_detection_split` (explicit ``data.*_images`` /
        ``*_annotations`` keys, a dataset file as ``data.root``, or the layouts under it) and read in memory,
        never converted on disk; every format goes through the same validation and summary. With ``classes``
        given (train's, for val), the split's categories must have the same names in the same order, so labels
        mean the same thing in both.
        """
        found = find_detection_split(data_cfg, split, classes, workers=data_cfg.scan_workers)
        logger.info("data: split %r is %s (%s)", split, found.layout, found.name)
        dataset = DetectionSplit.from_coco(found.coco, found.images_dir, source=found.source, validate=data_cfg.scan,
                                           scan_workers=data_cfg.scan_workers, image_sizes=found.image_sizes,
                                           name=found.name)
        if classes is not None and list(classes) != dataset.classes:
            raise ValueError(f"data.root: split {split!r} ({found.name}) has categories {dataset.classes}, but "
                             f"training uses {list(classes)}; both splits need the same categories")
        return dataset

    def build_transform(self, data_cfg: Any, img_size: int, normalization: dict[str, Any], train: bool,
                        dataset: DetectionDataset | None = None) -> Any:
        """Box-aware albumentations pipeline (train; mosaic partners from ``dataset``) or exact letterbox/resize
        (eval) to ``img_size`` squares."""
        return build_detection_transforms(train=train, img_size=img_size, mean=normalization["mean"],
                                          std=normalization["std"], aug=self.detect.augment,
                                          resize_mode=self.detect.resize_mode,
                                          mosaic_source=dataset.records if dataset is not None else None)

    def subset(self, dataset: DetectionDataset, indices: list[int]) -> DetectionDataset:
        """A copy of a detection split with only ``records[i]`` for ``i`` in ``indices``; its ``coco`` (the
        evaluation ground truth) keeps only those images and their annotations."""
        part = copy.copy(dataset)
        part.records = [dataset.records[i] for i in indices]
        ids = {r.image_id for r in part.records}
        coco = dict(dataset.coco)
        coco["images"] = [im for im in dataset.coco["images"] if im["id"] in ids]
        coco["annotations"] = [a for a in dataset.coco["annotations"] if a["image_id"] in ids]
        part.coco = coco
        part.transform = None
        return part

    def collate_fn(self, batch: list[tuple[Any, ...]]) -> tuple[Tensor, list[dict[str, Any]], list[str]]:
        return detection_collate(batch)

    def move_targets(self, targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
        """Boxes and labels to ``device``; image ids, sizes and letterbox geometry stay on the host."""
        return [{**t, "boxes": t["boxes"].to(device, non_blocking=True),
                 "labels": t["labels"].to(device, non_blocking=True)} for t in targets]

    # ------------------------------------------------------------------ model and loss

    def resolve_config(self, cfg: ExperimentConfig, train_set: Any, img_size: int
                       ) -> tuple[ExperimentConfig, dict[str, Any]]:
        """``detect.first_level: auto`` and (with ``detect.anchor_fit``) null default-box settings from the train
        boxes (:func:`detkit.engine.anchors.resolve_anchors`); logs the anchor coverage, warns when it is low."""
        choice = resolve_anchors(cfg.model.name, self.num_classes, cfg.detect, train_set.records, img_size)
        if choice is None:  # no SSD default boxes to fit: first_level only means something to ResNet-SSDs
            level = "layer3" if cfg.detect.first_level == "auto" else cfg.detect.first_level
            return dataclasses.replace(cfg, detect=dataclasses.replace(cfg.detect, first_level=level)), {}
        logger.info("%s", choice.describe())
        if choice.coverage < LOW_COVERAGE:
            logger.warning("anchor coverage %.3f is low: %.0f%% of the train boxes match no default box at IoU 0.5; "
                           "try detect.anchor_fit: true, detect.first_level: layer2 or a larger data.img_size",
                           choice.coverage, 100 * (1 - choice.coverage))
        facts = {"anchor_coverage": choice.coverage, "anchor_mean_iou": choice.mean_iou,
                 "anchors_fitted": choice.fitted}
        return dataclasses.replace(cfg, detect=choice.detect), facts

    def build_model(self, name: str, weights: str = "auto", dropout: float = 0.0,
                    img_size: int | None = None) -> nn.Module:
        """``build_detector(name, C, weights, detect)``; ``detkit_meta`` gains ``classes`` and
        ``category_ids`` so a checkpoint alone maps labels back to the dataset's ids (detectors take any
        input size: ``img_size`` is not needed)."""
        if dropout:
            raise ValueError(f"model.dropout: detectors have no dropout option, got {dropout}; set it to 0")
        model = build_detector(name, self.num_classes, weights, self.detect)
        model.detkit_meta = model.detkit_meta.replace(classes=list(self.classes),
                                                      category_ids=list(self.category_ids))
        return model

    def train_step(self, model: nn.Module, images: Tensor, targets: list[dict[str, Any]]
                   ) -> tuple[Tensor, dict[str, Tensor]]:
        """The detector's training losses; ``"loss"`` (the total) is back-propagated, the parts are logged."""
        losses = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = losses["loss"]
        n = images.shape[0]
        with torch.no_grad():
            sums = {name: value.detach().float() * n for name, value in losses.items()}
            sums["count"] = torch.tensor(float(n), device=loss.device)
        return loss, sums

    def summarize_train(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(float(sums.get("count", 0.0)), 1.0)
        return {f"train_{k}": float(v) / count for k, v in sums.items() if k.startswith("loss")}

    # ------------------------------------------------------------------ evaluation

    def new_evaluator(self, dataset: DetectionDataset | None = None) -> DetectionEvaluator:
        """A :class:`DetectionEvaluator` against ``dataset`` (default: the task's ``eval_dataset``)."""
        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("DetectionTask: no evaluation dataset (pass eval_dataset=, or new_evaluator(dataset))")
        if list(dataset.classes) != self.classes or list(dataset.cat_ids) != self.category_ids:
            raise ValueError(f"evaluation dataset has categories {list(zip(dataset.cat_ids, dataset.classes))}, "
                             f"the model {list(zip(self.category_ids, self.classes))}")
        if self._gt_cache is None or self._gt_cache[0] != id(dataset.coco):
            self._gt_cache = (id(dataset.coco), CocoEvaluator(dataset.coco).coco_gt)  # indexed once, reused
        return DetectionEvaluator(self._gt_cache[1], self.classes, self.category_ids,
                                  grid_images=self.detect.grid_images, grid_score=self.detect.grid_score)

    def save_artifacts(self, metrics: dict[str, Any], out_dir: Path, writer: Any | None = None,
                       epoch: int | None = None) -> None:
        """Write ``pr_curves.png`` (every class's precision-recall at IoU 0.5 and their mean), one
        ``pr_curves/<class>.png`` per class, and ``val_predictions.png``."""
        out_dir = Path(out_dir)
        curves, per_class = metrics.get("pr_curves"), metrics.get("val_per_class_ap")
        pngs = []
        if curves is not None and per_class is not None:
            names = list(per_class)
            ap50 = {n: float(per_class[n]["ap50"]) for n in names}
            valid = [v for v in ap50.values() if v > -1]
            cm = CocoMetrics(map50=float(np.mean(valid)) if valid else -1.0, per_class_ap50=ap50,
                             pr_curves={n: curves[i].numpy().astype(np.float64) for i, n in enumerate(names)})
            pngs.append(("val/pr_curves", plot_pr_curves(cm, out_dir / "pr_curves.png")))
            for name in names:
                safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
                plot_pr_curves(cm, out_dir / "pr_curves" / f"{safe}.png", class_name=name)
        grid = metrics.get("prediction_grid")
        if grid is not None:
            pngs.append(("val/predictions", write_image(out_dir / "val_predictions.png", grid.numpy())))
        if writer is not None:
            for tag, png in pngs:
                writer.add_image(tag, read_image(png), global_step=epoch, dataformats="HWC")

    def describe(self, metrics: dict[str, Any]) -> str:
        per_class = metrics.get("val_per_class_ap") or {}
        if not per_class:
            return ""
        return "AP50 per class: " + ", ".join(f"{k} {v['ap50']:.3f}" for k, v in per_class.items())
