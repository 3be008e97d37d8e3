"""Detection training speed: detkit's resnet18_ssd against torchvision's SSD on the same trunk; the data pipeline's share.

Model steps: detkit's ``resnet18_ssd`` and torchvision's ``SSD`` machinery (``SSD``, ``SSDHead``,
``DefaultBoxGenerator``, its matcher, hard-negative mining and loss) on a resnet18 trunk written here from
torchvision's ``resnet18`` with the same feature levels (layer3, layer4 and 4 extra blocks; ``layer2`` first adds
layer2), channels, anchors per location, scales, input size, batch, optimiser (AdamW) and thread count. Both train
on the same batches from the shapes detection set (detkit's augmentation, fixed in advance) with full steps:
forward, loss, backward, optimiser step. A third runner is a copy of detkit's model trained with the settings of
detkit's detection recipe (``configs/shapes_det_resnet18_ssd.yaml``, what ``make demo`` runs): the optimiser its
trainer builds from the recipe's ``optim`` section (fused AdamW where torch has it) and the recipe's
``train.channels_last`` (model and every batch in channels-last memory format, the conversion inside the timed
step as in the trainer): what a detkit run gets, against what a user of torchvision's SSD builds with
``torch.optim.AdamW``. A fourth runner gives torchvision's SSD those same settings by hand (channels-last, the
same optimiser, fused alike), so the table also says how much of the lead is the model and how much the settings.
Steps rotate between the four; the table gives medians over the repeats and detkit's images/s over
torchvision's: with the same optimiser, as trained (the target, >= 1.0) and both with the recipe's settings.

Data pipeline: detkit's real DataLoader path (``DetectionSplit`` + train augmentation + ``build_loader``) with
``data.cache: none`` and ``ram``, alternating: the data cost alone (iterating the loader in the main process), and
training steps fed by the loader with each of ``--workers`` worker counts, where the share of the wall time spent
waiting for the next batch is the pipeline's share of the step (with 0 workers: all of the data work).

    python tools/bench.py detect-train                      # 256 px (layer3) and the demo's 128 px (layer2)
    python tools/bench.py detect-train --threads 2 --amp    # also under CPU bfloat16 autocast
    python tools/bench.py detect-train --quick              # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.quality_refs import ResNetTrunk

NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
TARGET = 1.0
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "shapes_det_resnet18_ssd.yaml"  # the "as trained" settings


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="256:layer3,128:layer2",
                        help="input side and first level of each case, SIZE:LEVEL comma-separated")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per implementation (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=4,
                        help="untimed steps per implementation first (bf16 steps on the CPU take about 3 to settle)")
    parser.add_argument("--images", type=int, default=96, help="generated shapes images (160-320 px, as make demo)")
    parser.add_argument("--workers", default="0,1", help="DataLoader worker counts of the data-share loop, comma-separated")
    parser.add_argument("--data-steps", type=int, default=6, help="steps per data-share measurement")
    parser.add_argument("--amp", action="store_true", help="also time both models under CPU bfloat16 autocast")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="one small case, few steps (a smoke run)")


def run(args: argparse.Namespace) -> int:
    from detkit.config import load_config

    if args.quick:
        args.cases, args.threads, args.repeats, args.images, args.data_steps = "128:layer2", "1", 2, 24, 2
        args.warmup = 1
        args.workers = "0"
    cases = [(int(size), level) for size, level in (c.split(":") for c in args.cases.split(","))]
    threads = [int(t) for t in args.threads.split(",")]
    info = _machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, torchvision "
          f"{info['torchvision']}; load average {info['load_start']}")
    results: dict[str, Any] = {"machine": info, "batch_size": args.batch_size, "steps": [], "data": []}
    recipe = load_config(RECIPE)  # once: every case times the same "as trained" settings
    with tempfile.TemporaryDirectory(prefix="detkit_bench_dettrain_") as tmp:
        root = _generate(Path(tmp) / "shapes", args.images)
        for size, level in cases:
            batches = _fixed_batches(root, size, args.batch_size, count=3)
            for n_threads in threads:
                for amp in (False, True) if args.amp else (False,):
                    row = _compare(batches, size, level, n_threads, amp, recipe, args.repeats, args.warmup)
                    results["steps"].append(row)
        for size, level in cases:
            results["data"].append(_data_share(root, size, level, max(threads), args))
    info["load_end"] = _load()
    print(f"load average at the end {info['load_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------- setup


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _machine() -> dict[str, Any]:
    import torchvision

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "load_start": _load()}


def _generate(root: Path, n_images: int) -> Path:
    from detkit.data.det_synthetic import make_shapes_detection

    make_shapes_detection(root, n_train=n_images, n_val=0, seed=0)  # 160-320 px, like make demo's set
    return root


def _split(root: Path, size: int, workers: int, batch_size: int, cache: str = "none") -> tuple[Any, Any, Any]:
    """detkit's training data path: ``(DetectionSplit with the train augmentation, DetectionTask, DataConfig)``."""
    from detkit.config import DataConfig, DetectConfig
    from detkit.data.cache import attach_image_cache
    from detkit.data.det_transforms import DetectionAugment
    from detkit.engine.tasks import DetectionTask

    cfg = DataConfig(root=str(root), batch_size=batch_size, workers=workers, cache=cache)
    dataset = DetectionTask.load_split(cfg, "train")
    augment = DetectionAugment(crop_p=0.0, scale_p=0.0, hflip_p=0.5, color_p=0.5)  # make demo's
    task = DetectionTask(dataset.classes, dataset.cat_ids, DetectConfig(augment=augment))
    dataset.transform = task.build_transform(cfg, size, NORM, train=True)
    attach_image_cache(cfg, [dataset])
    return dataset, task, cfg


def _fixed_batches(root: Path, size: int, batch_size: int, count: int) -> list[tuple[Tensor, list[dict]]]:
    """``count`` augmented batches ``(images Tensor[B, 3, S, S], targets)`` taken once, shared by both models."""
    from detkit.engine.loaders import build_loader

    dataset, task, cfg = _split(root, size, workers=0, batch_size=batch_size)
    loader = build_loader(dataset, task, cfg, train=True, device=torch.device("cpu"), seed=0)
    batches = []
    for images, targets, _ in loader:
        batches.append((images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]))
        if len(batches) == count:
            break
    return batches


def _models(size: int, first_level: str, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """detkit's resnet18_ssd and torchvision's SSD on the quality benchmark's :class:`ResNetTrunk` (torchvision's
    resnet18 with resnet18_ssd's levels and extra blocks), same anchors, both in train mode."""
    from torchvision.models.detection.ssd import SSD, DefaultBoxGenerator, SSDHead

    from detkit.config import DetectConfig
    from detkit.models.detector import build_detector

    torch.manual_seed(0)
    ours = build_detector("resnet18_ssd", num_classes, "none", DetectConfig(first_level=first_level))
    trunk = ResNetTrunk(first_level)
    ratios = ours.anchor_generator.aspect_ratios
    anchors = DefaultBoxGenerator(ratios, min_ratio=0.1, max_ratio=0.9)  # resnet18_ssd's scales
    head = SSDHead(trunk.out_channels, anchors.num_anchors_per_location(), num_classes + 1)
    # images arrive normalised: the SSD transform's normalisation (still computed) is the identity
    theirs = SSD(trunk, anchors, (size, size), num_classes + 1, image_mean=[0.0] * 3, image_std=[1.0] * 3, head=head)
    if anchors.num_anchors_per_location() != ours.anchor_generator.num_anchors_per_location():
        raise RuntimeError("the two models differ in anchors per location")
    return ours.train(), theirs.train()


# ----------------------------------------------------------------------------- model steps


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, targets: list[dict], amp: bool,
          torchvision_ssd: bool, channels_last: bool = False) -> None:
    """One full training step: forward, loss, backward, optimiser step (``channels_last``: the batch converted
    first, as detkit's trainer does with ``train.channels_last``)."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        if torchvision_ssd:  # labels 1..C, 0 is background
            losses = model(list(images), [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets])
            loss = sum(losses.values())
        else:
            loss = model(images, targets)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@dataclasses.dataclass
class Runner:
    """One timed training setup: a model, its optimiser, whether it is torchvision's SSD (its own input and label
    conventions) and whether its batches go channels-last."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    torchvision_ssd: bool
    channels_last: bool = False


def _runners(size: int, level: str, recipe: Any) -> dict[str, Runner]:
    """The four runners of :func:`_compare` on fresh models of the same weights; ``recipe`` an ExperimentConfig.

    ``detkit`` and ``torchvision`` with the same optimiser (``torch.optim.AdamW`` as a user builds it: the model
    step alone is compared); ``detkit as trained``, a copy of detkit's model with the recipe's training settings:
    the optimiser detkit's trainer builds from its ``optim`` section (:func:`detkit.engine.optim.build_optimizer`:
    fused AdamW where torch has it) and its ``train.channels_last`` (model converted as the trainer converts it),
    which is what a detkit run gets; and ``torchvision with the recipe's settings``, a copy of torchvision's SSD
    given the same memory format and optimiser class (fused alike) by hand.
    """
    from detkit.engine.optim import build_optimizer

    ours, theirs = _models(size, level, num_classes=4)
    memory = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    trained = copy.deepcopy(ours).to(memory_format=memory)
    theirs_set = copy.deepcopy(theirs).to(memory_format=memory)
    trainer_optimizer = build_optimizer(trained, recipe.optim)
    fused = bool(trainer_optimizer.defaults.get("fused"))
    return {
        "detkit": Runner(ours, torch.optim.AdamW(ours.parameters(), lr=1e-4), False),
        "detkit as trained": Runner(trained, trainer_optimizer, False, recipe.train.channels_last),
        "torchvision": Runner(theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-4), True),
        "torchvision with the recipe's settings": Runner(
            theirs_set, type(trainer_optimizer)(theirs_set.parameters(), lr=1e-4, fused=fused), True,
            recipe.train.channels_last),
    }


def _compare(batches: list, size: int, level: str, threads: int, amp: bool, recipe: Any, repeats: int,
             warmup: int = 4) -> dict[str, Any]:
    """Median wall and CPU seconds per step of the :func:`_runners` (``recipe``: :data:`RECIPE` loaded, an
    ExperimentConfig), steps interleaved (the order rotating), after ``warmup`` steps each."""
    torch.set_num_threads(threads)
    runs = _runners(size, level, recipe)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(repeats + warmup):
        images, targets = batches[i % len(batches)]
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotate who goes first: no order effect
            run = runs[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            _step(run.model, run.optimizer, images, targets, amp, run.torchvision_ssd, run.channels_last)
            if i >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    batch = batches[0][0].shape[0]
    row = {"size": size, "first_level": level, "threads": threads, "amp": amp, "batch": batch,
           "params": {n: sum(p.numel() for p in r.model.parameters()) for n, r in runs.items()},
           "trainer_optimizer": type(runs["detkit as trained"].optimizer).__name__
           + (" (fused)" if runs["detkit as trained"].optimizer.defaults.get("fused") else ""),
           "trainer_channels_last": recipe.train.channels_last, "recipe": RECIPE.name}
    for name in runs:
        row[name] = {"images_per_s": batch / statistics.median(wall[name]),
                     "cpu_ms_per_image": 1000 * statistics.median(cpu[name]) / batch,
                     "step_s": [round(t, 4) for t in wall[name]]}
    tv = row["torchvision"]["images_per_s"]
    row["ratio"] = row["detkit"]["images_per_s"] / tv
    row["ratio_as_trained"] = row["detkit as trained"]["images_per_s"] / tv
    row["ratio_same_settings"] = (row["detkit as trained"]["images_per_s"]
                                  / row["torchvision with the recipe's settings"]["images_per_s"])
    print(f"{size} px, first level {level}, batch {batch}, {threads} thread(s){', bf16 autocast' if amp else ''}: "
          f"detkit {row['detkit']['images_per_s']:.2f} img/s ({row['detkit']['cpu_ms_per_image']:.0f} CPU ms/img), "
          f"as trained ({row['trainer_optimizer']}{', channels_last' if row['trainer_channels_last'] else ''}) "
          f"{row['detkit as trained']['images_per_s']:.2f} img/s, "
          f"torchvision SSD {tv:.2f} img/s ({row['torchvision']['cpu_ms_per_image']:.0f} CPU ms/img): "
          f"same optimiser {row['ratio']:.2f}x, as trained {row['ratio_as_trained']:.2f}x, both with the recipe's "
          f"settings {row['ratio_same_settings']:.2f}x (target >= {TARGET}: "
          f"{'met' if row['ratio_as_trained'] >= TARGET else 'MISSED'} as trained, "
          f"{'met' if row['ratio'] >= TARGET else 'missed'} with the same optimiser)")
    return row


# ----------------------------------------------------------------------------- data pipeline


def _data_share(root: Path, size: int, level: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Per cache mode: the data cost alone (main process), and per worker count the share of the wall time that
    training steps fed by the loader spend waiting for their batch; modes and worker counts alternate."""
    torch.set_num_threads(threads)
    modes = {mode: _split(root, size, 0, args.batch_size, cache=mode) for mode in ("none", "ram")}
    workers = [int(w) for w in str(args.workers).split(",")]
    ours, _ = _models(size, level, num_classes=len(modes["none"][0].classes))
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    alone: dict[str, list[float]] = {m: [] for m in modes}
    fed: dict[tuple[str, int], list[tuple[float, float]]] = {(m, w): [] for m in modes for w in workers}
    for _ in range(3):
        for mode, (dataset, task, cfg) in modes.items():
            alone[mode].append(_data_alone_ms(dataset, task, cfg))
            for w in workers:
                waited, total, images = _fed_steps(ours, optimizer, dataset, task, dataclasses.replace(cfg, workers=w),
                                                   args.data_steps)
                fed[(mode, w)].append((waited / total, images / total))
    row: dict[str, Any] = {"size": size, "first_level": level, "threads": threads}
    for mode in modes:
        row[mode] = {"data_ms_per_image": statistics.median(alone[mode])}
        print(f"{size} px data path, data.cache {mode}: {row[mode]['data_ms_per_image']:.2f} ms/image to read and "
              f"augment in the main process")
        for w in workers:
            share, rate = (statistics.median(v) for v in zip(*fed[(mode, w)]))
            row[mode][f"workers_{w}"] = {"wait_share": share, "images_per_s": rate}
            print(f"  training fed by {w} worker(s): {rate:.2f} img/s, {100 * share:.1f} % of the time waiting for data")
    return row


def _data_alone_ms(dataset: Any, task: Any, cfg: Any) -> float:
    """Milliseconds per image to produce every batch of one epoch in the main process (no model)."""
    from detkit.engine.loaders import build_loader

    loader = build_loader(dataset, task, dataclasses.replace(cfg, workers=0), train=True, device=torch.device("cpu"))
    start = time.perf_counter()
    images = sum(batch[0].shape[0] for batch in loader)
    return 1000 * (time.perf_counter() - start) / max(images, 1)


def _fed_steps(model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Any, task: Any, cfg: Any,
               steps: int) -> tuple[float, float, int]:
    """``(seconds waiting for batches, total seconds, images)`` of ``steps`` training steps fed by the loader."""
    from detkit.engine.loaders import build_loader

    loader = iter(build_loader(dataset, task, cfg, train=True, device=torch.device("cpu")))
    next(loader)  # workers start and fill their queue outside the timed part
    waited, images = 0.0, 0
    start = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(loader, None)
        waited += time.perf_counter() - before
        if batch is None:
            break
        images_t, targets, _ = batch
        _step(model, optimizer, images_t, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets],
              amp=False, torchvision_ssd=False)
        images += images_t.shape[0]
    return waited, time.perf_counter() - start, images
