"""Experiments from an ``ExperimentConfig``: datasets, loaders, model, optimiser, schedule, freezer, trainer; run them.

Also the evaluation of a saved checkpoint (``tools/eval.py``) and hyperparameter grids (``tools/tune.py``).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detkit.config import (
    DataConfig,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    resolve_key,
    save_config,
)
from detkit.engine.checkpoint import atomic_write_text, load_checkpoint, load_model_state
from detkit.engine.distributed import (
    DistInfo,
    ShardSampler,
    all_gather_objects,
    barrier,
    cleanup_distributed,
    init_distributed,
    resolve_device,
)
from detkit.engine.tasks import ClassificationTask, Task
from detkit.engine.trainer import (
    Hook,
    NonFiniteLossError,
    Trainer,
    evaluate,
    resolve_amp_dtype,
    seed_everything,
    seed_worker,
)
from detkit.models import WeightsUnavailableError

__all__ = [
    "USER_ERRORS",
    "Experiment",
    "build_experiment",
    "build_loader",
    "build_task",
    "configure_determinism",
    "evaluate_checkpoint",
    "one_line",
    "resolve_normalization",
    "resolve_resume",
    "run_experiment",
    "task_type",
    "tune",
]

logger = logging.getLogger(__name__)

DEFAULT_IMG_SIZE = 224


#: errors a user fixes by changing the config, data or weights (CLIs print them as one line, no traceback);
#: ConfigError and DatasetError are ValueErrors
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, WeightsUnavailableError, NonFiniteLossError)


def one_line(err: BaseException) -> str:
    """``err``'s message on a single line (a CLI's error output)."""
    return " ".join(str(err).split()) or type(err).__name__


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


def task_type(name: str) -> type[Task]:
    """The :class:`Task` class for a config's ``task`` value."""
    if name == "classify":
        return ClassificationTask
    if name == "detect":
        from detkit.engine.detection_task import DetectionTask

        return DetectionTask
    raise ValueError(f"task: expected classify or detect, got {name!r}")


def build_task(cfg: ExperimentConfig, classes: list[str], **datasets: Any) -> Task:
    """The :class:`Task` for ``cfg.task`` over ``classes`` (detection also takes ``train_set``/``val_set``/``category_ids``)."""
    cls = task_type(cfg.task)
    if cls is ClassificationTask:
        return ClassificationTask(classes, label_smoothing=cfg.train.label_smoothing)
    return cls.from_config(cfg, classes, **datasets)


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


def resolve_normalization(model_meta: dict[str, Any], data_cfg: DataConfig, train_set: Any) -> dict[str, Any]:
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
    from detkit.data.stats import compute_mean_std

    mean, std = compute_mean_std(train_set, max_images=data_cfg.stats_max_images, img_size=data_cfg.img_size,
                                 workers=data_cfg.scan_workers)
    logger.info("normalisation from the train set (no pretrained weights, no data.mean/std): mean %s std %s",
                [round(m, 4) for m in mean], [round(s, 4) for s in std])
    return {"mean": list(mean), "std": list(std), "source": "dataset"}


def build_loader(
    dataset: Dataset,
    task: Task,
    data_cfg: DataConfig,
    *,
    train: bool,
    device: torch.device,
    seed: int = 0,
    dist_info: DistInfo | None = None,
) -> DataLoader:
    """A DataLoader for training (shuffled, seeded, sharded under DDP) or evaluation (in order, unpadded shards).

    Args:
        dataset: yields ``(image Tensor[3, H, W], target, path)``.
        task: provides ``collate_fn``.
        data_cfg: batch sizes, workers, pinning, persistence, ``drop_last``.
        train: training loader (shuffle, drop_last) or evaluation loader.
        device: pinning is only used for a CUDA device.
        seed: seeds the shuffle generator and the workers (the trainer reseeds both every epoch).
        dist_info: rank and world size; None for a single process.
    """
    dist_info = dist_info or DistInfo()
    if data_cfg.workers < 0:
        raise ValueError(f"data.workers: expected >= 0, got {data_cfg.workers}")
    if data_cfg.batch_size < 1:
        raise ValueError(f"data.batch_size: expected >= 1, got {data_cfg.batch_size}")
    workers = data_cfg.workers
    worker_args: dict[str, Any] = {}
    if workers > 0:
        worker_args = {"persistent_workers": data_cfg.persistent_workers, "prefetch_factor": data_cfg.prefetch_factor}
    generator = torch.Generator()
    generator.manual_seed(seed)
    distributed = dist_info.world_size > 1
    if train:
        batch_size = data_cfg.batch_size
        per_rank = len(dataset) // dist_info.world_size
        drop_last = data_cfg.drop_last and per_rank >= batch_size
        if data_cfg.drop_last and not drop_last:
            logger.warning("data.drop_last ignored: %d training images per process < batch_size %d",
                           per_rank, batch_size)
        sampler = (DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                      shuffle=True, seed=seed) if distributed else None)
        shuffle = sampler is None
    else:
        batch_size = data_cfg.eval_batch_size or 2 * data_cfg.batch_size
        drop_last = False
        sampler = ShardSampler(len(dataset), dist_info.rank, dist_info.world_size) if distributed else None
        shuffle = False
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
        collate_fn=task.collate_fn, pin_memory=data_cfg.pin_memory and device.type == "cuda", drop_last=drop_last,
        worker_init_fn=seed_worker, generator=generator, **worker_args,
    )


def build_experiment(cfg: ExperimentConfig, *, dist_info: DistInfo | None = None,
                     hooks: Sequence[Hook] = ()) -> Experiment:
    """Build datasets, loaders, model, optimiser, scheduler, freezer and trainer from ``cfg``.

    With ``cfg.train.resume`` set, the model, optimiser, scheduler, scaler, RNG and history are
    restored from the checkpoint (its normalisation and model metadata are reused).
    """
    from detkit.engine.freeze import Freezer
    from detkit.engine.optim import build_optimizer
    from detkit.engine.schedule import build_scheduler

    dist_info = dist_info or DistInfo()
    device = resolve_device(cfg.train.device, dist_info.local_rank)
    configure_determinism(cfg.train.deterministic, device)
    seed_everything(cfg.train.seed)
    resume = resolve_resume(cfg.train.resume, cfg.train.output)
    ckpt = load_checkpoint(resume) if resume is not None else None

    data_cfg = cfg.data
    task_cls = task_type(cfg.task)
    train_set = task_cls.load_split(data_cfg, data_cfg.train_split)
    val_set = task_cls.load_split(data_cfg, data_cfg.val_split, train_set.classes) if data_cfg.val_split else None
    classes = list(train_set.classes)
    if ckpt is not None and ckpt.get("classes") and list(ckpt["classes"]) != classes:
        raise ValueError(f"train.resume: checkpoint {resume} was trained on classes {ckpt['classes']}, "
                         f"but {data_cfg.root} has {classes}")
    task = build_task(cfg, classes, train_set=train_set, val_set=val_set)

    seed_everything(cfg.train.seed)  # the head's init must not depend on how many files were scanned
    distributed = dist_info.world_size > 1
    if distributed and not dist_info.is_main:
        barrier()  # rank 0 fetches pretrained weights into the cache first; the others then read it
    if ckpt is not None:
        model = task.build_model(cfg.model.name, weights="none", dropout=cfg.model.dropout)
        model.detkit_meta = dict(ckpt.get("model_meta") or getattr(model, "detkit_meta", {}))
    else:
        model = task.build_model(cfg.model.name, weights=cfg.model.weights, dropout=cfg.model.dropout)
    if distributed and dist_info.is_main:
        barrier()
    meta = dict(getattr(model, "detkit_meta", {}) or {})
    img_size = data_cfg.img_size or meta.get("input_size") or DEFAULT_IMG_SIZE

    if ckpt is not None and ckpt.get("normalization"):
        normalization = dict(ckpt["normalization"])
    else:
        normalization = resolve_normalization(meta, data_cfg, train_set)
        # every rank must normalise alike; rank 0's values win should sampling ever differ
        normalization = all_gather_objects(normalization)[0]
    train_set.transform = task.build_transform(data_cfg, img_size, normalization, train=True)
    if val_set is not None:
        val_set.transform = task.build_transform(data_cfg, img_size, normalization, train=False)

    train_loader = build_loader(train_set, task, data_cfg, train=True, device=device, seed=cfg.train.seed,
                                dist_info=dist_info)
    val_loader = (build_loader(val_set, task, data_cfg, train=False, device=device, dist_info=dist_info)
                  if val_set is not None else None)

    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = -(-len(train_loader) // cfg.train.accumulate)
    scheduler = build_scheduler(optimizer, cfg.schedule, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch)
    freezer = Freezer(model, cfg.freeze)

    skipped = [str(p) for p, _ in train_set.skipped] + ([str(p) for p, _ in val_set.skipped] if val_set else [])
    summary = {
        "task": cfg.task,
        "model": cfg.model.name,
        "weights": cfg.model.weights,
        "pretrained": bool(meta.get("pretrained", False)),
        "num_classes": len(classes),
        "classes": classes,
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
    trainer = Trainer(
        model, task, optimizer, train_loader, val_loader, cfg=cfg.train, scheduler=scheduler, freezer=freezer,
        device=device, config=config_to_dict(cfg), classes=classes,
        normalization={"mean": normalization["mean"], "std": normalization["std"]}, summary=summary,
        dist_info=dist_info, hooks=hooks,
    )
    if resume is not None:
        trainer.resume(resume)
    return Experiment(cfg=cfg, task=task, model=model, trainer=trainer, train_set=train_set, val_set=val_set,
                      normalization=normalization, dist_info=dist_info, summary=summary)


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
    dist_info = init_distributed(cfg.train.device)
    output = Path(cfg.train.output)
    try:
        with _run_log(output, dist_info.is_main):
            if dist_info.is_main:
                save_config(cfg, output / "config.yaml")
            experiment = build_experiment(cfg, dist_info=dist_info, hooks=hooks)
            result = experiment.trainer.fit()
            best = result.get("best") or {}
            if dist_info.is_main and best:
                logger.info("best %s %.4f at epoch %s; run directory %s", best.get("metric"), best.get("value", 0.0),
                            best.get("epoch"), output)
            return result
    finally:
        cleanup_distributed()


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
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt.get("config") or {})
    classes = list(ckpt.get("classes") or [])
    if not classes:
        raise ValueError(f"checkpoint {checkpoint} holds no class names; it cannot be evaluated")
    normalization = ckpt.get("normalization") or {}
    if not normalization.get("mean") or not normalization.get("std"):
        raise ValueError(f"checkpoint {checkpoint} holds no normalisation mean/std; it cannot be evaluated")
    meta = dict(ckpt.get("model_meta") or {})
    task = build_task(cfg, classes, category_ids=meta.get("category_ids"))
    model = task.build_model(meta.get("name") or cfg.model.name, weights="none", dropout=cfg.model.dropout)
    load_model_state(model, ckpt["model"], checkpoint)
    model.detkit_meta = meta or getattr(model, "detkit_meta", {})

    dev = resolve_device(device)
    data_cfg = DataConfig(**{**vars(cfg.data), "root": str(data_root), "workers": workers})
    if batch_size is not None:
        data_cfg.eval_batch_size = batch_size
    img_size = cfg.data.img_size or meta.get("input_size") or DEFAULT_IMG_SIZE
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
    atomic_write_text(json.dumps(record, indent=2) + "\n", out_dir / "eval_metrics.json")
    return metrics


def tune(cfg: ExperimentConfig, grid: dict[str, list[Any]], output: str | Path) -> dict[str, Any]:
    """Train one run per combination of ``grid`` values and write a results table sorted by the best metric.

    Args:
        cfg: the base config; each run overrides the grid's keys.
        grid: ``{config key: [values]}``; keys are dotted (``optim.lr``) or unique leaf names (``lr``).
        output: the root directory; each run gets its own sub-directory (and TensorBoard events).

    Returns:
        ``{"runs": [{"params": {...}, "dir": str, "best": {...}}], "csv": path, "json": path}``.
    """
    from detkit.engine.runs import RunBuilder, RunManager

    if not grid:
        raise ValueError("grid: expected at least one key with values, e.g. {'optim.lr': [0.01, 0.001]}")
    keys = {name: resolve_key(name) for name in grid}
    task_cls = task_type(cfg.task)
    manager = RunManager(Path(output), metric=task_cls.best_metric, mode=task_cls.best_mode)
    runs_out = []
    for run in RunBuilder.get_runs({name: list(values) for name, values in grid.items()}):
        params = run._params()  # {key as given: value}
        run_dir = manager.run_dir(run)
        overrides = [(keys[name], value) for name, value in params.items()]
        run_cfg = apply_overrides(cfg, overrides + [("train.output", str(run_dir)), ("train.resume", None)])
        logger.info("run %s -> %s", ", ".join(f"{keys[n]}={v}" for n, v in params.items()), run_dir)
        try:
            result = run_experiment(run_cfg)
        except USER_ERRORS as err:  # e.g. a learning rate that diverges: record it and go on
            logger.error("run %s failed: %s", run_dir.name, one_line(err))
            manager.mark_failed(run, one_line(err))
            manager.save_results()
            runs_out.append({"params": params, "dir": str(run_dir), "best": {}, "error": one_line(err)})
            continue
        best = result.get("best") or {}
        # metrics only (never "lr", which would shadow a grid column of the same name)
        scalars = {k: v for k, v in best.items() if (k == "epoch" or k.startswith(("train_", "val_")))
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        manager.record(run, scalars)
        manager.save_results()
        runs_out.append({"params": params, "dir": str(run_dir), "best": scalars})
    csv_path, json_path = manager.save_results()
    return {"runs": runs_out, "csv": str(csv_path), "json": str(json_path)}
