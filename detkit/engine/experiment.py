"""Experiments from an ``ExperimentConfig``: datasets, loaders, model, optimiser, schedule, freezer, trainer; run them.

``build_experiment`` resolves the config step by step (start, data, model, start policy, normalisation, loaders,
trainer); ``run_experiment`` trains it with the run's log and resolved config written to its folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from detkit.collectives import all_gather_objects, barrier
from detkit.config.core import config_to_dict, save_config
from detkit.config.sections import DataConfig, ExperimentConfig
from detkit.data.cache import attach_image_cache
from detkit.data.det_transforms import describe_detection_augment
from detkit.data.folds import fold_indices
from detkit.data.sampling import class_counts, image_labels
from detkit.data.stats import compute_mean_std
from detkit.data.transforms import describe_classification_augment
from detkit.engine.distributed import (
    DistInfo,
    cleanup_distributed,
    init_distributed,
    resolve_device,
)
from detkit.engine.freeze import Freezer
from detkit.engine.loaders import build_loader
from detkit.engine.lr_finder import find_lr, save_lr_find
from detkit.engine.optim import build_optimizer
from detkit.engine.policy import StartPolicy, default_lr, fill_from, resolve_policy
from detkit.engine.schedule import build_scheduler
from detkit.engine.tasks import Task, get_task
from detkit.engine.trainer import Hook, Trainer, resolve_amp_dtype, seed_everything
from detkit.errors import USER_ERRORS, one_line
from detkit.models.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    model_from_checkpoint,
)
from detkit.models.meta import ModelMeta

__all__ = [
    "DEFAULT_IMG_SIZE",
    "USER_ERRORS",
    "Experiment",
    "build_experiment",
    "build_task",
    "configure_determinism",
    "one_line",
    "resolve_normalization",
    "resolve_resume",
    "RUN_FILES",
    "check_output_folder",
    "run_experiment",
]

logger = logging.getLogger(__name__)

#: input side when neither ``data.img_size`` nor the pretrained weights give one
DEFAULT_IMG_SIZE = 224


@dataclass
class Experiment:
    """Everything built from one config, ready to ``trainer.fit()``."""

    cfg: ExperimentConfig
    task: Task
    model: nn.Module
    trainer: Trainer
    train_set: Dataset
    val_set: Dataset | None
    normalization: dict[str, Any]
    dist_info: DistInfo
    summary: dict[str, Any] = field(default_factory=dict)
    policy: StartPolicy | None = None


def build_task(cfg: ExperimentConfig, classes: list[str], **datasets: Any) -> Task:
    """The :class:`Task` registered for ``cfg.task`` over ``classes`` (detection also takes ``train_set``,
    ``val_set`` or ``category_ids``)."""
    return get_task(cfg.task).from_config(cfg, classes, **datasets)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels when asked (``torch.use_deterministic_algorithms``), else fast cuDNN autotuning."""
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"


def resolve_resume(resume: str | None, output: str | Path) -> Path | None:
    """The checkpoint to resume from: ``resume`` itself, or ``OUTPUT/last.pt`` for ``auto``.

    ``auto`` without an existing ``last.pt`` starts fresh (None); an explicit missing path raises
    ``FileNotFoundError``.
    """
    if not resume:
        return None
    if resume == "auto":
        path = Path(output) / "last.pt"
        if path.is_file():
            return path
        logger.info("resume=auto: no %s yet, starting a new run", path)
        return None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"train.resume: checkpoint {path} does not exist (use auto for OUTPUT/last.pt)")
    return path


def resolve_normalization(model_meta: Mapping[str, Any], data_cfg: DataConfig, train_set: Any) -> dict[str, Any]:
    """Mean/std for the inputs: the pretrained weights' own, else ``data.mean/std``, else the train set's.

    Returns:
        ``{"mean": [3 floats], "std": [3 floats], "source": "pretrained" | "config" | "dataset"}`` in
        [0, 1] units.
    """
    if model_meta.get("pretrained") and model_meta.get("mean") and model_meta.get("std"):
        if data_cfg.mean is not None or data_cfg.std is not None:
            logger.info("data.mean/std ignored: pretrained weights bring their own normalisation")
        return {"mean": [float(v) for v in model_meta["mean"]], "std": [float(v) for v in model_meta["std"]],
                "source": "pretrained"}
    if data_cfg.mean is not None or data_cfg.std is not None:
        for name, value in (("data.mean", data_cfg.mean), ("data.std", data_cfg.std)):
            if value is None or len(value) != 3:
                raise ValueError(f"{name}: expected 3 per-channel values in [0, 1] units (set both mean and std), "
                                 f"got {value}")
        if any(s <= 0 for s in data_cfg.std):
            raise ValueError(f"data.std: expected positive values, got {data_cfg.std}")
        return {"mean": list(data_cfg.mean), "std": list(data_cfg.std), "source": "config"}
    mean, std = compute_mean_std(train_set, max_images=data_cfg.stats_max_images, img_size=data_cfg.img_size,
                                 workers=data_cfg.scan_workers)
    logger.info("normalisation from the train set (no pretrained weights, no data.mean/std): mean %s std %s",
                [round(m, 4) for m in mean], [round(s, 4) for s in std])
    return {"mean": list(mean), "std": list(std), "source": "dataset"}


def build_experiment(cfg: ExperimentConfig, *, dist_info: DistInfo | None = None,
                     hooks: Sequence[Hook] = ()) -> Experiment:
    """Build datasets, loaders, model, optimiser, scheduler, freezer and trainer from ``cfg``.

    Keys left null (or ``auto``) are resolved on the way, and the returned ``Experiment.cfg`` holds their values:
    the task's (detection: first level and default boxes from the train boxes), then the start policy's
    (:func:`detkit.engine.policy.resolve_policy`, by whether pretrained weights were actually loaded), then an
    ``optim.lr: auto`` from the LR finder. With ``cfg.train.resume`` set, the model, optimiser, scheduler, scaler,
    RNG and history are restored from the checkpoint (its normalisation, model metadata and resolved keys are
    reused).
    """
    dist_info = dist_info or DistInfo()
    device = resolve_device(cfg.train.device, dist_info.local_rank)
    configure_determinism(cfg.train.deterministic, device)
    seed_everything(cfg.train.seed)
    resume = resolve_resume(cfg.train.resume, cfg.train.output)
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        check_resume_fits(cfg, ckpt, resume)
        cfg = fill_from(cfg, checkpoint_config(ckpt))

    task, train_set, val_set = _build_data(cfg, ckpt, resume)
    cfg, task, model, img_size, facts = _build_model_for_data(cfg, task, train_set, val_set, ckpt, dist_info)
    meta = ModelMeta.of(model)
    smallest = getattr(model, "min_input_size", 1)
    if img_size < smallest:
        raise ValueError(f"data.img_size: {cfg.model.name} needs inputs of at least {smallest} px, got {img_size}")
    cfg, policy = resolve_policy(cfg, pretrained=bool(meta and meta.pretrained), img_size=img_size)
    task = build_task(cfg, list(task.classes), train_set=train_set, val_set=val_set)
    if ckpt is not None and ckpt.get("normalization"):
        normalization = dict(ckpt["normalization"])
    else:
        normalization = resolve_normalization(meta or {}, cfg.data, train_set)
        # every rank must normalise alike; rank 0's values win should sampling ever differ
        normalization = all_gather_objects(normalization)[0]
    train_set.transform = task.build_transform(cfg.data, img_size, normalization, train=True, dataset=train_set)
    if val_set is not None:
        val_set.transform = task.build_transform(cfg.data, img_size, normalization, train=False)

    summary = _run_summary(cfg, task, meta, img_size, normalization, train_set, val_set, device, dist_info)
    summary.update(facts, policy=policy.name, policy_reason=policy.reason, policy_filled=policy.filled)
    _log_start(cfg, task, policy, train_set, val_set)
    cfg, trainer = _build_trainer(cfg, task, model, train_set, val_set, normalization, summary, device, dist_info,
                                  hooks)
    if resume is not None:
        trainer.resume(resume)
    return Experiment(cfg=cfg, task=task, model=model, trainer=trainer, train_set=train_set, val_set=val_set,
                      normalization=normalization, dist_info=dist_info, summary=summary, policy=policy)


def _build_model_for_data(cfg: ExperimentConfig, task: Task, train_set: Any, val_set: Any | None,
                          ckpt: dict[str, Any] | None, dist_info: DistInfo
                          ) -> tuple[ExperimentConfig, Task, nn.Module, int, dict[str, Any]]:
    """The model, after the task has filled the keys the train set decides (a new run only); the model is built
    again when they change it (e.g. fitted default boxes). Returns ``(cfg, task, model, img_size, facts)``."""
    seed_everything(cfg.train.seed)  # the head's init must not depend on how many files were scanned
    model = _build_model(cfg, task, ckpt, dist_info)
    meta = ModelMeta.of(model)
    img_size = cfg.data.img_size or (meta.input_size if meta else None) or DEFAULT_IMG_SIZE
    facts: dict[str, Any] = {}
    if ckpt is None:
        resolved, facts = task.resolve_config(cfg, train_set, img_size)
        if resolved != cfg:
            cfg, task = resolved, build_task(resolved, list(task.classes), train_set=train_set, val_set=val_set)
            seed_everything(cfg.train.seed)
            model = _build_model(cfg, task, ckpt, dist_info)
    return cfg, task, model, img_size, facts


def _log_start(cfg: ExperimentConfig, task: Task, policy: StartPolicy, train_set: Any, val_set: Any | None) -> None:
    """Log once, before training: the policy in words, the class counts, and each enabled augmentation."""
    logger.info("%s", policy.describe())
    for name, split in (("train", train_set), ("val", val_set)):
        if split is not None:
            counts = class_counts(image_labels(split), len(task.classes))
            unit = "boxes" if cfg.task == "detect" else "images"
            logger.info("%s %s per class: %s", name, unit, ", ".join(f"{c} {n}" for c, n in zip(task.classes, counts)))
    if cfg.task == "detect":
        lines, section = describe_detection_augment(cfg.detect.augment), "detect.augment"
    else:
        lines, section = describe_classification_augment(cfg.data.augment), "data.augment"
    preset = (cfg.detect.augment if cfg.task == "detect" else cfg.data.augment).preset
    logger.info("train augmentation (%s.preset: %s): %s", section, preset, "; ".join(lines) or "none")


def check_resume_fits(cfg: ExperimentConfig, ckpt: dict[str, Any], path: Path) -> None:
    """Raise ``ValueError`` naming both when the checkpoint to resume is of another task or architecture."""
    saved = checkpoint_config(ckpt)
    name = ModelMeta.from_dict(ckpt.get("model_meta") or {}).name or saved.model.name
    if saved.task != cfg.task or name != cfg.model.name:
        raise ValueError(f"train.resume: checkpoint {path} is a {saved.task} checkpoint of {name}, but this run "
                         f"trains {cfg.task} with {cfg.model.name}; resume with the same task and model.name, "
                         f"or start a new run (another train.output)")


def _build_data(cfg: ExperimentConfig, ckpt: dict[str, Any] | None, resume: Path | None
                ) -> tuple[Task, Any, Any | None]:
    """The task and its train/val splits (without transforms); a resumed run must see the same classes."""
    data_cfg = cfg.data
    task_cls = get_task(cfg.task)
    train_set = task_cls.load_split(data_cfg, data_cfg.train_split)
    classes = list(train_set.classes)
    if data_cfg.kfold is not None:  # both splits are folds of the train split; val_split is not read
        train_set, val_set = _fold_splits(cfg, classes, train_set)
    else:
        val_set = task_cls.load_split(data_cfg, data_cfg.val_split, train_set.classes) if data_cfg.val_split else None
    if ckpt is not None and ckpt.get("classes") and list(ckpt["classes"]) != classes:
        raise ValueError(f"train.resume: checkpoint {resume} was trained on classes {ckpt['classes']}, "
                         f"but {data_cfg.root} has {classes}")
    attach_image_cache(data_cfg, [train_set, val_set])  # data.cache: ram decodes every image once, here
    return build_task(cfg, classes, train_set=train_set, val_set=val_set), train_set, val_set


def _fold_splits(cfg: ExperimentConfig, classes: list[str], full: Any) -> tuple[Any, Any]:
    """Train and validation parts of fold ``data.fold`` of ``data.kfold`` (stratified by class for classification,
    by image for detection; seeded by ``train.seed``)."""
    labels = [sample[0] if cfg.task == "classify" else None for sample in image_labels(full)]
    train_idx, val_idx = fold_indices(labels, cfg.data.kfold, cfg.data.fold, seed=cfg.train.seed)
    task = build_task(cfg, classes, train_set=full)
    logger.info("fold %d of %d: %d train, %d val images from %s", cfg.data.fold, cfg.data.kfold, len(train_idx),
                len(val_idx), cfg.data.train_split)
    return task.subset(full, train_idx), task.subset(full, val_idx)


def _build_model(cfg: ExperimentConfig, task: Task, ckpt: dict[str, Any] | None, dist_info: DistInfo) -> nn.Module:
    """The task's model: from the checkpoint when resuming, else with ``model.weights`` (rank 0 fetches first)."""
    distributed = dist_info.world_size > 1
    if distributed and not dist_info.is_main:
        barrier()  # rank 0 fetches pretrained weights into the cache first; the others then read it
    if ckpt is not None:
        model = model_from_checkpoint(ckpt)
    else:
        model = task.build_model(cfg.model.name, weights=cfg.model.weights, dropout=cfg.model.dropout,
                                 img_size=cfg.data.img_size)
    if distributed and dist_info.is_main:
        barrier()
    return model


def _run_summary(cfg: ExperimentConfig, task: Task, meta: ModelMeta | None, img_size: int,
                 normalization: dict[str, Any], train_set: Any, val_set: Any | None, device: torch.device,
                 dist_info: DistInfo) -> dict[str, Any]:
    """The facts of a run recorded in ``metrics.json``'s ``summary``."""
    skipped = [str(p) for p, _ in train_set.skipped] + ([str(p) for p, _ in val_set.skipped] if val_set else [])
    return {
        "task": cfg.task,
        "model": cfg.model.name,
        "weights": cfg.model.weights,
        "pretrained": bool(meta.pretrained) if meta else False,
        "num_classes": len(task.classes),
        "classes": list(task.classes),
        "img_size": img_size,
        "normalization": normalization,
        "train_images": len(train_set),
        "val_images": len(val_set) if val_set is not None else 0,
        "skipped_images": len(skipped),
        "skipped_files": skipped,
        "device": str(device),
        "world_size": dist_info.world_size,
        "amp": cfg.train.amp,
    }


def _build_trainer(cfg: ExperimentConfig, task: Task, model: nn.Module, train_set: Any, val_set: Any | None,
                   normalization: dict[str, Any], summary: dict[str, Any], device: torch.device,
                   dist_info: DistInfo, hooks: Sequence[Hook]) -> tuple[ExperimentConfig, Trainer]:
    """Loaders, optimiser over per-stage groups (``optim.lr: auto`` first replaced by the LR finder's
    suggestion), schedule, freezer and the trainer holding them; returns the config with that lr."""
    train_loader = build_loader(train_set, task, cfg.data, train=True, device=device, seed=cfg.train.seed,
                                dist_info=dist_info)
    val_loader = (build_loader(val_set, task, cfg.data, train=False, device=device, dist_info=dist_info)
                  if val_set is not None else None)
    model.to(device)
    if cfg.optim.lr == "auto":
        cfg = _find_lr(cfg, task, model, train_loader, summary, device, dist_info)
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = -(-len(train_loader) // cfg.train.accumulate)
    scheduler = build_scheduler(optimizer, cfg.schedule, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch)
    return cfg, Trainer(
        model, task, optimizer, train_loader, val_loader, cfg=cfg.train, scheduler=scheduler,
        freezer=Freezer(model, cfg.freeze), device=device, config=config_to_dict(cfg), classes=list(task.classes),
        normalization={"mean": normalization["mean"], "std": normalization["std"]}, summary=summary,
        dist_info=dist_info, hooks=hooks,
    )


#: files that mark a folder as holding a training run
RUN_FILES = ("last.pt", "best.pt", "metrics.json")


def check_output_folder(cfg: ExperimentConfig) -> None:
    """Refuse, before anything is built, an output folder that cannot take this run.

    A folder holding another run (``last.pt``, ``best.pt`` or ``metrics.json``) is refused unless the run resumes
    (``train.resume``) or ``train.exist_ok`` allows replacing it; a folder that cannot be written is refused too.
    """
    output = Path(cfg.train.output)
    found = [name for name in RUN_FILES if (output / name).exists()]
    if found and not cfg.train.resume and not cfg.train.exist_ok:
        raise ValueError(f"train.output: {output} already holds a run ({', '.join(found)}); continue it with "
                         f"--resume auto, replace it with --exist-ok (train.exist_ok=true), or choose another --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"train.output: cannot write to {output}: {err.strerror or err}") from err


def _find_lr(cfg: ExperimentConfig, task: Task, model: nn.Module, loader: Any, summary: dict[str, Any],
             device: torch.device, dist_info: DistInfo) -> ExperimentConfig:
    """``cfg`` with ``optim.lr: auto`` replaced by the LR finder's suggestion (plot and JSON in OUTPUT/lr_find/)."""
    if dist_info.world_size > 1:
        raise ValueError("optim.lr: auto runs the LR finder in one process; run tools/lr_find.py first and set "
                         "optim.lr to its suggestion for a torchrun run")
    provisional = dataclasses.replace(cfg.optim, lr=default_lr(summary.get("policy", "scratch"), cfg.optim.name))
    optimizer = build_optimizer(model, provisional)
    amp_dtype = resolve_amp_dtype(cfg.train.amp, cfg.train.amp_dtype, device)
    result = find_lr(model, task, optimizer, loader, base_lr=provisional.lr, device=device, amp_dtype=amp_dtype)
    save_lr_find(result, Path(cfg.train.output) / "lr_find")
    summary["lr_find"] = {"suggestion": result.suggestion, "minimum": result.minimum, "valley": result.valley,
                          "steepest": result.steepest, "stopped": result.stopped}
    logger.info("optim.lr: auto -> %.3g (LR finder; plot in %s)", result.suggestion,
                Path(cfg.train.output) / "lr_find" / "lr_find.png")
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=float(result.suggestion)))


@contextmanager
def _run_log(output: Path, enabled: bool) -> Iterator[None]:
    """Copy detkit's log records to ``OUTPUT/train.log`` for the duration of a run."""
    if not enabled:
        yield
        return
    output.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(output / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("detkit")
    previous = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def run_experiment(cfg: ExperimentConfig, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Train ``cfg`` end to end (under torchrun: one process of a DDP run) and return the trainer's results.

    Rank 0 writes ``OUTPUT/config.yaml`` (the resolved config), ``train.log``, metrics, TensorBoard
    events, ``confusion_matrix.png`` and the ``best.pt``/``last.pt`` checkpoints.

    Returns:
        ``{"epochs": [per-epoch metrics], "best": {...}, "summary": {...}}``.
    """
    output = Path(cfg.train.output)
    check_output_folder(cfg)
    dist_info = init_distributed(cfg.train.device)
    try:
        with _run_log(output, dist_info.is_main):
            experiment = build_experiment(cfg, dist_info=dist_info, hooks=hooks)
            if dist_info.is_main:  # resolved: every key the policy, the data or the LR finder filled is in it
                header = experiment.policy.describe() if experiment.policy is not None else None
                save_config(experiment.cfg, output / "config.yaml", header=header)
            result = experiment.trainer.fit()
            best = result.get("best") or {}
            if dist_info.is_main and best:
                logger.info("best %s %.4f at epoch %s; run directory %s", best.get("metric"), best.get("value", 0.0),
                            best.get("epoch"), output)
            return result
    finally:
        cleanup_distributed()


