"""Evaluating a saved checkpoint on a dataset split with its own task, classes, input size and normalisation.

What ``tools/eval.py`` runs; it writes the same reports training writes (metrics JSON, confusion matrix, PR curves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from detkit.config.sections import DataConfig
from detkit.engine.distributed import resolve_device
from detkit.engine.experiment import DEFAULT_IMG_SIZE, build_task
from detkit.engine.loaders import build_loader
from detkit.engine.trainer import evaluate, resolve_amp_dtype
from detkit.io import atomic_write_json
from detkit.models.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    model_from_checkpoint,
)
from detkit.models.meta import ModelMeta

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str = "val",
    output: str | Path | None = None,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Evaluate a detkit checkpoint on ``DATA_ROOT/<split>`` with its own task, classes, input size and normalisation.

    A classification checkpoint reads ``DATA_ROOT/<split>/<class>/*``; a detection checkpoint reads the split's
    COCO annotations (``DATA_ROOT/<split>/annotations.json`` or ``DATA_ROOT/annotations/instances_<split>.json``).
    Writes to ``output`` (default: ``<checkpoint dir>/eval_<split>``) ``eval_metrics.json`` (every returned
    value but tensors; the confusion matrix as a list) and the task's artifacts, the same files training writes:
    classification ``confusion_matrix.pt`` (Tensor[C, C] int64, rows true, cols predicted) and
    ``confusion_matrix.png``; detection ``pr_curves.png`` (precision against recall at IoU 0.5, one curve per
    class; ``pr_curves/<class>.png`` one class each) and ``val_predictions.png`` (predictions beside ground
    truth for the first images).

    Returns:
        The task's metrics plus ``task`` (``"classify"`` or ``"detect"``), ``checkpoint``, ``data``, ``split``,
        ``output``, ``classes``, ``images`` (images evaluated), ``skipped_images`` (how many unreadable images
        were skipped) and ``skipped_files``. Classification: ``val_loss``, ``val_acc``, ``val_acc5``,
        ``val_mean_recall``, ``val_count``, ``val_per_class`` (``{name: {"precision", "recall"}}``),
        ``most_confused``, ``confusion_matrix`` (Tensor[C, C]). Detection (pycocotools COCOeval, ``-1`` where
        nothing can be measured): ``val_map`` (AP@[.5:.95]), ``val_map50``, ``val_map75``,
        ``val_map_{small,medium,large}``, ``val_ar1``, ``val_ar10``, ``val_ar100``, ``val_ar_{small,medium,large}``,
        ``val_images``, ``val_detections``, ``val_loss*`` (single-shot detectors), ``val_per_class_ap``
        (``{name: {"ap", "ap50"}}``), ``pr_curves`` (Tensor[C, 101]) and ``prediction_grid`` (Tensor[H, W, 3] uint8).
    """
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size: expected an integer >= 1 (images per batch), got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers: expected >= 0 DataLoader worker processes, got {workers}")
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt)
    classes = list(ckpt.get("classes") or [])
    if not classes:
        raise ValueError(f"checkpoint {checkpoint} holds no class names; it cannot be evaluated")
    normalization = ckpt.get("normalization") or {}
    if not normalization.get("mean") or not normalization.get("std"):
        raise ValueError(f"checkpoint {checkpoint} holds no normalisation mean/std; it cannot be evaluated")
    meta = ModelMeta.from_dict(ckpt.get("model_meta") or {})
    task = build_task(cfg, classes, category_ids=meta.category_ids)
    model = model_from_checkpoint(ckpt)

    dev = resolve_device(device)
    data_cfg = DataConfig(**{**vars(cfg.data), "root": str(data_root), "workers": workers,
                             "eval_batch_size": batch_size or cfg.data.eval_batch_size})
    img_size = cfg.data.img_size or meta.input_size or DEFAULT_IMG_SIZE
    dataset = task.load_split(data_cfg, split, classes)
    dataset.transform = task.build_transform(data_cfg, img_size, normalization, train=False)
    loader = build_loader(dataset, task, data_cfg, train=False, device=dev)
    model.to(dev)
    amp = resolve_amp_dtype(cfg.train.amp, cfg.train.amp_dtype, dev) if dev.type == "cuda" else None
    metrics = evaluate(model, task, loader, dev, amp_dtype=amp, channels_last=cfg.train.channels_last, progress=True)

    out_dir = Path(output) if output is not None else checkpoint.parent / f"eval_{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    task.save_artifacts(metrics, out_dir)
    metrics.update({"task": task.name, "checkpoint": str(checkpoint), "data": str(data_root), "split": split,
                    "output": str(out_dir), "classes": classes, "images": len(dataset),
                    "skipped_images": len(dataset.skipped), "skipped_files": [str(p) for p, _ in dataset.skipped]})
    record = {k: v for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    cm = metrics.get("confusion_matrix")
    if cm is not None:
        record["confusion_matrix"] = cm.tolist()
    atomic_write_json(out_dir / "eval_metrics.json", record)
    return metrics
