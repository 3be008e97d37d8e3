"""Task objects: what the one trainer needs to know about a kind of problem (classification now, detection later).

A task loads datasets, builds its model, computes a batch's loss, evaluates, and names the metric for ``best.pt``.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate

__all__ = ["ClassificationEvaluator", "ClassificationTask", "Evaluator", "Task"]

logger = logging.getLogger(__name__)

Batch = tuple[Tensor, Any, list[str]]


class Evaluator(abc.ABC):
    """Accumulates a model's results over validation batches (possibly on several ranks)."""

    @abc.abstractmethod
    def update(self, model: nn.Module, images: Tensor, targets: Any, paths: list[str]) -> None:
        """Run ``model`` (already in eval mode, under ``no_grad``) on one batch and accumulate."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Combine the accumulated state of every rank (a no-op in a single process)."""

    @abc.abstractmethod
    def compute(self) -> dict[str, Any]:
        """Metrics with ``val_``-prefixed names: plain numbers, plus richer values (tensors, dicts)."""


class Task(abc.ABC):
    """The task-specific half of training; :class:`detkit.engine.Trainer` is the generic half.

    Attributes:
        name: the config's ``task`` value.
        best_metric: the validation metric that selects ``best.pt`` (e.g. ``val_acc``, ``val_map``).
        best_mode: ``"max"`` or ``"min"``.
    """

    name: str
    best_metric: str
    best_mode: str

    @staticmethod
    @abc.abstractmethod
    def load_split(data_cfg: Any, split: str, classes: list[str] | None = None) -> Any:
        """The dataset of one split under ``data_cfg.root``, without transforms.

        It has ``classes`` (list[str]; ``classes`` given: the same list, e.g. train's for val),
        ``skipped`` (list of ``(path, reason)`` for unreadable files) and a settable ``transform``.
        """

    @abc.abstractmethod
    def build_transform(self, data_cfg: Any, img_size: int, normalization: dict[str, Any], train: bool) -> Any:
        """The train or eval transform for this task's datasets (set as ``dataset.transform``).

        ``normalization`` holds ``mean`` and ``std`` (3 floats each, [0, 1] units).
        """

    @abc.abstractmethod
    def build_model(self, name: str, weights: str = "auto", dropout: float = 0.0) -> nn.Module:
        """The task's model for architecture ``name`` with a head sized for the task's classes."""

    def collate_fn(self, batch: list[tuple[Any, ...]]) -> Batch:
        """Stack dataset samples into ``(images Tensor[B, 3, H, W], targets, paths list[str])``."""
        return default_collate(batch)

    def move_batch(self, batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
        """Copy a batch to ``device`` (non-blocking from pinned memory); paths stay on the host."""
        images, targets, paths = batch
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, self.move_targets(targets, device), list(paths)

    def move_targets(self, targets: Any, device: torch.device) -> Any:
        """Copy a batch's targets to ``device``: every tensor in them (tasks override to keep some on the host)."""
        return _to_device(targets, device)

    @abc.abstractmethod
    def train_step(self, model: nn.Module, images: Tensor, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward one batch in training mode.

        Returns:
            ``(loss, sums)``: the scalar loss to back-propagate (mean over the batch) and detached
            per-batch sums (e.g. ``{"loss": loss * B, "correct": k, "count": B}``) that
            :meth:`summarize_train` turns into epoch metrics after summing over batches and ranks.
        """

    @abc.abstractmethod
    def summarize_train(self, sums: dict[str, float]) -> dict[str, float]:
        """Epoch training metrics (``train_``-prefixed) from the summed ``sums`` of :meth:`train_step`."""

    @abc.abstractmethod
    def new_evaluator(self, dataset: Any = None) -> Evaluator:
        """A fresh :class:`Evaluator` for one validation pass over ``dataset`` (the loader's dataset)."""

    def save_artifacts(self, metrics: dict[str, Any], out_dir: Path, writer: Any | None = None,
                       epoch: int | None = None) -> None:
        """Write the non-scalar results of an evaluation (plots, tensors) to ``out_dir`` and TensorBoard."""

    def describe(self, metrics: dict[str, Any]) -> str:
        """One log line about an evaluation's non-scalar results ('' when there is nothing to add)."""
        return ""


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class ClassificationTask(Task):
    """Image classification with a cross-entropy loss; ``best.pt`` maximises top-1 validation accuracy.

    Args:
        classes: class names; logit ``i`` scores ``classes[i]``.
        label_smoothing: label smoothing of the training loss (validation loss uses none).
    """

    name = "classify"
    best_metric = "val_acc"
    best_mode = "max"

    def __init__(self, classes: list[str], label_smoothing: float = 0.0) -> None:
        if len(classes) < 2:
            raise ValueError(f"classes: a classifier needs at least 2 classes, got {list(classes)}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")
        self.classes = list(classes)
        self.num_classes = len(classes)
        self.label_smoothing = label_smoothing

    @staticmethod
    def load_split(data_cfg: Any, split: str, classes: list[str] | None = None) -> Any:
        """``ImageFolderDataset`` of ``data_cfg.root/<split>/<class>/*`` (upfront scan per ``data_cfg.scan``)."""
        from detkit.data.classification import ImageFolderDataset

        return ImageFolderDataset(data_cfg.root, split=split, classes=classes, scan=data_cfg.scan,
                                  scan_workers=data_cfg.scan_workers)

    def build_transform(self, data_cfg: Any, img_size: int, normalization: dict[str, Any], train: bool) -> Any:
        """albumentations pipeline giving ``Tensor[3, img_size, img_size]`` float32, normalised."""
        from detkit.data.transforms import build_classification_transforms

        return build_classification_transforms(train=train, img_size=img_size, mean=normalization["mean"],
                                               std=normalization["std"], aug=data_cfg.augment)

    def build_model(self, name: str, weights: str = "auto", dropout: float = 0.0) -> nn.Module:
        from detkit.models import create_classifier

        return create_classifier(name, self.num_classes, weights=weights, dropout=dropout)

    def train_step(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(images)  # (B, C)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            sums = {
                "loss": loss.detach() * targets.numel(),
                "correct": (logits.argmax(dim=1) == targets).sum(),
                "count": torch.tensor(targets.numel(), device=targets.device),
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
        from detkit.engine.checkpoint import atomic_save
        from detkit.viz import plot_confusion_matrix

        cm = metrics.get("confusion_matrix")
        if cm is None:
            return
        out_dir = Path(out_dir)
        atomic_save(cm.cpu(), out_dir / "confusion_matrix.pt")
        png = out_dir / "confusion_matrix.png"
        plot_confusion_matrix(cm.cpu(), self.classes, path=png)
        if writer is not None:
            # re-reading the PNG is far cheaper than having matplotlib draw the figure a second time
            from detkit.data.images import read_image

            writer.add_image("val/confusion_matrix", read_image(png), global_step=epoch, dataformats="HWC")

    def describe(self, metrics: dict[str, Any]) -> str:
        pairs = metrics.get("most_confused") or []
        if not pairs:
            return ""
        return "most confused (true -> predicted: count): " + ", ".join(f"{t} -> {p}: {n}" for t, p, n in pairs)


class ClassificationEvaluator(Evaluator):
    """Validation loss, top-1/top-5 accuracy, per-class precision/recall and the confusion matrix.

    Counts live in a :class:`detkit.eval.classification.ClassificationMeter`, which sums across ranks.
    """

    def __init__(self, classes: list[str]) -> None:
        from detkit.eval.classification import ClassificationMeter

        self.classes = list(classes)
        self.meter = ClassificationMeter(len(classes))

    def update(self, model: nn.Module, images: Tensor, targets: Tensor, paths: list[str]) -> None:
        logits = model(images).float()  # (B, C)
        self.meter.update(logits, targets, loss=F.cross_entropy(logits, targets))

    def synchronize(self) -> None:
        self.meter.all_reduce()

    def compute(self) -> dict[str, Any]:
        from detkit.eval.classification import most_confused

        result = self.meter.compute()
        cm = result["confusion_matrix"]
        return {
            "val_loss": float(result["loss"]) if result["loss"] is not None else float("nan"),
            "val_acc": float(result["acc1"]),
            "val_acc5": float(result["acc5"]),
            "val_mean_recall": float(result["mean_recall"]),
            "val_count": int(result["n"]),
            "val_per_class": {name: {"precision": float(p), "recall": float(r)}
                              for name, p, r in zip(self.classes, result["precision"], result["recall"])},
            "most_confused": [list(t) for t in most_confused(cm, self.classes, k=5)],
            "confusion_matrix": cm,
        }
