"""The learning-rate finder (Smith's LR range test, as fastai's ``lr_find``): an exponential lr sweep over a few
hundred steps, the smoothed loss, a suggestion, a PNG plot and JSON; the model and optimiser are restored after.

Every parameter group keeps its ratio to the base lr during the sweep, so the suggestion is an ``optim.lr``.

The suggestion is ``PEAK_FACTOR`` (3) times the lr at the minimum of the loss smoothed without lag (a centred
moving average a third of a decade wide), kept a factor 3 below where the loss blows up: the peak lr of detkit's
warm-up + cosine schedules. fastai's ``valley`` and the steepest descent are computed and plotted too; on the four
classification sets of ``tools/bench.py quality`` trained from scratch the valley sat 4-30x below the best lr of a
grid (0.002 on all four), while the suggestion sat within 3x of it in every sweep measured, and within 2.4x in
the twelve sweeps of the three-seed run (docs/benchmarks.md, *Quality on real data*).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from detkit.engine.tasks.base import Task
from detkit.io import atomic_write_json
from detkit.viz.figures import new_figure, save_figure

__all__ = ["PEAK_FACTOR", "LRFinderResult", "find_lr", "minimum_lr", "save_lr_find", "steepest_lr", "suggest_lr",
           "valley_lr"]

logger = logging.getLogger(__name__)

# The schedule's peak lr over the sweep's lag-free loss minimum. The sweep raises the lr every step from the
# initial weights, without warm-up; a warm-up + cosine run trains well with a peak above the lr at which the
# sweep's loss stops falling (its mean lr is half the peak). Measured, not derived: in 12 sweeps of the four sets
# of `tools/bench.py quality` the best lr of the grid was 1.0-3.9x the lag-free minimum (docs/benchmarks.md).
PEAK_FACTOR = 3.0


@dataclass
class LRFinderResult:
    """What a sweep measured and suggests.

    Attributes:
        lrs: base lr at each step (groups ran at ``lr * their ratio``).
        losses: raw training loss of each step.
        smoothed: bias-corrected exponential moving average of the losses (what the plot shows; it lags the
            losses, so its minimum sits at a higher lr than theirs).
        valley: lr halfway down the longest stretch over which the smoothed loss keeps falling (fastai's
            ``valley`` idea).
        steepest: lr of the steepest descent of the smoothed loss against log(lr).
        suggestion: the lr to train with: :func:`suggest_lr` (``PEAK_FACTOR`` x ``minimum``, capped), or ``valley``,
            ``steepest``, the base lr when the sweep was too short for a minimum.
        stopped: why the sweep ended (``end_lr reached`` or ``loss diverged``).
        minimum: lr at the minimum of the losses smoothed without lag (:func:`minimum_lr`).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    valley: float | None
    steepest: float | None
    suggestion: float
    stopped: str
    minimum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cycle(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


@contextlib.contextmanager
def _restored(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any = None) -> Iterator[None]:
    """Put back the weights, buffers, optimiser state and lrs, train/eval mode, the RNG states and the state of
    ``loader``'s generator (its shuffling and worker seeds: training after the sweep sees the batches it would
    have seen without it) on exit."""
    weights = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    generator = getattr(loader, "generator", None)
    generator_state = generator.get_state() if generator is not None else None
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    training = model.training
    try:
        yield
    finally:
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt_state)  # also the groups' lrs
        model.train(training)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])
        if generator_state is not None:
            generator.set_state(generator_state)


def find_lr(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, loader: DataLoader, *,
            base_lr: float, device: torch.device | str = "cpu", start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 100, beta: float = 0.98, diverge: float = 4.0,
            amp_dtype: torch.dtype | None = None) -> LRFinderResult:
    """Sweep the lr from ``start_lr`` to ``end_lr`` exponentially, one optimiser step per batch.

    The loss is smoothed with ``beta`` (bias-corrected); the sweep stops early once the smoothed loss exceeds
    ``diverge`` times its minimum or is not finite. Afterwards the model's weights and buffers, the optimiser
    state and lrs, the RNG states and the loader's generator are restored bit for bit.

    Args:
        model: on ``device``, in the state training would start from.
        task: computes the loss (``train_step``) and moves batches.
        optimizer: over the model's parameter groups, each group's ``lr`` (or ``initial_lr`` under a scheduler) =
            ``base_lr`` x its ratio.
        loader: training batches (cycled when shorter than ``num_steps``).
        base_lr: the base lr the groups' lrs were built from (their ratios to it are kept).
        device: where the model is.
        start_lr, end_lr: ends of the sweep (base lr).
        num_steps: steps of the full sweep.
        beta: smoothing of the loss.
        diverge: stop when the smoothed loss exceeds this multiple of its minimum.
        amp_dtype: autocast dtype, or None.
    """
    if not 0 < start_lr < end_lr or num_steps < 10 or not base_lr > 0:
        raise ValueError(f"lr finder: need 0 < start_lr < end_lr, num_steps >= 10 and base_lr > 0, got start_lr="
                         f"{start_lr}, end_lr={end_lr}, num_steps={num_steps}, base_lr={base_lr}")
    # a scheduler may have scaled "lr" already (warm-up starts low); "initial_lr" is then the group's base rate
    ratios = [group.get("initial_lr", group["lr"]) / base_lr for group in optimizer.param_groups]
    lrs, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, "end_lr reached"
    device = torch.device(device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    with _restored(model, optimizer, loader):
        model.train()
        for step, batch in zip(range(num_steps), _cycle(loader)):
            lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            images, targets, _ = task.move_batch(batch, device)
            with autocast():
                loss, _ = task.train_step(model, images, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            average = beta * average + (1 - beta) * value
            smooth = average / (1 - beta ** (step + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(smooth)
            if not math.isfinite(smooth) or smooth > diverge * best:
                stopped = "loss diverged"
                break
            best = min(best, smooth)
        optimizer.zero_grad(set_to_none=True)
    valley, steepest, minimum = valley_lr(lrs, smoothed), steepest_lr(lrs, smoothed), minimum_lr(lrs, losses)
    suggestion = suggest_lr(lrs, losses, diverge=diverge) or valley or steepest or base_lr
    logger.info("lr finder: %d steps (%s); suggestion %.3g (%gx the loss minimum %s; valley %s, steepest %s)",
                len(lrs), stopped, suggestion, PEAK_FACTOR, _fmt(minimum), _fmt(valley), _fmt(steepest))
    return LRFinderResult(lrs, losses, smoothed, valley, steepest, suggestion, stopped, minimum)


def _centred_losses(lrs: list[float], losses: list[float]) -> np.ndarray | None:
    """The finite prefix of ``losses`` as a centred moving average a third of a decade of the sweep wide (edges
    padded with the end values), or None for fewer than 5 finite points."""
    values = np.asarray(losses, dtype=np.float64)
    bad = ~np.isfinite(values)
    n = int(np.argmax(bad)) if bad.any() else len(values)
    if n < 5 or not lrs[1] > lrs[0]:
        return None
    per_decade = 1.0 / math.log10(lrs[1] / lrs[0])
    width = min(max(3, int(round(per_decade / 3)) | 1), n if n % 2 else n - 1)  # odd, at most the points there are
    padded = np.pad(values[:n], width // 2, mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def minimum_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The lr at the minimum of the raw ``losses`` of an exponential sweep, smoothed without lag.

    The smoothing is a centred moving average a third of a decade wide (for 100 steps over 1e-7..10, 5 steps):
    unlike the exponential average it does not move the minimum towards higher lrs. Non-finite losses end the
    curve. None for fewer than 5 finite points.
    """
    centred = _centred_losses(lrs, losses)
    return None if centred is None else float(lrs[int(np.argmin(centred))])


def suggest_lr(lrs: list[float], losses: list[float], factor: float = PEAK_FACTOR, diverge: float = 4.0
               ) -> float | None:
    """``factor`` x :func:`minimum_lr`, but at least ``factor`` below where the loss blows up.

    Blowing up: the first lr past the minimum where the centred loss of a positive loss exceeds ``diverge`` x its
    minimum (the sweep's own stop rule, without the lag). A problem whose loss falls until it blows up (least
    squares with SGD) thus gets a rate well inside its stable range. None when there is no minimum.
    """
    centred = _centred_losses(lrs, losses)
    if centred is None:
        return None
    low = int(np.argmin(centred))
    suggestion = factor * lrs[low]
    if centred[low] > 0:
        blown = np.nonzero(centred[low:] > diverge * centred[low])[0]
        if blown.size:
            suggestion = min(suggestion, lrs[low + int(blown[0])] / factor)
    return float(suggestion)


def valley_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The lr halfway down the longest run of steps over which the loss keeps falling.

    "Keeps falling" is measured by the longest decreasing subsequence of the (smoothed) losses: the valley is the
    run of that many steps ending where the subsequence ends (a plateau before the fall is not part of it).
    Returns None for fewer than 5 points or no descent.
    """
    n = len(losses)
    if n < 5:
        return None
    length = [1] * n  # length[i]: longest decreasing subsequence ending at step i
    for i in range(n):
        for j in range(i):
            if losses[j] > losses[i]:
                length[i] = max(length[i], length[j] + 1)
    end = max(range(n), key=lambda i: (length[i], -i))
    if length[end] < 3:
        return None
    first = end - length[end] + 1
    return float(lrs[first + (end - first) // 2])


def steepest_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The lr where the loss falls fastest against log(lr), before its minimum (None for fewer than 5 points)."""
    if len(losses) < 5:
        return None
    last = int(np.argmin(losses))
    if last < 2:
        return None
    slope = np.gradient(np.asarray(losses[: last + 1]), np.log(np.asarray(lrs[: last + 1])))
    return float(lrs[int(np.argmin(slope))])


def save_lr_find(result: LRFinderResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``lr_find.json`` (every step and the suggestions) and ``lr_find.png`` (loss against lr, log scale)
    to ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    json_path = atomic_write_json(out_dir / "lr_find.json", result.to_dict())
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    centred = _centred_losses(result.lrs, result.losses)
    if centred is not None:
        ax.plot(result.lrs[: len(centred)], centred, color="C1", linewidth=1.5, label="centred average")
    for name, lr, colour in (("valley", result.valley, "C2"), ("steepest", result.steepest, "C3"),
                             ("loss minimum", result.minimum, "C1"), ("suggestion", result.suggestion, "k")):
        if lr is not None:
            ax.axvline(lr, color=colour, linestyle="--", label=f"{name} {lr:.2g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * min(finite)) * 1.1 + 1e-12)
    ax.set_xlabel("base learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR finder: suggestion {result.suggestion:.2g} ({result.stopped})")
    ax.legend(loc="upper left")
    png_path = save_figure(fig, out_dir / "lr_find.png")
    return json_path, png_path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
