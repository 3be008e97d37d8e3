"""The training loop shared by every task: epochs of optimiser steps, validation, checkpoints and run logs.

Task-specific work (model output, loss, metrics, plots) is delegated to a :class:`detkit.engine.tasks.Task`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detkit.collectives import all_reduce_sum, is_distributed
from detkit.config.sections import TrainConfig
from detkit.data.seeding import reseed_transforms
from detkit.engine.checkpoint import restore_rng_state, save_checkpoint
from detkit.engine.distributed import DistInfo
from detkit.engine.ema import ModelEma
from detkit.engine.freeze import Freezer
from detkit.engine.tasks.base import Task
from detkit.errors import NonFiniteLossError
from detkit.io import atomic_write, atomic_write_json, atomic_write_text, remove_stale_temp_files
from detkit.models.checkpoint import load_checkpoint
from detkit.models.stages import unwrap_model

__all__ = [
    "NonFiniteLossError",
    "StopTraining",
    "Trainer",
    "epoch_seed",
    "evaluate",
    "reseed_transforms",
    "resolve_amp_dtype",
    "seed_everything",
    "seed_worker",
]

logger = logging.getLogger(__name__)

Hook = Callable[["Trainer", dict[str, Any]], None]


class StopTraining(Exception):
    """Raised by an epoch hook to end :meth:`Trainer.fit` cleanly after the current epoch."""


# ----------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded with ``seed`` (a pure function: resuming repeats it)."""
    return (seed * 1_000_003 + epoch * 7919) % 2**63


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seed ``random``, numpy and the augmentations in each worker.

    (OpenCV's thread count is deliberately not touched here: ``cv2.setNumThreads`` in a forked worker
    can deadlock on the thread pool inherited from the parent.)

    torch already seeds each worker with ``base_seed + worker_id``, where ``base_seed`` comes from the
    loader's generator; everything else is derived from that seed so workers differ and runs repeat.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        reseed_transforms(info.dataset, seed)


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Train ``model`` for a :class:`Task` with validation, checkpoints and run logs.

    Args:
        model: the model (not yet wrapped for DDP; the trainer wraps it when a process group exists).
        task: the :class:`Task` (loss, evaluation, artifacts).
        optimizer: holds every parameter, frozen ones included (see ``detkit.engine.optim``).
        train_loader: yields ``(images Tensor[B, 3, H, W], targets, paths list[str])``.
        val_loader: same batches for validation, or None to skip validation.
        cfg: a :class:`detkit.config.TrainConfig` (epochs, amp, clipping, accumulation, output, ...).
        scheduler: stepped once per optimiser step, or None.
        freezer: an object with ``apply(epoch_index) -> list[str]`` called right after
            ``model.train()`` at every epoch start (``detkit.engine.freeze.Freezer``), or None.
        device: where to train (``detkit.engine.distributed.resolve_device``).
        config: the resolved experiment config as a plain dict (stored in checkpoints).
        classes: class names (stored in checkpoints).
        normalization: ``{"mean": [3 floats], "std": [3 floats]}`` in [0, 1] units (stored in checkpoints).
        summary: extra facts for ``metrics.json``'s ``summary`` (skipped images, pretrained flag, ...).
        dist_info: this process's place in a DDP run (None: single process).
        hooks: callables ``hook(trainer, row)`` run after every epoch's logs and checkpoints are
            written; raising :class:`StopTraining` ends the run after that epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        optimizer: torch.optim.Optimizer,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        *,
        cfg: TrainConfig,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        freezer: Freezer | None = None,
        device: torch.device | str = "cpu",
        config: dict[str, Any] | None = None,
        classes: list[str] | None = None,
        normalization: dict[str, list[float]] | None = None,
        summary: dict[str, Any] | None = None,
        dist_info: DistInfo | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        cfg.validate()  # a TrainConfig changed after it was built is checked again here
        if len(train_loader) == 0:
            raise ValueError("train_loader: yields no batches (dataset smaller than one batch with drop_last?)")
        self.cfg = cfg
        self.task = task
        self.device = torch.device(device)
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.freezer = freezer
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.config = config or {}
        self.classes = list(classes or [])
        self.normalization = normalization or {}
        self.summary = dict(summary or {})
        self.dist = dist_info or DistInfo()
        self.hooks = list(hooks)
        self.output = Path(cfg.output)
        self.amp_dtype = resolve_amp_dtype(cfg.amp, cfg.amp_dtype, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.best_metric, self.best_mode = (task.best_metric, task.best_mode) if val_loader is not None \
            else ("train_loss", "min")
        self.best_value: float | None = None
        self.best_row: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 1
        self.global_step = 0
        self._ddp_model: nn.Module | None = None
        self._trainable: tuple[bool, ...] | None = None
        self._writer: Any | None = None
        self._fit_start: float | None = None
        self._time_before = 0.0
        self.ema = ModelEma(self.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema else None

    # ------------------------------------------------------------------ public API

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def fit(self) -> dict[str, Any]:
        """Train from :attr:`start_epoch` to ``cfg.epochs``; returns ``{"epochs": [...], "best": {...}}``."""
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            for folder in (self.output, self.output / "pr_curves"):
                remove_stale_temp_files(folder)  # left by writes a crash interrupted
        self._fit_start = time.perf_counter()
        self._time_before = float(self.summary.get("train_time_s", 0.0))  # earlier sessions of a resumed run
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs + 1):
                row = self._run_epoch(epoch)
                try:
                    for hook in self.hooks:
                        hook(self, row)
                except StopTraining:
                    logger.info("stopping after epoch %d (requested by a hook)", epoch)
                    break
                if self._early_stop(epoch):
                    break
        finally:
            if self._writer is not None:
                self._writer.flush()
        self.summary["train_time_s"] = self._total_time()
        if self.is_main:
            self._write_metrics()
            self._write_hparams()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return {"epochs": self.history, "best": self.best_row, "summary": self.summary}

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over ``train_loader``; returns ``train_*`` metrics, ``lr/<stage>`` (each stage's lr at the end
        of the epoch) and ``images_per_s``."""
        self._prepare_epoch(epoch)
        model = self._ddp_model or self.model
        cfg = self.cfg
        n_batches = len(self.train_loader)
        sums: dict[str, Tensor] = {}
        images_seen = 0
        start = time.perf_counter()
        bar = self._progress(self.train_loader, f"epoch {epoch}/{cfg.epochs}", n_batches)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            images, targets, paths = self.task.move_batch(batch, self.device, cfg.channels_last)
            group_start = (i // cfg.accumulate) * cfg.accumulate
            group_size = min(cfg.accumulate, n_batches - group_start)
            is_step = i == group_start + group_size - 1
            sync = contextlib.nullcontext() if is_step or self._ddp_model is None else self._ddp_model.no_sync()
            with sync:
                with self._autocast():
                    loss, batch_sums = self.task.train_step(model, images, targets)
                self._check_finite(loss, epoch, i, paths)
                self.scaler.scale(loss / group_size).backward()
            if is_step:
                self._optimizer_step()
            for k, v in batch_sums.items():
                v = v.detach().to(torch.float64)
                sums[k] = sums[k] + v if k in sums else v
            images_seen += len(images)  # a Tensor[B, ...] or a list of B images (detection)
            if bar is not self.train_loader and (i % 10 == 0 or i == n_batches - 1):  # .item() syncs CUDA
                elapsed = max(time.perf_counter() - start, 1e-9)
                shown = self.task.summarize_train({k: v.item() for k, v in sums.items()})
                bar.set_postfix({k.removeprefix("train_"): f"{v:.4f}" for k, v in shown.items()}
                                | {"lr": self._lr_text(short=True), "img/s": f"{images_seen / elapsed:.0f}"},
                                refresh=False)
            if cfg.log_every and is_step and self.global_step % cfg.log_every == 0 and self.is_main:
                logger.info("epoch %d step %d: loss %.4f, %s", epoch, self.global_step, loss.item(), self._lr_text())
        elapsed = time.perf_counter() - start
        self._sync_buffers()
        keys = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[k] for k in keys]).to(self._reduce_device()))
        images_total = all_reduce_sum(torch.tensor([float(images_seen)], device=self._reduce_device()))
        metrics = self.task.summarize_train({k: float(v) for k, v in zip(keys, totals.cpu())})
        metrics.update({f"lr/{name}": lr for name, lr in self._group_lrs().items()})
        metrics["images_per_s"] = float(images_total) / max(elapsed, 1e-9)
        metrics["train_time_s"] = elapsed
        return metrics

    @torch.no_grad()
    def evaluate(self, loader: DataLoader | None = None) -> dict[str, Any]:
        """Validate on ``loader`` (default: ``val_loader``) with every rank's results combined."""
        loader = loader if loader is not None else self.val_loader
        if loader is None:
            raise ValueError("loader: no validation loader given and the trainer has none")
        model = self.ema.module if self.ema is not None else self.model  # with train.ema: the average is validated
        return evaluate(model, self.task, loader, self.device, amp_dtype=self.amp_dtype,
                        channels_last=self.cfg.channels_last, progress=self.cfg.progress and self.is_main)

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Load model, optimiser, scheduler, scaler, RNG, best metric and history from a checkpoint.

        Training then continues at the epoch after the checkpoint's. Returns the checkpoint dict.
        """
        ckpt = load_checkpoint(path, map_location="cpu")
        ema_state = ckpt.get("ema")
        if self.ema is not None and ema_state:  # "model" holds the average; the trained weights are kept beside it
            unwrap_model(self.model).load_state_dict(ema_state["training_model"])
            self.ema.load_state_dict(ema_state, ckpt["model"])
        else:
            unwrap_model(self.model).load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self._warn_if_schedule_changed(ckpt["scheduler"], path)
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng"):
            restore_rng_state(ckpt["rng"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_value = ckpt.get("best_metric")
        state = ckpt.get("trainer") or {}
        self.history = list(state.get("history", []))
        self.best_row = state.get("best_row")
        self.global_step = int(state.get("global_step", 0))
        if state.get("early_stop"):
            self.summary["early_stop"] = state["early_stop"]
        if "train_time_s" in state:
            self.summary["train_time_s"] = state["train_time_s"]
        if self.is_main:
            self._repair_best_checkpoint(int(ckpt["epoch"]))
        if self.start_epoch > self.cfg.epochs:
            logger.warning("checkpoint %s already completed epoch %d of %d: nothing left to train",
                           path, ckpt["epoch"], self.cfg.epochs)
        else:
            logger.info("resumed from %s: continuing at epoch %d of %d", path, self.start_epoch, self.cfg.epochs)
        return ckpt

    def _warn_if_schedule_changed(self, saved: dict[str, Any], path: str | Path) -> None:
        """Say so when the run now asks for another length than the schedule the checkpoint continues."""
        saved_total = next(iter(saved.get("lr_lambdas") or [{}]), {}).get("total_steps")
        planned = getattr(next(iter(getattr(self.scheduler, "lr_lambdas", [])), None), "total_steps", None)
        if saved_total is not None and planned is not None and saved_total != planned:
            logger.warning(
                "train.epochs (or the batches per epoch) changed since %s: its learning-rate schedule was planned "
                "for %d optimiser steps, this run has %d; the checkpoint's schedule is kept, so steps past %d train "
                "at its final rate. To train longer with a new schedule, start a new run from its weights "
                "(--weights %s, another --output).", path, saved_total, planned, saved_total, path)

    def _repair_best_checkpoint(self, last_epoch: int) -> None:
        """Make ``best.pt`` agree with the best epoch ``last.pt`` records, after a crash between their writes.

        ``best.pt`` is written before ``last.pt``: a crash in between leaves a ``best.pt`` newer than
        ``last.pt``, whose record is then adopted (epochs replayed from ``last.pt`` must beat it). A ``best.pt``
        older than the best epoch recorded (a run written before this order) is rebuilt from ``last.pt`` when
        that epoch is the last one.
        """
        best_path, last_path = self.output / "best.pt", self.output / "last.pt"
        recorded = (self.best_row or {}).get("epoch")
        try:
            best = load_checkpoint(best_path) if best_path.is_file() else None
        except ValueError as err:
            logger.warning("%s cannot be read (%s); it is rewritten at the next best epoch", best_path, err)
            best = None
        if best is not None and int(best["epoch"]) > last_epoch:
            state = best.get("trainer") or {}
            self.best_value, self.best_row = best.get("best_metric"), state.get("best_row")
            logger.warning("%s holds epoch %d, newer than %s (epoch %d): a crash came between their writes; "
                           "its result is kept as the best so far", best_path, best["epoch"], last_path, last_epoch)
        elif recorded == last_epoch and (best is None or int(best["epoch"]) != recorded) and last_path.is_file():
            with open(last_path, "rb") as source:
                atomic_write(best_path, lambda f: shutil.copyfileobj(source, f))
            logger.warning("%s did not hold the best epoch %d recorded in %s; rewritten from it", best_path,
                           recorded, last_path)

    def save_checkpoint(self, path: str | Path, epoch: int, metrics: dict[str, Any]) -> Path:
        """Write a detkit checkpoint of the current state (see :mod:`detkit.engine.checkpoint`).

        With ``train.ema`` its ``model`` is the moving average (what evaluation and inference load), and
        ``ema`` holds the update count and the trained weights, so a resume continues exactly.
        """
        extra: dict[str, Any] = {"trainer": {"history": self.history, "best_row": self.best_row,
                                             "global_step": self.global_step, "train_time_s": self._total_time(),
                                             "early_stop": self.summary.get("early_stop")}}
        if self.ema is not None:
            extra["ema"] = {**self.ema.state_dict(), "training_model": unwrap_model(self.model).state_dict()}
        return save_checkpoint(
            path, model=self.ema.module if self.ema is not None else self.model, epoch=epoch,
            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler, config=self.config,
            classes=self.classes, normalization=self.normalization, metrics=metrics, best_metric=self.best_value,
            extra=extra,
        )

    def _total_time(self) -> float:
        """Seconds spent in :meth:`fit` over every session of this run (resumes included)."""
        if self._fit_start is None:
            return float(self.summary.get("train_time_s", 0.0))
        return self._time_before + time.perf_counter() - self._fit_start

    # ------------------------------------------------------------------ epoch

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        train = self.train_one_epoch(epoch)
        timing_keys = ("images_per_s", "train_time_s")
        row: dict[str, Any] = {"epoch": epoch, **{k: v for k, v in train.items()
                                                  if k not in timing_keys and not k.startswith("lr/")}}
        details: dict[str, Any] = {}
        timing = {"images_per_s": train["images_per_s"], "train_time_s": train["train_time_s"]}
        if self.val_loader is not None and (epoch % max(cfg.eval_every, 1) == 0 or epoch == cfg.epochs):
            start = time.perf_counter()
            val = self.evaluate()
            timing["val_time_s"] = time.perf_counter() - start
            for key, value in val.items():
                if _is_scalar(value):
                    row[key] = value
                else:
                    details[key] = value
        row.update({k: v for k, v in train.items() if k.startswith("lr/")})  # every stage's lr, none singled out
        row.update(timing)
        self._check_finite_weights(epoch)
        improved = self._update_best(row)
        self.history.append({**row, **{k: v for k, v in details.items() if not isinstance(v, Tensor)}})
        if self.is_main:
            self._log_epoch(epoch, row, details)
            self._write_epoch_outputs(epoch, row, details, improved)
        return self.history[-1]

    def _prepare_epoch(self, epoch: int) -> None:
        """Seed the epoch, put the model in train mode and apply freezing (in that order)."""
        seed = epoch_seed(self.cfg.seed, epoch)
        seed_everything(seed)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(seed)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.train_loader.num_workers == 0:
            reseed_transforms(self.train_loader.dataset, seed)
        self.model.train()
        if self.freezer is not None:
            self.freezer.apply(epoch - 1)  # the Freezer counts epochs from 0 and logs changes itself
        self._wrap_for_distributed()

    def _wrap_for_distributed(self) -> None:
        # DDP registers the parameters that require grad when it is built, so it is rebuilt
        # whenever freezing changes that set; otherwise unfrozen weights would not be synchronised.
        if self.dist.world_size <= 1 or not is_distributed():
            return
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if trainable == self._trainable and self._ddp_model is not None:
            return
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self._trainable = trainable

    def _optimizer_step(self) -> None:
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model)

    def _check_finite(self, loss: Tensor, epoch: int, index: int, paths: list[str]) -> None:
        local_bad = not bool(torch.isfinite(loss.detach()).item())
        if is_distributed():
            flag = all_reduce_sum(torch.tensor([float(local_bad)], device=self._reduce_device()))
            if flag.item() == 0:
                return
        elif not local_bad:
            return
        where = f"epoch {epoch}, batch {index}"
        if local_bad:
            files = ", ".join(paths) if paths else "(no file names in this batch)"
            raise NonFiniteLossError(f"non-finite training loss ({loss.item()}) at {where}; batch files: {files}. "
                                     "Lower optim.lr, set train.grad_clip, or check these images and labels")
        raise NonFiniteLossError(f"non-finite training loss on another rank at {where}; see that rank's error")

    def _check_finite_weights(self, epoch: int) -> None:
        """Stop before a checkpoint is written when a parameter or buffer is NaN or infinite (the loss can stay
        finite while, say, BatchNorm statistics diverge)."""
        for name, tensor in unwrap_model(self.model).state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise NonFiniteLossError(
                    f"non-finite weights after epoch {epoch}: {name} holds NaN or infinite values (no checkpoint "
                    "written for this epoch). Lower optim.lr, set train.grad_clip, or check the images and labels")

    def _sync_buffers(self) -> None:
        # DDP broadcasts buffers before each forward, so after the last step BatchNorm statistics
        # differ a little between ranks; align them with rank 0 so evaluation and checkpoints agree.
        if self._ddp_model is None:
            return
        for buffer in self.model.buffers():
            dist.broadcast(buffer.data, src=0)

    def _update_best(self, row: dict[str, Any]) -> bool:
        value = row.get(self.best_metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        better = self.best_value is None or (value > self.best_value if self.best_mode == "max"
                                             else value < self.best_value)
        if better:
            self.best_value = float(value)
            self.best_row = {"metric": self.best_metric, "mode": self.best_mode, "value": float(value), **row}
        return better

    # ------------------------------------------------------------------ outputs (rank 0 only)

    def _write_epoch_outputs(self, epoch: int, row: dict[str, Any], details: dict[str, Any], improved: bool) -> None:
        scalars = {k: v for k, v in row.items() if k != "epoch"}
        # best.pt before last.pt: a crash between the two is repaired on resume (see _repair_best_checkpoint)
        if improved:
            self.save_checkpoint(self.output / "best.pt", epoch, scalars)
        self.save_checkpoint(self.output / "last.pt", epoch, scalars)
        self._write_metrics()
        if details:
            self.task.save_artifacts(details, self.output, self._tensorboard(), epoch)
        writer = self._tensorboard()
        if writer is not None:
            for key, value in scalars.items():
                if key.startswith("lr/"):
                    writer.add_scalar(key, value, epoch)
                elif key.startswith(("train_", "val_")):
                    split, name = key.split("_", 1)
                    writer.add_scalar(f"{split}/{name}", value, epoch)
                else:
                    writer.add_scalar(f"misc/{key}", value, epoch)
            writer.flush()

    def _write_metrics(self) -> None:
        """``metrics.json`` (every epoch, best, summary) and ``metrics.csv`` (scalars per epoch)."""
        summary = {**self.summary, "best_metric": self.best_metric, "best_mode": self.best_mode,
                   "epochs_completed": self.history[-1]["epoch"] if self.history else 0}
        payload = {"epochs": self.history, "best": self.best_row, "summary": summary}
        atomic_write_json(self.output / "metrics.json", payload)
        columns: list[str] = []
        for row in self.history:
            columns.extend(k for k, v in row.items() if k not in columns and _is_scalar(v))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.output / "metrics.csv", buffer.getvalue())

    def _write_hparams(self) -> None:
        writer = self._tensorboard()
        if writer is None or self.best_row is None:
            return
        hparams = {k: v for k, v in _flatten(self.config).items() if isinstance(v, (int, float, str, bool))}
        final = {f"hparam/{k}": v for k, v in self.best_row.items()
                 if k.startswith(("val_", "train_")) and _is_scalar(v)}
        writer.add_hparams(hparams, final, run_name=".")

    def _tensorboard(self) -> Any | None:
        if not self.cfg.tensorboard or not self.is_main:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output / "tensorboard"))
        return self._writer

    def _log_epoch(self, epoch: int, row: dict[str, Any], details: dict[str, Any]) -> None:
        shown = [f"{k} {v:.4f}" for k, v in row.items()
                 if k.startswith(("train_loss", "train_acc", "val_")) and isinstance(v, float) and not k.endswith("_s")]
        logger.info("epoch %d/%d: %s, %s, %.0f img/s", epoch, self.cfg.epochs, ", ".join(shown),
                    self._lr_text({k[3:]: v for k, v in row.items() if k.startswith("lr/")}),
                    row.get("images_per_s", 0.0))
        line = self.task.describe(details)
        if line:
            logger.info("epoch %d: %s", epoch, line)

    # ------------------------------------------------------------------ small helpers

    def _progress(self, loader: Iterable, desc: str, total: int) -> Any:
        if not (self.cfg.progress and self.is_main and sys.stderr.isatty()):
            return loader
        return tqdm(loader, desc=desc, total=total, leave=False, dynamic_ncols=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _reduce_device(self) -> torch.device:
        return self.device if self.dist.backend == "nccl" else torch.device("cpu")

    def _group_lrs(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, group in enumerate(self.optimizer.param_groups):
            # "layer1/no_decay" shares its stage's rate: report one lr per stage
            stage = str(group.get("name", f"group{i}")).split("/", 1)[0]
            out.setdefault(stage, float(group["lr"]))
        return out

    def _lr_text(self, lrs: dict[str, float] | None = None, short: bool = False) -> str:
        """Every stage's lr, runs of stages with one rate joined: ``lr stem..layer4 1.00e-03, head 1.00e-02``."""
        runs: list[tuple[list[str], float]] = []
        for stage, lr in (lrs if lrs is not None else self._group_lrs()).items():
            if runs and runs[-1][1] == lr:
                runs[-1][0].append(stage)
            else:
                runs.append(([stage], lr))
        parts = [(f"{names[0]}..{names[-1]}" if len(names) > 1 else names[0], lr) for names, lr in runs]
        if short:
            return " ".join(f"{lr:.1e}" for _, lr in parts)
        return "lr " + ", ".join(f"{name} {lr:.2e}" for name, lr in parts)

    def _last_improvement(self) -> int:
        """The last epoch of the history whose metric beat the best before it by more than ``train.min_delta``
        (0 when none did); read from the history, so a resumed run counts the same."""
        reference, at = None, 0
        for row in self.history:
            value = row.get(self.best_metric)
            if not _is_scalar(value) or math.isnan(value):
                continue
            if reference is None or (value - reference if self.best_mode == "max" else reference - value) > \
                    self.cfg.min_delta:
                reference, at = value, int(row["epoch"])
        return at

    def _early_stop(self, epoch: int) -> bool:
        """``train.patience``: True (and the reason logged and kept in the summary) when the best metric has not
        improved by ``min_delta`` for ``patience`` epochs; only validated epochs can improve it."""
        patience = self.cfg.patience
        if patience is None or epoch >= self.cfg.epochs:
            return False
        best_epoch = self._last_improvement()
        if epoch - best_epoch < patience:
            return False
        reason = (f"early stop after epoch {epoch}: {self.best_metric} has not improved by more than "
                  f"{self.cfg.min_delta:g} for {epoch - best_epoch} epochs (train.patience {patience}); best "
                  f"{self.best_value if self.best_value is not None else 'none'} at epoch {best_epoch}")
        logger.info("%s", reason)
        self.summary["early_stop"] = {"epoch": epoch, "best_epoch": best_epoch, "reason": reason}
        if self.is_main:
            self._write_metrics()
        return True


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    loader: DataLoader,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on every batch of ``loader`` and return the task's metrics.

    In a DDP run each rank sees its shard (``ShardSampler``) and the evaluator combines the ranks.

    Args:
        model: the bare model (not DDP-wrapped); it is put in eval mode.
        task: gives the evaluator and moves batches.
        loader: yields ``(images Tensor[B, 3, H, W], targets, paths list[str])``.
        device: the model's device.
        amp_dtype: autocast dtype, or None for full precision.
        channels_last: feed images in channels-last memory format.
        progress: show a tqdm bar when stderr is a terminal.

    Returns:
        The evaluator's metrics (``val_loss``, ``val_acc``, ... for classification).
    """
    model.eval()
    evaluator = task.new_evaluator(loader.dataset)
    batches: Iterable = loader
    if progress and sys.stderr.isatty():
        batches = tqdm(loader, desc="val", total=len(loader), leave=False, dynamic_ncols=True)
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    for batch in batches:
        images, targets, paths = task.move_batch(batch, device, channels_last)
        with autocast:
            evaluator.update(model, images, targets, paths)
    evaluator.synchronize()
    return evaluator.compute()


def resolve_amp_dtype(amp: bool, choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``/``train.amp_dtype`` on ``device`` (None: AMP off)."""
    if not amp:
        return None
    if choice == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if choice in ("float16", "fp16"):
        if device.type != "cuda":
            raise ValueError(f"train.amp_dtype: float16 autocast needs a CUDA device, got {device}; use bfloat16")
        return torch.float16
    if choice in ("bfloat16", "bf16"):
        return torch.bfloat16
    raise ValueError(f"train.amp_dtype: expected auto, float16 or bfloat16, got {choice!r}")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
