"""Tiny model files for inference and export tests: detection and classification checkpoints written in no time.

A module named so that no test folder shadows it (tests/ is on the import path of every test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from detkit.config import DetectConfig
from detkit.engine.checkpoint import save_checkpoint
from detkit.engine.tasks import DetectionTask
from detkit.models import create_classifier


def save_tiny_detector(path: Path, classes: Sequence[str], category_ids: Sequence[int], *, model: str = "tiny_ssd",
                       img_size: int = 64, seed: int = 0, **detect: Any) -> Path:
    """A detection checkpoint of an untrained detector (tiny_ssd at 64 px, seed 0) as training writes one.

    ``detect`` sets the checkpoint's ``detect:`` config keys (e.g. ``score_thresh``) over letterbox, ce, smooth_l1.
    """
    torch.manual_seed(seed)
    detect = {"resize_mode": "letterbox", "cls_loss": "ce", "box_loss": "smooth_l1", **detect}
    task = DetectionTask(list(classes), list(category_ids), DetectConfig(**detect))
    net = task.build_model(model, weights="none")
    config = {"task": "detect", "model": {"name": model}, "data": {"img_size": img_size}, "detect": detect}
    return save_checkpoint(path, model=net, epoch=1, config=config, classes=list(classes),
                           normalization={"mean": [0.5] * 3, "std": [0.25] * 3})


def save_tiny_classifier(path: Path, classes: Sequence[str], *, model: str = "timm:test_resnet", img_size: int = 32,
                         seed: int = 0, eval_resize_ratio: float = 0.875) -> Path:
    """A classification checkpoint of an untrained classifier (timm's 0.4M-parameter test_resnet at 32 px)."""
    torch.manual_seed(seed)
    net = create_classifier(model, len(classes), weights="none")
    config = {"task": "classify", "model": {"name": model, "weights": "none"},
              "data": {"img_size": img_size, "augment": {"eval_resize_ratio": eval_resize_ratio}}}
    return save_checkpoint(path, model=net, epoch=1, config=config, classes=list(classes),
                           normalization={"mean": [0.45, 0.5, 0.55], "std": [0.25, 0.2, 0.3]})
