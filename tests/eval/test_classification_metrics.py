"""Tests for classification metrics against numpy and hand-computed references, and the DDP-style meter merge.

CUDA variants run only when a GPU is present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.eval.classification import (
    ClassificationMeter,
    confusion_matrix,
    most_confused,
    precision_recall,
    topk_accuracy,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _reference_confusion(preds: np.ndarray, targets: np.ndarray, c: int) -> np.ndarray:
    cm = np.zeros((c, c), dtype=np.int64)
    for t, p in zip(targets, preds):
        cm[t, p] += 1
    return cm


@pytest.mark.parametrize("device", DEVICES)
def test_confusion_matrix_matches_a_plain_loop(device: str) -> None:
    generator = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 6, (500,), generator=generator)
    targets = torch.randint(0, 6, (500,), generator=generator)
    cm = confusion_matrix(preds.to(device), targets.to(device), 6)
    assert cm.dtype == torch.int64 and cm.device.type == device
    np.testing.assert_array_equal(cm.cpu().numpy(), _reference_confusion(preds.numpy(), targets.numpy(), 6))


def test_confusion_matrix_rows_are_true_classes_and_empty_input_is_zero() -> None:
    cm = confusion_matrix(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 2]), 3)
    assert cm.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 1]]
    empty = confusion_matrix(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 4)
    assert empty.shape == (4, 4) and int(empty.sum()) == 0


@pytest.mark.parametrize(
    ("preds", "targets", "pattern"),
    [
        (torch.tensor([0, 3]), torch.tensor([0, 1]), r"preds must lie in \[0, 2\], got min 0 max 3"),
        (torch.tensor([0, 1]), torch.tensor([-1, 1]), r"targets must lie in \[0, 2\]"),
        (torch.tensor([0, 1]), torch.tensor([0]), "targets has 1 entries, expected 2"),
        (torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), r"preds must be Tensor\[N\].*\(2, 3\)"),
    ],
)
def test_confusion_matrix_rejects_bad_input(preds: torch.Tensor, targets: torch.Tensor, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        confusion_matrix(preds, targets, 3)


def test_topk_accuracy_by_hand() -> None:
    logits = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02],  # true 0: top-1 hit
            [0.1, 0.2, 0.6, 0.1],  # true 1: second best -> top-2 hit
            [0.4, 0.3, 0.2, 0.1],  # true 3: worst -> only top-4
            [0.1, 0.1, 0.1, 0.7],  # true 2: tied 2nd-4th; topk picks among ties, so check k=4 only
        ]
    )
    targets = torch.tensor([0, 1, 3, 2])
    acc = topk_accuracy(logits[:3], targets[:3], ks=(1, 2, 3, 4, 5))
    assert acc == pytest.approx({"acc1": 1 / 3, "acc2": 2 / 3, "acc3": 2 / 3, "acc4": 1.0, "acc5": 1.0})
    assert topk_accuracy(logits, targets, ks=(4,)) == {"acc4": 1.0}


def test_topk_accuracy_matches_a_sorting_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 10, generator=generator)
    targets = torch.randint(0, 10, (200,), generator=generator)
    ranks = (logits > logits.gather(1, targets[:, None])).sum(dim=1)  # how many classes beat the true one
    result = topk_accuracy(logits, targets, ks=(1, 5))
    assert result["acc1"] == pytest.approx(float((ranks < 1).float().mean()))
    assert result["acc5"] == pytest.approx(float((ranks < 5).float().mean()))


def test_precision_and_recall_by_hand() -> None:
    # true\pred  0  1  2
    # 0          3  1  0
    # 1          2  2  0
    # 2          0  0  0   (class 2 never present nor predicted)
    cm = torch.tensor([[3, 1, 0], [2, 2, 0], [0, 0, 0]])
    precision, recall = precision_recall(cm)
    assert precision.tolist() == pytest.approx([3 / 5, 2 / 3, 0.0])
    assert recall.tolist() == pytest.approx([3 / 4, 2 / 4, 0.0])


def test_most_confused_orders_by_count_then_index() -> None:
    cm = torch.tensor([[9, 2, 5], [2, 7, 0], [1, 4, 8]])
    assert most_confused(cm, ["cat", "dog", "fox"], k=3) == [("cat", "fox", 5), ("fox", "dog", 4), ("cat", "dog", 2)]
    assert most_confused(cm, ["cat", "dog", "fox"], k=10)[-1] == ("fox", "cat", 1)  # zeros never listed
    assert most_confused(torch.eye(3, dtype=torch.long), ["a", "b", "c"]) == []
    with pytest.raises(ValueError, match="C = len"):
        most_confused(cm, ["cat", "dog"])


@pytest.mark.parametrize("device", DEVICES)
def test_meter_over_batches_equals_one_shot_metrics(device: str) -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(60, 5, generator=generator)
    targets = torch.randint(0, 5, (60,), generator=generator)
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    meter = ClassificationMeter(5, ks=(1, 3))
    for start in range(0, 60, 25):  # batches of 25, 25, 10
        chunk = slice(start, start + 25)
        meter.update(logits[chunk].to(device), targets[chunk].to(device), loss=losses[chunk].mean())
    result = meter.compute()
    expected_cm = confusion_matrix(logits.argmax(dim=1), targets, 5)
    assert torch.equal(result["confusion_matrix"], expected_cm)
    assert result["acc1"] == pytest.approx(topk_accuracy(logits, targets, ks=(1,))["acc1"])
    assert result["acc3"] == pytest.approx(topk_accuracy(logits, targets, ks=(3,))["acc3"])
    assert result["loss"] == pytest.approx(float(losses.mean()))
    precision, recall = precision_recall(expected_cm)
    assert result["precision"] == pytest.approx(precision.tolist())
    assert result["recall"] == pytest.approx(recall.tolist())
    assert result["mean_recall"] == pytest.approx(float(recall.mean()))
    assert result["n"] == 60


def test_meter_states_summed_across_ranks_equal_the_whole() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 4, generator=generator)
    targets = torch.randint(0, 4, (40,), generator=generator)
    whole, rank0, rank1 = ClassificationMeter(4), ClassificationMeter(4), ClassificationMeter(4)
    whole.update(logits, targets, loss=1.5)
    rank0.update(logits[:15], targets[:15], loss=1.5)
    rank1.update(logits[15:], targets[15:], loss=1.5)
    summed = [a + b for a, b in zip(rank0.state_tensors(), rank1.state_tensors())]  # what all_reduce(SUM) does
    rank0.load_state_tensors(summed)
    merged, expected = rank0.compute(), whole.compute()
    assert torch.equal(merged.pop("confusion_matrix"), expected.pop("confusion_matrix"))
    assert merged == expected  # counts add exactly, so every derived metric is identical
    rank0.all_reduce()  # not distributed: a no-op
    assert rank0.compute()["n"] == 40


def test_meter_without_loss_or_samples_and_bad_shapes() -> None:
    meter = ClassificationMeter(3)
    empty = meter.compute()
    assert empty["n"] == 0 and empty["acc1"] == 0.0 and empty["loss"] is None
    meter.update(torch.randn(2, 3), torch.tensor([0, 2]))
    assert meter.compute()["loss"] is None and meter.compute()["acc5"] == 1.0  # k > C counts every sample
    with pytest.raises(ValueError, match=r"logits must be Tensor\[B, 3\], got shape \(2, 4\)"):
        meter.update(torch.randn(2, 4), torch.tensor([0, 1]))
    meter.reset()
    assert meter.compute()["n"] == 0


def test_meter_all_reduce_runs_through_a_real_process_group(tmp_path: Path) -> None:
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        meter = ClassificationMeter(3)
        meter.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([0, 1]), loss=0.5)
        before = meter.compute()
        meter.all_reduce()  # one rank: the sum is the rank's own state, in every dtype the meter uses
        after = meter.compute()
    finally:
        dist.destroy_process_group()
    assert torch.equal(after.pop("confusion_matrix"), before.pop("confusion_matrix"))
    assert after == before and after["acc1"] == 0.5 and after["loss"] == 0.5
