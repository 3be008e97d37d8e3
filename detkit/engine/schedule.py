"""Learning-rate schedules (cosine with warmup, one-cycle, step, constant), stepped once per optimiser step.

Each is one factor applied to every group's own base lr, so per-group ratios (head, layer decay) always hold.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from detkit.config.sections import ScheduleConfig

SCHEDULES = ("cosine", "onecycle", "step", "constant")


class ScheduleFactor:
    """The lr factor at optimiser step ``s`` (0-based) for a schedule of ``total_steps`` steps.

    A plain callable object (not a closure) so ``LambdaLR.state_dict()`` saves it and checkpoints can be
    loaded with ``torch.load(weights_only=True)``.

    Args:
        cfg: the schedule.
        total_steps: epochs × optimiser steps per epoch (≥ 1).
        steps_per_epoch: optimiser steps per epoch (≥ 1), to turn epoch settings into steps.
    """

    def __init__(self, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> None:
        self.name = cfg.name
        self.total_steps = int(total_steps)
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        self.warmup_steps = 0 if cfg.name == "onecycle" else min(warmup, total_steps)
        self.warmup_start_ratio = float(cfg.warmup_start_ratio)
        self.min_lr_ratio = float(cfg.min_lr_ratio)
        self.milestones = sorted(round(e * steps_per_epoch) for e in cfg.step_epochs)
        self.gamma = float(cfg.gamma)
        self.peak_step = max(1, round(cfg.pct_start * total_steps))
        self.start_ratio = 1.0 / cfg.div_factor
        self.end_ratio = 1.0 / (cfg.div_factor * cfg.final_div_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_ratio + (1.0 - self.warmup_start_ratio) * step / self.warmup_steps
        if self.name == "cosine":
            span = max(1, self.total_steps - 1 - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.name == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        if self.name == "onecycle":
            if step < self.peak_step:
                return _cosine_between(self.start_ratio, 1.0, step / self.peak_step)
            span = max(1, self.total_steps - 1 - self.peak_step)
            return _cosine_between(1.0, self.end_ratio, min(1.0, (step - self.peak_step) / span))
        return 1.0  # constant


def _cosine_between(start: float, end: float, progress: float) -> float:
    # Cosine interpolation from start (progress 0) to end (progress 1).
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int
) -> LRScheduler:
    """A scheduler setting every group's lr to ``its base lr × factor(step)``; call ``.step()`` after each
    ``optimizer.step()``.

    - ``cosine``: linear warmup from ``warmup_start_ratio`` over ``warmup_epochs``, then cosine to
      ``min_lr_ratio`` at the last step.
    - ``onecycle``: cosine rise from ``1/div_factor`` to 1 over ``pct_start`` of the steps, then cosine down to
      ``1/(div_factor·final_div_factor)`` (learning rate only; momentum is not cycled).
    - ``step``: warmup, then ×``gamma`` at each of ``step_epochs``.
    - ``constant``: warmup, then 1.

    Args:
        optimizer: with its groups' lrs set to their base rates (e.g. from ``build_optimizer``).
        cfg: the schedule.
        epochs: number of training epochs (≥ 1).
        steps_per_epoch: optimiser steps per epoch (≥ 1); with gradient accumulation, batches / accumulate.

    Raises:
        ValueError: for an unknown ``cfg.name`` or non-positive ``epochs`` / ``steps_per_epoch`` / ratios.
    """
    if cfg.name not in SCHEDULES:
        raise ValueError(f"schedule.name must be one of {SCHEDULES}, got {cfg.name!r}")
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    if cfg.warmup_epochs < 0:
        raise ValueError(f"schedule.warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    if not 0.0 < cfg.pct_start < 1.0:
        raise ValueError(f"schedule.pct_start must be in (0, 1), got {cfg.pct_start}")
    if cfg.div_factor <= 0 or cfg.final_div_factor <= 0:
        raise ValueError(
            f"schedule.div_factor and final_div_factor must be > 0, got {cfg.div_factor} and {cfg.final_div_factor}"
        )
    factor = ScheduleFactor(cfg, epochs * steps_per_epoch, steps_per_epoch)
    return LambdaLR(optimizer, lr_lambda=factor)
