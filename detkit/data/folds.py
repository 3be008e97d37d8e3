"""K-fold splits for cross-validation (Dive into Deep Learning, 'Model Selection'): disjoint folds covering a set.

Stratified for single-label samples (every class spread evenly over the folds), by sample otherwise; seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["fold_indices", "kfold_assignments"]


def kfold_assignments(labels: Sequence[int | None], k: int, seed: int = 0) -> list[int]:
    """The fold ``0..k-1`` of every sample.

    Samples with a label are stratified: within each class a seeded permutation is dealt round-robin, continuing
    from fold to fold across classes, so fold sizes differ by at most one and each class's counts by at most one.
    Samples with label None (e.g. detection images) are dealt the same way as one group.

    Args:
        labels: one label (or None) per sample.
        k: number of folds, 2 .. number of samples.
        seed: the same seed gives the same folds.

    Raises:
        ValueError: for ``k < 2`` or more folds than samples.
    """
    n = len(labels)
    if not isinstance(k, int) or isinstance(k, bool) or k < 2 or k > n:
        raise ValueError(f"data.kfold: expected an integer from 2 to the number of samples ({n}), got {k!r}")
    rng = np.random.default_rng([int(seed), 8_675_309])
    groups: dict[object, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    folds = [0] * n
    position = 0
    for key in sorted(groups, key=lambda g: (g is None, str(g))):
        for index in rng.permutation(groups[key]):
            folds[int(index)] = position % k
            position += 1
    return folds


def fold_indices(labels: Sequence[int | None], k: int, fold: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(train indices, validation indices)`` of fold ``fold`` (the samples of that fold validate, the rest train).

    Raises:
        ValueError: for a ``fold`` outside ``0..k-1`` (and as :func:`kfold_assignments`).
    """
    if not 0 <= fold < k:
        raise ValueError(f"data.fold: expected 0 .. {k - 1} (data.kfold = {k}), got {fold}")
    folds = kfold_assignments(labels, k, seed)
    return [i for i, f in enumerate(folds) if f != fold], [i for i, f in enumerate(folds) if f == fold]
