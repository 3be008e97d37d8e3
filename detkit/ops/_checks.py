"""Input validation shared by the box operations.

Every public op checks its tensors here so that errors name the argument, its shape and what was expected.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, value: object) -> Tensor:
    """Raise ``TypeError`` unless ``value`` is a tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_boxes(name: str, boxes: object, ndim: int = 2) -> Tensor:
    """Validate a box tensor of shape ``[..., 4]`` with ``ndim`` dimensions.

    Args:
        name: argument name used in error messages.
        boxes: the candidate tensor, expected ``Tensor[N, 4]`` (``ndim=2``) or ``Tensor[B, N, 4]`` (``ndim=3``).
        ndim: expected number of dimensions.

    Returns:
        The boxes as a floating tensor: integer boxes are converted to float32, floats are kept.
    """
    boxes = check_tensor(name, boxes)
    if boxes.dim() != ndim or boxes.shape[-1] != 4:
        want = "[N, 4]" if ndim == 2 else "[B, N, 4]" if ndim == 3 else f"{ndim}-d [..., 4]"
        raise ValueError(f"{name} must have shape {want}, got {list(boxes.shape)}")
    return as_float(boxes)


def check_box_sets(name: str, boxes: object) -> Tensor:
    """Validate boxes of shape ``[..., N, 4]`` (any leading batch dims); return them as :func:`check_boxes` does."""
    boxes = check_tensor(name, boxes)
    if boxes.dim() < 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] or [..., N, 4], got {list(boxes.shape)}")
    return as_float(boxes)


def as_float(t: Tensor) -> Tensor:
    """Return ``t`` unchanged if floating point, else converted to float32."""
    return t if t.dtype in _FLOAT_TYPES else t.to(torch.float32)


def check_same_device(**tensors: Tensor) -> None:
    """Raise ``ValueError`` if the named tensors live on different devices."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on the same device, got {listed}")


def check_length(name: str, value: Tensor, expected: int, against: str) -> None:
    """Raise ``ValueError`` unless ``value.shape[0] == expected`` (the length of ``against``)."""
    if value.dim() < 1 or value.shape[0] != expected:
        raise ValueError(
            f"{name} must have length {expected} to match {against}, got shape {list(value.shape)}"
        )


def check_number(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float: a Python number or a one-element tensor, not NaN, within ``[low, high]`` when given."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {list(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got nan")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return value
