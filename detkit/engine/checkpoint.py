"""Writing checkpoints in detkit's format (atomically) and the RNG state they carry.

Reading them, and rebuilding their model, is :mod:`detkit.models.checkpoint` (re-exported here).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.io import atomic_write
from detkit.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    load_model_state,
)
from detkit.models.stages import unwrap_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "atomic_save",
    "capture_rng_state",
    "load_checkpoint",
    "load_model_state",
    "restore_rng_state",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` made atomic: a crash mid-write leaves the previous file intact."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and every CUDA device), numpy and ``random`` as plain values/tensors."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`capture_rng_state` (missing entries are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in state:
        random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in states])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    config: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    normalization: dict[str, list[float]] | None = None,
    metrics: dict[str, Any] | None = None,
    best_metric: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a detkit checkpoint and return its path.

    Args:
        path: destination file (``last.pt``, ``best.pt``); its directory is created.
        model: the model; a DDP/compiled wrapper is unwrapped so keys carry no ``module.`` prefix.
            Its ``detkit_meta`` dict (if any) is stored as ``model_meta``.
        epoch: the last completed epoch (epochs are counted from 1).
        optimizer, scheduler, scaler: objects with ``state_dict()``; stored when given.
        config: the resolved experiment config as a plain dict.
        classes: class names, index ``i`` naming logit ``i``.
        normalization: ``{"mean": [3 floats], "std": [3 floats]}`` in [0, 1] units.
        metrics: the metrics to keep with the weights (plain values only).
        best_metric: the best value of the run's selection metric so far.
        extra: further plain entries merged into the checkpoint (they may not replace the above).
    """
    inner = unwrap_model(model)
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": inner.state_dict(),
        "model_meta": dict(getattr(inner, "detkit_meta", {}) or {}),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "config": config or {},
        "classes": list(classes or []),
        "normalization": normalization or {},
        "metrics": metrics or {},
        "best_metric": best_metric,
        "rng": capture_rng_state(),
    }
    for key, value in (extra or {}).items():
        if key in ckpt:
            raise ValueError(f"extra: key {key!r} would replace a checkpoint entry of the same name")
        ckpt[key] = value
    return atomic_save(ckpt, path)
