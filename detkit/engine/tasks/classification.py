"""The classification task: class-folder or path,label-list splits, classifiers from ``create_classifier``,
cross-entropy (optionally class-weighted, on mixup/cutmix soft labels), accuracy.

``best.pt`` maximises top-1 validation accuracy; the confusion matrix is written beside it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.config.sections import ExperimentConfig
from detkit.data.classification import ImageFolderDataset, ImageListDataset
from detkit.data.layouts import find_classification_split
from detkit.data.images import read_image
from detkit.data.sampling import class_counts, class_weights, image_labels
from detkit.data.transforms import BatchMix, build_batch_mix, build_classification_transforms
from detkit.engine.checkpoint import atomic_save
from detkit.engine.tasks.base import Task, register_task
from detkit.eval.classification import ClassificationEvaluator
from detkit.models.classifier import create_classifier
from detkit.viz.confusion import plot_confusion_matrix

__all__ = ["ClassificationTask"]


@register_task("classify")
class ClassificationTask(Task):
    """Image classification with a cross-entropy loss; ``best.pt`` maximises top-1 validation accuracy.

    Args:
        classes: class names; logit ``i`` scores ``classes[i]``.
        label_smoothing: label smoothing of the training loss (validation loss uses none).
        class_weights: ``Tensor[C]`` weights of the training loss per class (None: all 1).
        mix: mixes each training batch into soft labels (:class:`~detkit.data.transforms.BatchMix`), or None.
    """

    best_metric = "val_acc"
    best_mode = "max"

    def __init__(self, classes: list[str], label_smoothing: float = 0.0, class_weights: Tensor | None = None,
                 mix: BatchMix | None = None) -> None:
        if len(classes) < 2:
            raise ValueError(f"classes: a classifier needs at least 2 classes, got {list(classes)}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")
        if class_weights is not None and tuple(class_weights.shape) != (len(classes),):
            raise ValueError(f"class_weights: expected Tensor[{len(classes)}], got shape {list(class_weights.shape)}")
        self.classes = list(classes)
        self.num_classes = len(classes)
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.mix = mix

    @staticmethod
    def load_split(data_cfg: Any, split: str, classes: list[str] | None = None) -> Any:
        """The split's dataset: ``ImageFolderDataset`` of its class folders, or ``ImageListDataset`` of its
        ``path,label`` list, as :func:`detkit.data.layouts.find_classification_split` finds them (upfront scan
        per ``data_cfg.scan``)."""
        found = find_classification_split(data_cfg, split)
        if found.list_file is not None:
            return ImageListDataset(found.list_file, found.images_dir, classes=classes, scan=data_cfg.scan,
                                    scan_workers=data_cfg.scan_workers, split=found.split)
        return ImageFolderDataset(found.folder.parent, split=found.folder.name, classes=classes, scan=data_cfg.scan,
                                  scan_workers=data_cfg.scan_workers)

    def build_transform(self, data_cfg: Any, img_size: int, normalization: dict[str, Any], train: bool,
                        dataset: Any = None) -> Any:
        """albumentations pipeline giving ``Tensor[3, img_size, img_size]`` float32, normalised."""
        return build_classification_transforms(train=train, img_size=img_size, mean=normalization["mean"],
                                               std=normalization["std"], aug=data_cfg.augment)

    def subset(self, dataset: ImageFolderDataset, indices: list[int]) -> ImageFolderDataset:
        """A copy of an ``ImageFolderDataset`` with only ``samples[i]`` for ``i`` in ``indices``."""
        part = copy.copy(dataset)
        part.samples = [dataset.samples[i] for i in indices]
        part.targets = [label for _, label in part.samples]
        part.transform = None
        return part

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, classes: list[str], *, train_set: Any = None,
                    **splits: Any) -> ClassificationTask:
        """The task for ``cfg`` over ``classes``: ``train.label_smoothing``, ``train.class_weights`` (``auto``:
        inverse class frequency of ``train_set``) and the batch mixing of ``data.augment``."""
        weights = None
        if cfg.train.class_weights == "auto":
            if train_set is None:
                raise ValueError("train.class_weights: auto needs the train set to count its classes")
            weights = class_weights(class_counts(image_labels(train_set), len(classes)))
        return cls(classes, label_smoothing=cfg.train.label_smoothing, class_weights=weights,
                   mix=build_batch_mix(cfg.data.augment, len(classes)))

    def build_model(self, name: str, weights: str = "auto", dropout: float = 0.0,
                    img_size: int | None = None) -> nn.Module:
        """``create_classifier(name, C, weights, dropout, img_size)``."""
        return create_classifier(name, self.num_classes, weights=weights, dropout=dropout, img_size=img_size)

    def train_step(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of a batch (class-weighted when set; on soft labels when the batch is mixed); accuracy
        counts the dominant label of a mixed image."""
        hard = targets
        if self.mix is not None:
            images, soft = self.mix(images, targets)  # soft: (B, C), rows sum to 1
            hard, targets = soft.argmax(dim=1), soft
        logits = model(images)  # (B, C)
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        loss = F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            sums = {
                "loss": loss.detach() * hard.numel(),
                "correct": (logits.argmax(dim=1) == hard).sum(),
                "count": torch.tensor(hard.numel(), device=hard.device),
            }
        return loss, sums

    def summarize_train(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(float(sums.get("count", 0.0)), 1.0)
        return {"train_loss": float(sums["loss"]) / count, "train_acc": float(sums["correct"]) / count}

    def new_evaluator(self, dataset: Any = None) -> ClassificationEvaluator:
        return ClassificationEvaluator(self.classes)

    def save_artifacts(self, metrics: dict[str, Any], out_dir: Path, writer: Any | None = None,
                       epoch: int | None = None) -> None:
        """Write ``confusion_matrix.pt`` (Tensor[C, C] int64, rows true, cols predicted) and its PNG."""
        cm = metrics.get("confusion_matrix")
        if cm is None:
            return
        out_dir = Path(out_dir)
        atomic_save(cm.cpu(), out_dir / "confusion_matrix.pt")
        png = out_dir / "confusion_matrix.png"
        plot_confusion_matrix(cm.cpu(), self.classes, path=png)
        if writer is not None:
            # re-reading the PNG is far cheaper than having matplotlib draw the figure a second time
            writer.add_image("val/confusion_matrix", read_image(png), global_step=epoch, dataformats="HWC")

    def describe(self, metrics: dict[str, Any]) -> str:
        pairs = metrics.get("most_confused") or []
        if not pairs:
            return ""
        return "most confused (true -> predicted: count): " + ", ".join(f"{t} -> {p}: {n}" for t, p, n in pairs)
