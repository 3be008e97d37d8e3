"""Fused optimiser steps on channels-last parameters without copies (CPU).

torch's fused CPU kernels (``fused=True`` SGD, Adam, AdamW) make every non-contiguous tensor they get
contiguous, a copy in and out of each parameter, gradient and state tensor on every step. A channels-last
model (``train.channels_last``) has its 4-d weights in exactly that layout: for resnet18_ssd the copies took
two thirds of the AdamW step, 5-7 % of the whole training step on a 2-core CPU (docs/benchmarks.md). The
update is element-wise, so it can run on any view that covers each tensor's memory once: during
``step()`` each such parameter, its gradient and its state tensors are swapped for their
``permute(0, 2, 3, 1)`` views (``[O, kh, kw, I]``, contiguous, the same memory), and swapped back after it.
Parameters, gradients and state come out as without the swap, bit for bit, shapes and strides included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_TO_DENSE = (0, 2, 3, 1)  # [O, I, kh, kw] channels-last -> [O, kh, kw, I] contiguous
_FROM_DENSE = (0, 3, 1, 2)


def _channels_last_only(t: Tensor | None) -> bool:
    """A 4-d tensor in channels-last layout that is not also contiguous (1x1 kernels are both)."""
    return (
        t is not None
        and t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def _swap_in(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Swap every CPU parameter whose tensors are all channels-last-only for dense views; returns them."""
    swapped = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.device.type != "cpu" or not _channels_last_only(p) or not _channels_last_only(p.grad):
                continue
            state = optimizer.state.get(p, {})
            tensors = {k: v for k, v in state.items() if isinstance(v, Tensor) and v.dim() == 4}
            if not all(_channels_last_only(v) for v in tensors.values()):
                continue  # state of another layout (e.g. loaded): the plain path, with its copies
            grad = p.grad
            p.data = p.data.permute(*_TO_DENSE)
            p.grad = grad.permute(*_TO_DENSE)
            for k, v in tensors.items():
                state[k] = v.permute(*_TO_DENSE)
            swapped.append(p)
    return swapped


def _swap_out(optimizer: torch.optim.Optimizer, swapped: list[torch.nn.Parameter]) -> None:
    """Undo :func:`_swap_in`, including 4-d state the step created on the dense views."""
    for p in swapped:
        grad = p.grad
        p.data = p.data.permute(*_FROM_DENSE)
        if grad is not None:
            p.grad = grad.permute(*_FROM_DENSE)
        state = optimizer.state.get(p, {})
        for k, v in list(state.items()):
            if isinstance(v, Tensor) and v.dim() == 4:
                state[k] = v.permute(*_FROM_DENSE)


class DenseStepMixin:
    """Mixin for a torch optimiser class: a fused ``step()`` runs on dense views of channels-last parameters.

    Only while ``fused`` is set and no closure is given (a closure would run the model on the swapped views).
    """

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is not None or not self.defaults.get("fused"):  # type: ignore[attr-defined]
            return super().step(closure)  # type: ignore[misc]
        swapped = _swap_in(self)  # type: ignore[arg-type]
        try:
            return super().step()  # type: ignore[misc]
        finally:
            _swap_out(self, swapped)  # type: ignore[arg-type]


class SGD(DenseStepMixin, torch.optim.SGD):
    """``torch.optim.SGD`` with :class:`DenseStepMixin`: its fused CPU step takes channels-last weights uncopied."""


class Adam(DenseStepMixin, torch.optim.Adam):
    """``torch.optim.Adam`` with :class:`DenseStepMixin`: its fused CPU step takes channels-last weights uncopied."""


class AdamW(DenseStepMixin, torch.optim.AdamW):
    """``torch.optim.AdamW`` with :class:`DenseStepMixin`: its fused CPU step takes channels-last weights uncopied."""


# torch's optimisers with fused kernels -> the classes above (same names, subclasses: picklable, isinstance holds)
DENSE_STEP_CLASSES: dict[type[torch.optim.Optimizer], type[torch.optim.Optimizer]] = {
    torch.optim.SGD: SGD, torch.optim.Adam: Adam, torch.optim.AdamW: AdamW,
}


def with_dense_step(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """The class of :data:`DENSE_STEP_CLASSES` for ``cls``; ``cls`` itself for any other optimiser class."""
    return DENSE_STEP_CLASSES.get(cls, cls)
