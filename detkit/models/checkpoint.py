"""Reading detkit checkpoints and rebuilding the model one holds: the one path for resume, eval, inference, export.

A checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain values only, never code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.config.core import config_from_dict
from detkit.config.sections import ExperimentConfig
from detkit.models.classifier import create_classifier
from detkit.models.detector import build_detector
from detkit.models.meta import ModelMeta
from detkit.models.registry import is_detector
from detkit.models.weights import CHECKPOINT_FORMAT, load_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "build_model",
    "checkpoint_config",
    "load_checkpoint",
    "load_model_state",
    "model_from_checkpoint",
]

CHECKPOINT_VERSION = 1


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a detkit checkpoint written by :func:`detkit.engine.checkpoint.save_checkpoint`.

    Loads with ``weights_only=True`` (no arbitrary code runs). Raises ``FileNotFoundError`` when
    ``path`` does not exist and ``ValueError`` when the file is not a detkit checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = load_file(path, what="checkpoint")
    if map_location != "cpu" and isinstance(ckpt, dict):
        ckpt = _to_device(ckpt, torch.device(map_location))
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a detkit checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
                         "use it as a weights file (model.weights=PATH) instead")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has version {ckpt['version']}, newer than this detkit "
                         f"(reads up to {CHECKPOINT_VERSION})")
    return ckpt


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


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


def build_model(cfg: ExperimentConfig, num_classes: int, *, name: str | None = None,
                weights: str | os.PathLike | None = None) -> nn.Module:
    """The model ``cfg`` describes: a detector (``cfg.detect`` gives its keywords) or a classifier.

    Args:
        cfg: the experiment config (``model`` and ``detect`` sections are read).
        num_classes: classes of the head.
        name: architecture (default ``cfg.model.name``).
        weights: initial weights (default ``cfg.model.weights``).
    """
    name = name or cfg.model.name
    weights = cfg.model.weights if weights is None else weights
    if is_detector(name):
        if cfg.model.dropout:
            raise ValueError(f"model.dropout: detectors have no dropout option, got {cfg.model.dropout}; set it to 0")
        return build_detector(name, num_classes, weights, cfg.detect)
    return create_classifier(name, num_classes, weights=weights, dropout=cfg.model.dropout, img_size=cfg.data.img_size)


def checkpoint_config(ckpt: dict[str, Any]) -> ExperimentConfig:
    """The checkpoint's resolved config as an ``ExperimentConfig`` (keys an older detkit lacked keep defaults)."""
    return config_from_dict(ckpt.get("config") or {})


def model_from_checkpoint(checkpoint: str | os.PathLike | dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint holds, with its weights and ``detkit_meta`` (classes and category ids too).

    Args:
        checkpoint: a checkpoint path, or a dict from :func:`load_checkpoint`.

    Returns:
        The model on the CPU (train mode, as built).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a detkit checkpoint, no class names, or weights that do not fit the architecture named.
    """
    source = checkpoint if not isinstance(checkpoint, dict) else "(given as a dict)"
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt)
    meta = ModelMeta.from_dict(ckpt.get("model_meta") or {})
    classes = list(ckpt.get("classes") or meta.classes or [])
    if not classes:
        raise ValueError(f"checkpoint {source} holds no class names; it cannot be rebuilt")
    name = meta.name or cfg.model.name
    model = build_model(cfg, len(classes), name=name, weights="none")
    load_model_state(model, ckpt["model"], source)
    if ckpt.get("model_meta"):
        model.detkit_meta = meta
    return model
