"""The task contract: what the one trainer needs to know about a kind of problem, and the registry of tasks.

A task loads datasets, builds its model, computes a batch's loss, evaluates, and names the metric for ``best.pt``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from detkit.config.sections import TASKS, ExperimentConfig
from detkit.eval.evaluator import Evaluator

__all__ = ["Batch", "Task", "get_task", "list_tasks", "register_task"]

Batch = tuple[Tensor, Any, list[str]]

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator registering a :class:`Task` under ``name`` (one of :data:`detkit.config.TASKS`)."""

    def decorator(cls: type[Task]) -> type[Task]:
        if name not in TASKS:
            raise ValueError(f"task {name!r} is not one of detkit.config.TASKS {TASKS}; add it there first")
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorator


def get_task(name: str) -> type[Task]:
    """The :class:`Task` class registered for a config's ``task`` value."""
    if name not in _TASKS:
        raise ValueError(f"task: expected one of {', '.join(sorted(_TASKS))}, got {name!r}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    """The registered task names."""
    return sorted(_TASKS)


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
    def build_transform(self, data_cfg: Any, img_size: int, normalization: dict[str, Any], train: bool,
                        dataset: Any = None) -> Any:
        """The train or eval transform for this task's datasets (set as ``dataset.transform``).

        ``normalization`` holds ``mean`` and ``std`` (3 floats each, [0, 1] units); ``dataset`` is the split the
        transform is for (augmentations that mix samples, such as mosaic, draw partners from it).
        """

    @abc.abstractmethod
    def subset(self, dataset: Any, indices: list[int]) -> Any:
        """A copy of a split holding only the samples at ``indices`` (K-fold cross-validation), with its own
        ``transform``; evaluation ground truth is restricted to those samples too."""

    @abc.abstractmethod
    def build_model(self, name: str, weights: str = "auto", dropout: float = 0.0,
                    img_size: int | None = None) -> nn.Module:
        """The task's model for architecture ``name`` with a head sized for the task's classes
        (``img_size``: the training input side, for models built for one fixed size)."""

    def resolve_config(self, cfg: ExperimentConfig, train_set: Any, img_size: int
                       ) -> tuple[ExperimentConfig, dict[str, Any]]:
        """Fill the config keys the train set decides (detection: the first level and default boxes from the
        boxes) before the model is built; returns ``(config, facts for the run summary)``. Default: nothing."""
        return cfg, {}

    def collate_fn(self, batch: list[tuple[Any, ...]]) -> Batch:
        """Stack dataset samples into ``(images Tensor[B, 3, H, W], targets, paths list[str])``."""
        return default_collate(batch)

    def move_batch(self, batch: Batch | tuple[Tensor, Any], device: torch.device, channels_last: bool = False
                   ) -> Batch:
        """Copy a batch to ``device`` (non-blocking from pinned memory); paths stay on the host.

        ``batch`` is ``(images, targets, paths)`` as detkit's datasets give it, or the standard ``(images,
        targets)`` of torchvision datasets and ``TensorDataset`` (then no file names are known).
        """
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError(f"a batch must be (images, targets) or (images, targets, paths), got "
                             f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
        images, targets, paths = batch if len(batch) == 3 else (*batch, [])
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

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: ExperimentConfig, classes: list[str], *, train_set: Any = None, val_set: Any = None,
                    category_ids: list[int] | None = None) -> Task:
        """The task for an experiment config over ``classes`` (the splits and a checkpoint's category ids,
        where the task needs them)."""

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
