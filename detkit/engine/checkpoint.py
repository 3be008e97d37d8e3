"""Checkpoints in detkit's format, written atomically, and the RNG state they carry.

Also the atomic text writer used for every file of a run directory (metrics, config, results).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.io import atomic_write, atomic_write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "capture_rng_state",
    "load_checkpoint",
    "load_model_state",
    "restore_rng_state",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "detkit"
CHECKPOINT_VERSION = 1


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
    from detkit.engine.distributed import unwrap_model

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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a detkit checkpoint written by :func:`save_checkpoint`.

    Loads with ``weights_only=True`` (no arbitrary code runs). Raises ``FileNotFoundError`` when
    ``path`` does not exist and ``ValueError`` when the file is not a detkit checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a detkit checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
                         "use it as a weights file (model.weights=PATH) instead")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has version {ckpt['version']}, newer than this detkit "
                         f"(reads up to {CHECKPOINT_VERSION})")
    return ckpt


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: Any) -> None:
    """Load a checkpoint's model weights into ``model``, strictly except for BatchNorm counters.

    Only ``num_batches_tracked`` entries may be missing or extra: torchvision builds detectors with
    pretrained weights using frozen BatchNorm (no counter) and random ones with BatchNorm, which behave
    the same in evaluation. Any other mismatch raises ``ValueError`` naming ``source`` and the keys.
    """
    result = model.load_state_dict(state, strict=False)
    bad = [k for k in [*result.missing_keys, *result.unexpected_keys] if not k.endswith("num_batches_tracked")]
    if bad:
        raise ValueError(f"checkpoint {source} does not fit the {type(model).__name__} it names: "
                         f"{len(bad)} mismatched keys, e.g. {bad[:5]}")
