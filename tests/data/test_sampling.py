"""Tests for detkit.data.sampling and detkit.data.folds: class counts and weights, the balanced sampler, K folds."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detkit.data.folds import fold_indices, kfold_assignments
from detkit.data.sampling import BalancedSampler, balanced_sample_weights, class_counts, class_weights, image_labels


def test_class_weights_are_inverse_frequency_and_average_one_over_the_samples():
    counts = [10, 30, 60]
    weights = class_weights(counts)
    torch.testing.assert_close(weights, torch.tensor([100 / 30, 100 / 90, 100 / 180]))
    assert float((weights * torch.tensor(counts, dtype=torch.float32)).sum()) == pytest.approx(sum(counts))
    torch.testing.assert_close(class_weights([7, 7, 7]), torch.ones(3))
    with pytest.raises(ValueError, match="at least one sample"):
        class_weights([5, 0, 2])


def test_counts_read_labels_of_images_and_of_boxes():
    folder = SimpleNamespace(samples=[("a.png", 0), ("b.png", 2), ("c.png", 2)])
    boxes = SimpleNamespace(records=[SimpleNamespace(labels=np.array([1, 1, 0])), SimpleNamespace(labels=np.array([]))])
    assert class_counts(image_labels(folder), 3) == [1, 0, 2]
    assert class_counts(image_labels(boxes), 2) == [1, 2]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_counts([[2]], 2)


def test_balanced_sampler_draws_every_class_about_equally_and_repeats_per_seed_and_epoch():
    labels = [[0]] * 90 + [[1]] * 9 + [[2]] * 1  # 90 : 9 : 1
    weights = balanced_sample_weights(labels, 3)
    assert float(weights.sum()) == pytest.approx(1.0)
    sampler = BalancedSampler(weights, 3000, seed=4)
    drawn = list(sampler)
    share = Counter(labels[i][0] for i in drawn)
    assert all(abs(share[c] / 3000 - 1 / 3) < 0.04 for c in range(3))
    assert list(sampler) == drawn  # same seed and epoch: the same draw
    sampler.set_epoch(1)
    assert list(sampler) != drawn and len(sampler) == 3000
    assert list(BalancedSampler(weights, 50, seed=4, rank=1)) != drawn[:50]  # ranks draw apart


def test_kfold_folds_are_disjoint_cover_the_set_and_are_stratified():
    labels = [0] * 23 + [1] * 11 + [2] * 6
    k = 5
    folds = kfold_assignments(labels, k, seed=3)
    sizes = Counter(folds)
    assert set(sizes) == set(range(k)) and max(sizes.values()) - min(sizes.values()) <= 1
    for c in range(3):
        per_fold = Counter(f for f, y in zip(folds, labels) if y == c)
        assert max(per_fold.values()) - min(per_fold.get(i, 0) for i in range(k)) <= 1, c
    seen = []
    for fold in range(k):
        train, val = fold_indices(labels, k, fold, seed=3)
        assert not set(train) & set(val) and sorted(train + val) == list(range(len(labels)))
        seen += val
    assert sorted(seen) == list(range(len(labels)))  # every sample validates exactly once


def test_kfold_is_reproducible_per_seed_and_splits_unlabelled_samples_by_image():
    labels = [i % 4 for i in range(40)]
    assert kfold_assignments(labels, 4, seed=1) == kfold_assignments(labels, 4, seed=1)
    assert kfold_assignments(labels, 4, seed=1) != kfold_assignments(labels, 4, seed=2)
    images = kfold_assignments([None] * 10, 3, seed=0)
    assert sorted(Counter(images).values()) == [3, 3, 4]
    with pytest.raises(ValueError, match="data.kfold"):
        kfold_assignments(labels, 1)
    with pytest.raises(ValueError, match="data.fold"):
        fold_indices(labels, 4, 4)
