"""The detection task for the one trainer: detectors from ``create_detector``, their losses, COCO evaluation and plots.

Also ``DetectConfig`` (the ``detect:`` section of a recipe) and ``DetectionSplit``, the dataset a split loads into.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkit.data.det_transforms import DetectionAugment, build_detection_transforms, unletterbox_boxes
from detkit.data.detection import DetectionDataset, detection_collate
from detkit.engine.distributed import all_gather_objects, all_reduce_sum, unwrap_model
from detkit.engine.tasks import Evaluator, Task
from detkit.models.ssd import FIRST_LEVELS, RESNET_SSD_ARCHS

__all__ = ["DetectConfig", "DetectionEvaluator", "DetectionSplit", "DetectionTask", "detector_kwargs"]

logger = logging.getLogger(__name__)

_COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
               "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")  # fmt: skip


@dataclass
class DetectConfig:
    score_thresh: float = 0.01  # evaluation: per-class score below which detections are dropped (keep low for mAP)
    nms_thresh: float = 0.45  # IoU above which class-aware NMS suppresses the lower-scoring box
    max_det: int = 100  # detections kept per image (COCO evaluates at most 100)
    topk_candidates: int = 400  # candidates kept per image and class before NMS (SSDs, RetinaNet)
    resize_mode: str = "letterbox"  # eval and inference geometry: letterbox (keep aspect, pad) or resize (stretch)
    cls_loss: str = "ce"  # SSD classification loss: ce (softmax, 3:1 hard-negative mining) or focal (sigmoid)
    box_loss: str = "smooth_l1"  # SSD box loss on positives: smooth_l1 (on encoded offsets) or giou
    neg_pos_ratio: float = 3.0  # SSD hard negatives per positive (cls_loss ce)
    box_weight: float = 1.0  # SSD factor of the box loss in the total loss
    first_level: str = "layer3"  # ResNet-SSD's finest level: layer3 (stride 16) or layer2 (stride 8, small objects)
    grid_images: int = 8  # val images in val_predictions.png (predictions beside ground truth; 0: no grid)
    grid_score: float = 0.3  # score from which a prediction is drawn in the grid
    augment: DetectionAugment = field(default_factory=DetectionAugment)  # train-time box-aware augmentation

    def __post_init__(self) -> None:
        if self.resize_mode not in ("letterbox", "resize"):
            raise ValueError(f"detect.resize_mode: expected letterbox or resize, got {self.resize_mode!r}")
        for name in ("score_thresh", "grid_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"detect.{name}: expected a value in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ValueError(f"detect.nms_thresh: expected a value in (0, 1], got {self.nms_thresh}")
        for name in ("max_det", "topk_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"detect.{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.first_level not in FIRST_LEVELS:
            raise ValueError(f"detect.first_level: expected one of {FIRST_LEVELS}, got {self.first_level!r}")
        if self.grid_images < 0:
            raise ValueError(f"detect.grid_images: expected >= 0, got {self.grid_images}")


def detector_kwargs(name: str, detect: dict[str, Any]) -> dict[str, Any]:
    """Architecture keyword arguments of ``create_detector(name, ...)`` from a ``detect`` config section.

    One mapping for training and for rebuilding a model from a checkpoint's config: loss choices change an
    SSD's head, ``first_level`` a ResNet-SSD's levels; torchvision detectors take none of them.

    Args:
        name: detector name (:func:`detkit.models.list_detectors`).
        detect: the ``detect`` section as a dict (keys missing from an older checkpoint keep the defaults).
    """
    if name.startswith("torchvision:"):
        return {}
    kwargs = {k: detect[k] for k in ("cls_loss", "box_loss", "neg_pos_ratio", "box_weight") if k in detect}
    first_level = detect.get("first_level", "layer3")
    if name.removesuffix("_ssd") in RESNET_SSD_ARCHS:
        kwargs["first_level"] = first_level
    elif first_level != "layer3":
        raise ValueError(f"detect.first_level: only ResNet-SSDs have a layer2 level, not {name}; leave it at layer3")
    return kwargs


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


def _split_annotations(root: Path, split: str) -> tuple[Path, Path | None]:
    """Image folder and annotation file of a split: ``ROOT/<split>/annotations.json``, else the COCO 2017
    layout ``ROOT/annotations/instances_<split>.json`` with images in ``ROOT/<split>/``."""
    images = root / split
    if (images / "annotations.json").is_file():
        return images, None
    coco2017 = root / "annotations" / f"instances_{split}.json"
    if coco2017.is_file():
        return images, coco2017
    raise FileNotFoundError(f"data.root: no annotations for split {split!r}: expected {images / 'annotations.json'} "
                            f"or {coco2017}")


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

    name = "detect"
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
    def from_config(cls, cfg: Any, classes: list[str], train_set: DetectionDataset | None = None,
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
        """``DetectionSplit`` of ``data_cfg.root/<split>/`` (COCO ``annotations.json``; or the COCO 2017 layout).

        With ``classes`` given (train's, for val), the split's categories must have the same names in the
        same order, so labels mean the same thing in both.
        """
        images, annotation_file = _split_annotations(Path(data_cfg.root), split)
        dataset = DetectionSplit(images, annotation_file=annotation_file, validate=data_cfg.scan,
                                 scan_workers=data_cfg.scan_workers)
        if classes is not None and list(classes) != dataset.classes:
            raise ValueError(f"data.root: split {split!r} has categories {dataset.classes}, but training uses "
                             f"{list(classes)}; both splits need the same categories")
        return dataset

    def build_transform(self, data_cfg: Any, img_size: int, normalization: dict[str, Any], train: bool) -> Any:
        """Box-aware albumentations pipeline (train) or exact letterbox/resize (eval) to ``img_size`` squares."""
        return build_detection_transforms(train=train, img_size=img_size, mean=normalization["mean"],
                                          std=normalization["std"], aug=self.detect.augment,
                                          resize_mode=self.detect.resize_mode)

    def collate_fn(self, batch: list[tuple[Any, ...]]) -> tuple[Tensor, list[dict[str, Any]], list[str]]:
        return detection_collate(batch)

    def move_targets(self, targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
        """Boxes and labels to ``device``; image ids, sizes and letterbox geometry stay on the host."""
        return [{**t, "boxes": t["boxes"].to(device, non_blocking=True),
                 "labels": t["labels"].to(device, non_blocking=True)} for t in targets]

    # ------------------------------------------------------------------ model and loss

    def build_model(self, name: str, weights: str = "auto", dropout: float = 0.0) -> nn.Module:
        """``create_detector(name, C, weights, ...)`` with the ``detect`` thresholds; ``detkit_meta`` gains
        ``classes`` and ``category_ids`` so a checkpoint alone maps labels back to the dataset's ids."""
        from detkit.models import create_detector

        if dropout:
            raise ValueError(f"model.dropout: detectors have no dropout option, got {dropout}; set it to 0")
        d = self.detect
        model = create_detector(name, self.num_classes, weights=weights, **detector_kwargs(name, vars(d)))
        model.score_thresh = d.score_thresh
        model.nms_thresh = d.nms_thresh
        model.detections_per_img = d.max_det
        model.topk_candidates = d.topk_candidates
        model.detkit_meta = {**model.detkit_meta, "classes": list(self.classes),
                             "category_ids": list(self.category_ids)}
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
            from detkit.eval.coco import CocoEvaluator

            self._gt_cache = (id(dataset.coco), CocoEvaluator(dataset.coco).coco_gt)  # indexed once, reused
        return DetectionEvaluator(self._gt_cache[1], self.classes, self.category_ids,
                                  grid_images=self.detect.grid_images, grid_score=self.detect.grid_score)

    def save_artifacts(self, metrics: dict[str, Any], out_dir: Path, writer: Any | None = None,
                       epoch: int | None = None) -> None:
        """Write ``pr_curves.png`` (every class's precision-recall at IoU 0.5 and their mean), one
        ``pr_curves/<class>.png`` per class, and ``val_predictions.png``."""
        from detkit.data.images import read_image, write_image
        from detkit.eval.coco import CocoMetrics, plot_pr_curves

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


class DetectionEvaluator(Evaluator):
    """COCO bbox evaluation of a detector's val predictions, mapped back to original pixels and category ids.

    Single-shot detectors (``SingleShotDetector``) are run once per batch for both the validation losses and
    the detections; other detectors give detections only (no ``val_loss``).

    Args:
        coco_gt: ground truth (a pycocotools ``COCO``, or a COCO dict such as ``DetectionDataset.coco``).
        classes: class names in label order.
        category_ids: category id of each label.
        grid_images: images (first seen) kept for the predictions-vs-ground-truth grid.
        grid_score: score from which a prediction is drawn in the grid.
    """

    def __init__(self, coco_gt: Any, classes: list[str], category_ids: list[int], grid_images: int = 8,
                 grid_score: float = 0.3) -> None:
        from detkit.eval.coco import CocoEvaluator

        self.coco = CocoEvaluator(coco_gt)
        self.classes = list(classes)
        self.category_ids = torch.tensor(category_ids, dtype=torch.int64)
        self.grid_images = grid_images
        self.grid_score = grid_score
        self.loss_sums: dict[str, float] = {}
        self.loss_count = 0
        self.samples: list[dict[str, Any]] = []  # for the grid: path, image id, predictions in original pixels

    def update(self, model: nn.Module, images: Tensor, targets: list[dict[str, Any]], paths: list[str]) -> None:
        from detkit.models import SingleShotDetector

        inner = unwrap_model(model)
        if isinstance(inner, SingleShotDetector):
            logits, regression, anchors = inner.head_outputs(images)
            losses = inner.loss_fn(logits, regression, anchors,
                                   [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
            for name, value in losses.items():
                self.loss_sums[name] = self.loss_sums.get(name, 0.0) + float(value) * images.shape[0]
            self.loss_count += images.shape[0]
            detections = inner.postprocess(logits, regression, anchors, (int(images.shape[-2]), int(images.shape[-1])))
        else:
            detections = model(images)
        for det, target, path in zip(detections, targets, paths):
            if "letterbox" not in target:
                raise ValueError(f"target of {path} has no 'letterbox' geometry: evaluate with the eval transform "
                                 "(build_detection_transforms(train=False, ...))")
            boxes = unletterbox_boxes(det["boxes"].detach().float().cpu(), target["letterbox"],
                                      clip_hw=target["orig_size"])
            scores = det["scores"].detach().float().cpu()
            labels = det["labels"].detach().cpu().long()
            self.coco.add(int(target["image_id"]), boxes, scores, self.category_ids[labels])
            if len(self.samples) < self.grid_images:
                keep = scores >= self.grid_score
                self.samples.append({"path": path, "image_id": int(target["image_id"]), "boxes": boxes[keep].numpy(),
                                     "scores": scores[keep].numpy(), "labels": labels[keep].numpy()})

    def synchronize(self) -> None:
        """Gather every rank's predictions and sum the losses (no-op in a single process)."""
        gathered = all_gather_objects(self.coco.results)
        if len(gathered) > 1:
            self.coco.results = [r for part in gathered for r in part]
            names = sorted(self.loss_sums)
            totals = all_reduce_sum(torch.tensor([self.loss_sums[k] for k in names] + [float(self.loss_count)],
                                                 dtype=torch.float64))
            self.loss_sums = dict(zip(names, totals[:-1].tolist()))
            self.loss_count = int(totals[-1])

    def compute(self) -> dict[str, Any]:
        """``val_map``, ``val_map50``, ``val_map75``, the other COCO stats, ``val_loss*`` (single-shot detectors),
        ``val_per_class_ap`` ({name: {"ap", "ap50"}}), ``pr_curves`` (``Tensor[C, 101]`` precision at recall
        0..1, IoU 0.5, -1 without ground truth) and ``prediction_grid`` (``Tensor[H, W, 3]`` uint8 RGB)."""
        m = self.coco.compute()
        out: dict[str, Any] = {f"val_{name}": float(getattr(m, name)) for name in _COCO_STATS}
        out["val_images"] = m.num_images
        out["val_detections"] = m.num_predictions
        if self.loss_count:
            out.update({f"val_{k}": v / self.loss_count for k, v in self.loss_sums.items()})
        names = self.coco.class_names
        out["val_per_class_ap"] = {n: {"ap": m.per_class_ap[n], "ap50": m.per_class_ap50[n]} for n in names}
        out["pr_curves"] = torch.from_numpy(np.stack([m.pr_curves[n] for n in names]))
        if self.samples:
            out["prediction_grid"] = torch.from_numpy(self._render_grid())
        return out

    def _render_grid(self, tile_height: int = 224, columns: int = 2) -> np.ndarray:
        """Tiles of ``ground truth | predictions`` per kept image, ``columns`` tiles per row, RGB uint8."""
        import cv2

        from detkit.data.images import DatasetError, read_image
        from detkit.engine.predict import draw_detections

        label_of = {int(c): i for i, c in enumerate(self.category_ids.tolist())}
        gt = self.coco.coco_gt
        tiles = []
        for s in self.samples:
            try:
                image = read_image(s["path"])
            except DatasetError as err:
                logger.warning("prediction grid: %s", err)
                continue
            anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[s["image_id"]])) if not a.get("iscrowd", 0)]
            gt_boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                 for a in anns], dtype=np.float64).reshape(-1, 4)
            gt_labels = np.array([label_of[int(a["category_id"])] for a in anns], dtype=np.int64)
            left = draw_detections(image, gt_boxes, gt_labels, self.classes, color=(0, 200, 0))
            right = draw_detections(image, s["boxes"], s["labels"], self.classes, s["scores"])
            pair = np.concatenate([left, np.full((image.shape[0], 4, 3), 255, np.uint8), right], axis=1)
            width = max(1, round(pair.shape[1] * tile_height / pair.shape[0]))
            tiles.append(cv2.resize(pair, (width, tile_height), interpolation=cv2.INTER_AREA))
        if not tiles:
            return np.full((tile_height, tile_height, 3), 255, np.uint8)
        tile_w = max(t.shape[1] for t in tiles) + 12  # a white gap after every tile
        tiles = [np.pad(t, ((0, 12), (0, tile_w - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
        rows = []
        for start in range(0, len(tiles), columns):
            row = tiles[start:start + columns]
            row += [np.full_like(tiles[0], 255)] * (columns - len(row))
            rows.append(np.concatenate(row, axis=1))
        return np.ascontiguousarray(np.concatenate(rows, axis=0))
