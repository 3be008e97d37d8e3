"""The evaluator contract of the validation loop: accumulate a model's results batch by batch, combine ranks, compute.

Each task has one (classification: accuracy and the confusion matrix; detection: COCO mAP).
"""

from __future__ import annotations

import abc
from typing import Any

from torch import Tensor, nn

__all__ = ["Evaluator"]


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
