"""Model EMA: an exponential moving average of a model's weights, updated after every optimiser step.

The decay warms up as in timm's ``ModelEmaV3`` (``1 - (1 + step) ** -power``, capped at ``decay``), so the average
forgets the random start quickly; the trainer validates and checkpoints the average when ``train.ema`` is on.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from detkit.models.stages import unwrap_model

__all__ = ["ModelEma"]


class ModelEma:
    """A frozen copy of ``model`` holding the moving average of its weights and buffers.

    After update ``n`` (counted from 1) each floating-point entry of the state is
    ``ema = d_n * ema + (1 - d_n) * value`` with ``d_n = min(decay, 1 - n ** -warmup_power)`` when ``warmup``
    (so ``d_1 = 0``: the first update copies the model), else ``d_n = decay``; integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied.

    Args:
        model: the model being trained (a DDP wrapper is unwrapped); copied, on its device.
        decay: the decay once warmed up, in [0, 1).
        warmup: ramp the decay up from 0.
        warmup_power: the ramp's exponent (timm's default 2/3).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True,
                 warmup_power: float = 2 / 3) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay: expected a value in [0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.warmup_power = float(decay), bool(warmup), float(warmup_power)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay used by update number ``updates`` (1-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - float(updates) ** -self.warmup_power) if updates > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average (call after each optimiser step)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        current = unwrap_model(model).state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.lerp_(value.to(average.dtype), weight)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """``{"updates", "decay"}`` (the averaged weights are the checkpoint's ``model``)."""
        return {"updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any], weights: dict[str, Any]) -> None:
        """Restore the update count and the averaged ``weights`` (a checkpoint's ``model``)."""
        self.module.load_state_dict(weights)
        self.updates = int(state.get("updates", 0))
