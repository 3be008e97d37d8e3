"""Detection evaluation for the validation loop: COCO mAP of a detector's predictions in original pixels.

Also the validation losses where the model gives them, and a grid of ground truth beside predictions.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkit.collectives import all_gather_objects, all_reduce_sum
from detkit.data.det_transforms import unletterbox_boxes
from detkit.data.images import read_image
from detkit.errors import DatasetError
from detkit.eval.coco import CocoEvaluator
from detkit.eval.evaluator import Evaluator
from detkit.models.stages import unwrap_model
from detkit.viz.draw import render_prediction_grid

__all__ = ["COCO_STATS", "DetectionEvaluator"]

logger = logging.getLogger(__name__)

#: the COCOeval summary statistics, in its order, as metric names (``val_`` + name)
COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")  # fmt: skip


class DetectionEvaluator(Evaluator):
    """COCO bbox evaluation of a detector's val predictions, mapped back to original pixels and category ids.

    The model's ``predict_with_losses`` (see :class:`detkit.models.Detector`) gives the detections and, where
    the model computes them in the same pass (single-shot detectors), the validation losses; models without
    it are called for detections only (no ``val_loss``).

    Args:
        coco_gt: ground truth (a pycocotools ``COCO``, or a COCO dict such as ``DetectionDataset.coco``).
        classes: class names in label order.
        category_ids: category id of each label.
        grid_images: images (first seen) kept for the predictions-vs-ground-truth grid.
        grid_score: score from which a prediction is drawn in the grid.
    """

    def __init__(self, coco_gt: Any, classes: list[str], category_ids: list[int], grid_images: int = 8,
                 grid_score: float = 0.3) -> None:
        self.coco = CocoEvaluator(coco_gt)
        self.classes = list(classes)
        self.category_ids = torch.tensor(category_ids, dtype=torch.int64)
        self.grid_images = grid_images
        self.grid_score = grid_score
        self.loss_sums: dict[str, float] = {}
        self.loss_count = 0
        self.samples: list[dict[str, Any]] = []  # for the grid: path, image id, predictions in original pixels

    def update(self, model: nn.Module, images: Tensor, targets: list[dict[str, Any]], paths: list[str]) -> None:
        inner = unwrap_model(model)
        gt = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        predict = getattr(inner, "predict_with_losses", None)
        detections, losses = predict(images, gt) if predict is not None else (model(images), {})
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + float(value) * images.shape[0]
        if losses:
            self.loss_count += images.shape[0]
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
        out: dict[str, Any] = {f"val_{name}": float(getattr(m, name)) for name in COCO_STATS}
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

    def _render_grid(self) -> np.ndarray:
        """``ground truth | predictions`` tiles of the kept images (unreadable ones are left out)."""
        label_of = {int(c): i for i, c in enumerate(self.category_ids.tolist())}
        gt = self.coco.coco_gt
        samples = []
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
            samples.append({**s, "image": image, "gt_boxes": gt_boxes, "gt_labels": gt_labels})
        return render_prediction_grid(samples, self.classes)
