"""Class imbalance: per-class counts of a split, inverse-frequency class weights, and a class-balanced sampler.

Counts come from the labels a dataset already holds (ImageFolder ``samples``, detection ``records``): nothing is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["BalancedSampler", "balanced_sample_weights", "class_counts", "class_weights", "image_labels"]


def image_labels(dataset: Any) -> list[list[int]]:
    """The labels of every sample of ``dataset``: one per image (classification) or one per box (detection).

    Reads ``samples`` (``(path, label)`` pairs, :class:`~detkit.data.classification.ImageFolderDataset`) or
    ``records`` (with ``labels`` arrays, :class:`~detkit.data.detection.DetectionDataset`).

    Raises:
        TypeError: when the dataset has neither.
    """
    if hasattr(dataset, "records"):
        return [[int(v) for v in np.asarray(r.labels).reshape(-1)] for r in dataset.records]
    if hasattr(dataset, "samples"):
        return [[int(label)] for _, label in dataset.samples]
    raise TypeError(f"dataset: expected samples or records with labels, got {type(dataset).__name__}")


def class_counts(labels: Sequence[Sequence[int]], num_classes: int) -> list[int]:
    """How often each class ``0..num_classes-1`` occurs in ``labels`` (per image or per box)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for sample in labels:
        for label in sample:
            if not 0 <= label < num_classes:
                raise ValueError(f"labels: expected classes in [0, {num_classes}), got {label}")
            counts[label] += 1
    return counts.tolist()


def class_weights(counts: Sequence[int]) -> Tensor:
    """Inverse-frequency loss weights ``N / (C * n_c)``: they average 1 over the samples (each class then weighs
    ``N / C`` in total), and are all 1 when the classes are balanced.

    Args:
        counts: samples per class (``C`` values, each >= 1).

    Returns:
        ``Tensor[C]`` float32.

    Raises:
        ValueError: for an empty list or a class without samples (its weight would be infinite).
    """
    counts_t = torch.as_tensor(list(counts), dtype=torch.float64)
    if counts_t.numel() == 0 or bool((counts_t <= 0).any()):
        raise ValueError(f"counts: every class needs at least one sample for inverse-frequency weights, got "
                         f"{list(counts)}")
    weights = counts_t.sum() / (counts_t.numel() * counts_t)
    return weights.float()


def balanced_sample_weights(labels: Sequence[Sequence[int]], num_classes: int) -> Tensor:
    """Drawing weight of each sample so that every class is drawn about equally often.

    A sample weighs ``1 / n_c`` of its rarest class (an image without labels: that of the rarest class), so with
    one label per image each class gets the same total weight.

    Returns:
        ``Tensor[N]`` float64, summing to 1.
    """
    counts = np.maximum(np.asarray(class_counts(labels, num_classes), dtype=np.float64), 1.0)
    rarest = 1.0 / counts.min()
    weights = torch.tensor([max((1.0 / counts[c] for c in sample), default=rarest) for sample in labels],
                           dtype=torch.float64)
    return weights / weights.sum()


class BalancedSampler(Sampler[int]):
    """Draws ``num_samples`` indices with replacement by ``weights``, reproducibly per seed, epoch and rank.

    Args:
        weights: ``Tensor[N]`` non-negative drawing weights (e.g. :func:`balanced_sample_weights`).
        num_samples: indices per epoch (per rank).
        seed: base seed; :meth:`set_epoch` (called by the trainer) changes the draw every epoch.
        rank: this process's rank, so DDP ranks draw different samples.
    """

    def __init__(self, weights: Tensor, num_samples: int, seed: int = 0, rank: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.dim() != 1 or bool((self.weights < 0).any()) or float(self.weights.sum()) <= 0:
            raise ValueError("weights: expected a Tensor[N] of non-negative values with a positive sum")
        self.num_samples, self.seed, self.rank, self.epoch = int(num_samples), int(seed), int(rank), 0

    def set_epoch(self, epoch: int) -> None:
        """Use the draw of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed((self.seed * 1_000_003 + self.epoch * 7919 + self.rank * 104_729) % 2**63)
        yield from torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist()

    def __len__(self) -> int:
        return self.num_samples
