"""Classification metrics: confusion matrix, top-k accuracy, per-class precision/recall, most-confused pairs.

``ClassificationMeter`` keeps only counts (O(C²) memory), so it is cheap per batch and summed across DDP ranks;
``ClassificationEvaluator`` is the validation loop's evaluator built on it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.eval.evaluator import Evaluator


def _check_targets(targets: Tensor, num_classes: int, n: int | None = None) -> None:
    if targets.dim() != 1:
        raise ValueError(f"targets must be Tensor[N] of class indices, got shape {tuple(targets.shape)}")
    if n is not None and targets.numel() != n:
        raise ValueError(f"targets has {targets.numel()} entries, expected {n} (one per prediction)")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"targets must lie in [0, {num_classes - 1}], got min {int(targets.min())} max {int(targets.max())}"
        )


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Count (true class, predicted class) pairs.

    Args:
        preds: Tensor[N] predicted class indices in [0, C).
        targets: Tensor[N] true class indices in [0, C).
        num_classes: C.

    Returns:
        Tensor[C, C] int64 on ``preds``' device: entry ``[t, p]`` counts samples of true class t predicted as p
        (rows true, columns predicted).

    Raises:
        ValueError: for shapes other than Tensor[N] / equal N, or indices outside [0, C).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if preds.dim() != 1:
        raise ValueError(f"preds must be Tensor[N] of class indices, got shape {tuple(preds.shape)}")
    _check_targets(targets, num_classes, preds.numel())
    if preds.numel() and (int(preds.min()) < 0 or int(preds.max()) >= num_classes):
        raise ValueError(f"preds must lie in [0, {num_classes - 1}], got min {int(preds.min())} max {int(preds.max())}")
    flat = targets.to(preds.device, torch.int64) * num_classes + preds.to(torch.int64)  # (N,)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """Number of samples whose true class is among the top-k scores, for each k.

    Args:
        logits: Tensor[N, C] class scores (logits or probabilities).
        targets: Tensor[N] true class indices in [0, C).
        ks: values of k ≥ 1; a k larger than C counts as C (every sample is correct).

    Returns:
        Tensor[len(ks)] int64 counts.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be Tensor[N, C], got shape {tuple(logits.shape)}")
    _check_targets(targets, logits.shape[1], logits.shape[0])
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must all be >= 1, got {tuple(ks)}")
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (N, kmax), best first
    hits = top.eq(targets.to(top.device).view(-1, 1))  # (N, kmax)
    return torch.stack([hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]).to(torch.int64)


def topk_accuracy(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy as fractions: ``{"acc1": ..., "acc5": ...}`` (keys ``acc{k}``).

    Args:
        logits: Tensor[N, C] class scores.
        targets: Tensor[N] true class indices in [0, C).
        ks: values of k; k > C gives 1.0.

    Returns:
        ``{f"acc{k}": fraction in [0, 1]}``; 0.0 for every k when N = 0.
    """
    counts = topk_correct(logits, targets, ks)
    n = max(1, logits.shape[0])
    return {f"acc{k}": float(c) / n for k, c in zip(ks, counts.tolist())}


def precision_recall(cm: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class precision and recall from a confusion matrix (rows true, columns predicted).

    Args:
        cm: Tensor[C, C] counts.

    Returns:
        ``(precision, recall)``, each Tensor[C] float64; a class never predicted has precision 0, a class
        never present has recall 0.
    """
    cm = cm.to(torch.float64)
    tp = cm.diagonal()
    predicted = cm.sum(dim=0)  # (C,) column sums
    actual = cm.sum(dim=1)  # (C,) row sums
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    return precision, recall


def most_confused(cm: Tensor, classes: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal entries of a confusion matrix.

    Args:
        cm: Tensor[C, C] counts, rows true, columns predicted.
        classes: C class names.
        k: how many pairs at most.

    Returns:
        ``[(true class, predicted class, count), ...]`` with count > 0, largest first; ties in (true, predicted)
        index order.
    """
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"cm must be Tensor[C, C] with C = len(classes) = {len(classes)}, got {tuple(cm.shape)}")
    off = cm.detach().to("cpu", torch.int64).clone()
    off.fill_diagonal_(0)
    flat = off.flatten()
    # Stable sort on -count keeps row-major (true, predicted) order among equal counts.
    order = torch.sort(-flat, stable=True).indices[: max(0, k)]
    c = cm.shape[0]
    return [(classes[i // c], classes[i % c], int(flat[i])) for i in order.tolist() if flat[i] > 0]


class ClassificationMeter:
    """Accumulates classification results over batches: confusion matrix, top-k hits and loss.

    Only counts are kept, so ``update`` is cheap and memory is O(C²). For DDP, sum the meters of all ranks with
    ``all_reduce()`` (or ``state_tensors()`` / ``load_state_tensors()`` around your own reduction).

    Args:
        num_classes: C.
        ks: the k of the top-k accuracies reported (``acc{k}``).
    """

    def __init__(self, num_classes: int, ks: Sequence[int] = (1, 5)) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.topk = torch.zeros(len(self.ks), dtype=torch.int64)
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.loss_count = torch.zeros((), dtype=torch.int64)  # samples whose batch came with a loss
        self.count = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor, loss: float | Tensor | None = None) -> None:
        """Add a batch.

        Args:
            logits: Tensor[B, C] class scores.
            targets: Tensor[B] true class indices.
            loss: the batch's mean loss (weighted by B in the average), or None.
        """
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be Tensor[B, {self.num_classes}], got shape {tuple(logits.shape)}")
        if self.cm.device != logits.device:
            self._to(logits.device)
        logits = logits.detach()
        targets = targets.detach().to(logits.device)
        self.cm += confusion_matrix(logits.argmax(dim=1), targets, self.num_classes)
        self.topk += topk_correct(logits, targets, self.ks)
        self.count += targets.numel()
        if loss is not None:
            loss = torch.as_tensor(loss).detach().to(self.loss_sum.device, torch.float64)
            self.loss_sum += loss * targets.numel()
            self.loss_count += targets.numel()

    def state_tensors(self) -> list[Tensor]:
        """The meter's state as tensors that add up across ranks: ``[cm, topk, loss_sum, loss_count, count]``."""
        return [self.cm, self.topk, self.loss_sum, self.loss_count, self.count]

    def load_state_tensors(self, tensors: Sequence[Tensor]) -> None:
        """Set the state from ``state_tensors()``-shaped tensors (e.g. after summing them across ranks)."""
        cm, topk, loss_sum, loss_count, count = tensors
        if tuple(cm.shape) != (self.num_classes, self.num_classes) or topk.numel() != len(self.ks):
            raise ValueError(
                f"state tensors have shapes {tuple(cm.shape)} and {tuple(topk.shape)}, expected "
                f"({self.num_classes}, {self.num_classes}) and ({len(self.ks)},)"
            )
        self.cm, self.topk = cm.to(torch.int64), topk.to(torch.int64)
        self.loss_sum, self.count = loss_sum.to(torch.float64), count.to(torch.int64)
        self.loss_count = loss_count.to(torch.int64)

    def all_reduce(self, group: Any = None) -> None:
        """Sum the state over all ranks in place (no-op unless ``torch.distributed`` is initialised).

        With NCCL the state must live on this rank's GPU: it does once ``update`` has seen CUDA logits.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        for tensor in self.state_tensors():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)

    def compute(self) -> dict[str, Any]:
        """The metrics so far.

        Returns:
            ``{"acc{k}"}`` for each k (fractions), ``"loss"`` (mean per sample, None if never given),
            ``"precision"`` / ``"recall"`` (lists of C floats), ``"mean_recall"`` (balanced accuracy over the
            classes present), ``"confusion_matrix"`` (Tensor[C, C] int64 on the CPU, rows true) and ``"n"``.
        """
        n = int(self.count)
        precision, recall = precision_recall(self.cm.cpu())
        present = self.cm.cpu().sum(dim=1) > 0
        result: dict[str, Any] = {f"acc{k}": (int(c) / n if n else 0.0) for k, c in zip(self.ks, self.topk.tolist())}
        result.update(
            {
                "loss": float(self.loss_sum) / int(self.loss_count) if int(self.loss_count) else None,
                "precision": precision.tolist(),
                "recall": recall.tolist(),
                "mean_recall": float(recall[present].mean()) if bool(present.any()) else 0.0,
                "confusion_matrix": self.cm.detach().cpu().clone(),
                "n": n,
            }
        )
        return result

    def _to(self, device: torch.device) -> None:
        self.cm, self.topk = self.cm.to(device), self.topk.to(device)
        self.loss_sum, self.count = self.loss_sum.to(device), self.count.to(device)
        self.loss_count = self.loss_count.to(device)


class ClassificationEvaluator(Evaluator):
    """Validation loss, top-1/top-5 accuracy, per-class precision/recall and the confusion matrix.

    Counts live in a :class:`detkit.eval.classification.ClassificationMeter`, which sums across ranks.
    """

    def __init__(self, classes: list[str]) -> None:
        self.classes = list(classes)
        self.meter = ClassificationMeter(len(classes))

    def update(self, model: nn.Module, images: Tensor, targets: Tensor, paths: list[str]) -> None:
        logits = model(images).float()  # (B, C)
        self.meter.update(logits, targets, loss=F.cross_entropy(logits, targets))

    def synchronize(self) -> None:
        self.meter.all_reduce()

    def compute(self) -> dict[str, Any]:
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
