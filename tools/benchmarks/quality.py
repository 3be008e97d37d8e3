"""Quality on small real-image sets: detkit from flags (and its recipe) vs the plain loops a user writes.

Per classification set, one run trains (1) `tools/finetune.py` with flags only, exactly as a user types it,
and (2) the ~30-line torchvision loop (ImageFolder, resnet18 from random init, Adam 1e-3, no schedule or
augmentation); `--lr-grid` adds detkit at 0.3x and 3x its default lr, and a `--lr auto` row where
`finetune.py` accepts it. Per detection set: (1) `finetune.py` flags only with resnet18_ssd, (2) torchvision's
SSD machinery on the same resnet18 trunk and levels, trained as torchvision's reference recipe does, scored by
pycocotools, (3) detkit's demo recipe (`configs/shapes_det_resnet18_ssd.yaml`) on the same data. Every
implementation of a set gets the same epochs, input size, batch, images, threads and seed; the metric is the
best val accuracy / val mAP50 over the epochs (each validated). Sets come from `benchmarks/quality_sets.py`.

Examples:
    python tools/bench.py quality                       # every set, default budgets (about 1.5-2 h on 2 cores)
    python tools/bench.py quality --quick               # tiny sets and 1 epoch: a few-minute smoke pass
    python tools/bench.py quality --only digits --lr-grid --json quality.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.quality_refs import Budget, plain_classify, torchvision_ssd
from benchmarks.quality_sets import SETS, build_set

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "tools" / "finetune.py"
RECIPE = REPO / "configs" / "shapes_det_resnet18_ssd.yaml"
CLS_EPOCHS, CLS_BATCH = 10, 64
DET_EPOCHS, DET_BATCH = 15, 8
LR_GRID_FACTORS = (0.3, 1.0, 3.0)  # around detkit's default lr; the 1x point is the flags-only run itself
RECIPE_TOLERANCE = 0.03  # detkit from flags should come within this of its own recipe (mAP50)
LR_AUTO_TOLERANCE = 0.01  # lr auto should come within this of the best grid lr (accuracy)
QUICK_IMAGES = {"classify": (60, 30), "detect": (24, 12)}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=REPO / "data" / "quality",
                        help="folder the sets are written to (reused when already there)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "quality", help="folder for the training runs")
    parser.add_argument("--only", action="append", choices=sorted(SETS), metavar="NAME",
                        help=f"run only this set (repeatable); sets: {', '.join(SETS)}")
    parser.add_argument("--cls-epochs", type=int, default=CLS_EPOCHS, help="epochs per classification run")
    parser.add_argument("--cls-batch", type=int, default=CLS_BATCH, help="batch size of classification runs")
    parser.add_argument("--det-epochs", type=int, default=DET_EPOCHS, help="epochs per detection run")
    parser.add_argument("--det-batch", type=int, default=DET_BATCH, help="batch size of detection runs")
    parser.add_argument("--det-size", type=int, default=None, help="detection input side (default: the set's, 128)")
    parser.add_argument("--n-train", type=int, default=None, help="train images per set (default: the set's own)")
    parser.add_argument("--n-val", type=int, default=None, help="val images per set (default: the set's own)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of the reference loops (default: detkit's data.workers default, "
                             "which the flags-only runs use too)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every training (OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sets and of every training")
    parser.add_argument("--seeds", type=int, default=1,
                        help="classification: train every row with this many seeds (--seed, --seed + 1, ...) and "
                             "compare the means (the val sets are small: one seed's accuracy moves by a few "
                             "points with the lr or the seed)")
    parser.add_argument("--lr-grid", nargs="*", type=float, default=None, metavar="LR",
                        help="also train detkit flags-only at these --lr values (no values: 0.3x, 1x and 3x "
                             "detkit's default lr, the 1x run being the flags-only row)")
    parser.add_argument("--tv-lr", type=float, default=0.01, help="peak SGD lr of the torchvision SSD reference")
    parser.add_argument("--tv-augment", choices=("none", "ssd"), default="none",
                        help="torchvision SSD reference augmentation: none, or its reference 'ssd' pipeline")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (after every set)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke pass: {QUICK_IMAGES['classify']} / {QUICK_IMAGES['detect']} (train, val) "
                             "images for classification / detection and 1 epoch")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cls_epochs = args.det_epochs = 1
        args.data, args.runs = args.data.with_name(args.data.name + "_quick"), args.runs.with_name(args.runs.name + "_quick")
    names = args.only or list(SETS)
    report: dict[str, Any] = {"machine": _machine(args.threads), "command": " ".join(["python", *sys.argv]),
                              "sets": {}}
    lr_auto = _finetune_accepts_lr_auto()
    if not lr_auto:
        print("note: tools/finetune.py --lr does not accept 'auto' yet (from its --help); the lr auto row is skipped")
    started = time.perf_counter()
    for name in names:
        spec = SETS[name]
        counts = QUICK_IMAGES[spec.task] if args.quick else (args.n_train, args.n_val)
        t = time.perf_counter()
        root = build_set(name, args.data, *counts, seed=args.seed)
        print(f"{name}: {spec.source}; data {root} ready in {time.perf_counter() - t:.1f} s", flush=True)
        runner = _classify_set if spec.task == "classify" else _detect_set
        report["sets"][name] = runner(name, root, args, lr_auto)
        _print_set(name, report["sets"][name])
        if args.json:
            _write_json(args.json, report)
    report["wall_s"] = time.perf_counter() - started
    report["machine"]["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\n## quality on real data ({report['machine']['cpu']}, {args.threads} threads; "
          f"total {report['wall_s'] / 60:.1f} min)")
    _print_table(report)
    if args.json:
        _write_json(args.json, report)
    return 0


# ------------------------------------------------------------------------------------------ one set


def _counts(root: Path) -> dict[str, Any]:
    return json.loads((root / "quality_meta.json").read_text(encoding="utf-8"))["counts"]


def _budget(args: argparse.Namespace, task: str, size: int) -> Budget:
    from detkit.config import DataConfig

    workers = DataConfig().workers if args.workers is None else args.workers
    if task == "classify":
        return Budget(args.cls_epochs, size, args.cls_batch, workers, args.seed)
    return Budget(args.det_epochs, args.det_size or size, args.det_batch, workers, args.seed)


def _classify_set(name: str, root: Path, args: argparse.Namespace, lr_auto: bool) -> dict[str, Any]:
    from detkit.config import OptimConfig
    from detkit.engine.policy import fill_optim

    budget = _budget(args, "classify", SETS[name].img_size)
    flags = ["--task", "classify", "--data", str(root), "--model", "resnet18", "--weights", "none",
             "--epochs", str(budget.epochs), "--batch-size", str(budget.batch_size), "--img-size", str(budget.img_size)]
    seeds = [budget.seed + i for i in range(args.seeds)]

    def detkit_row(impl: str, extra: list[str], folder: str) -> dict[str, Any]:
        return _over_seeds([_finetune_row(impl, [*flags, *extra, *_seed_flag(seed, args.seeds)],
                                          args.runs / name / _seed_folder(folder, seed, args.seeds), args.threads,
                                          "val_acc") for seed in seeds], seeds)

    rows = [detkit_row("detkit flags", [], "detkit_flags")]
    rows.append(_over_seeds([_reference_row("plain PyTorch loop",
                                            lambda s=seed: plain_classify(root, dataclasses.replace(budget, seed=s)))
                             for seed in seeds], seeds))
    if args.lr_grid is not None:
        # the lr a flags-only run from scratch trains at: the scratch policy's, for the optimiser it picks
        default_lr = fill_optim(OptimConfig(), "scratch")[0].lr
        grid = args.lr_grid or [f * default_lr for f in LR_GRID_FACTORS]
        for lr in grid:
            if _same_lr(lr, default_lr) and not args.lr_grid:
                rows.append({**rows[0], "impl": f"detkit flags --lr {lr:g} (default)", "lr": lr})
                continue
            rows.append({**detkit_row(f"detkit flags --lr {lr:g}", ["--lr", repr(lr)], f"detkit_lr_{lr:g}"), "lr": lr})
    if lr_auto:
        rows.append(detkit_row("detkit flags --lr auto", ["--lr", "auto"], "detkit_lr_auto"))
    verdicts = [_verdict(rows[0], rows[1], "detkit >= plain loop", 0.0)]
    grid_rows = [r for r in rows if "lr" in r and r.get("value") is not None]
    auto_rows = [r for r in rows if r["impl"].endswith("--lr auto")]
    if grid_rows and auto_rows:
        best = max(grid_rows, key=lambda r: r["value"])
        verdicts.append(_verdict(auto_rows[0], best, f"lr auto within {LR_AUTO_TOLERANCE} of the best grid lr "
                                                     f"({best['lr']:g})", LR_AUTO_TOLERANCE))
    return {"task": "classify", "metric": "best val accuracy" + (f", mean of {len(seeds)} seeds" if len(seeds) > 1
                                                                 else ""),
            "budget": dataclasses.asdict(budget), "seeds": seeds, "images": _counts(root), "rows": rows,
            "verdicts": verdicts}


def _seed_flag(seed: int, n_seeds: int) -> list[str]:
    return ["--seed", str(seed)] if n_seeds > 1 else []  # one seed: exactly the command a user types


def _seed_folder(folder: str, seed: int, n_seeds: int) -> str:
    return f"{folder}_seed{seed}" if n_seeds > 1 else folder


def _over_seeds(rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One row from the runs of each seed: the mean metric (None if a run failed), each seed's value kept."""
    if len(rows) == 1:
        return rows[0]
    values = [r.get("value") for r in rows]
    merged = {**rows[0], "value": None if None in values else statistics.mean(values), "seeds": seeds,
              "per_seed": values, "wall_s": sum(r["wall_s"] for r in rows)}
    for key in ("best_epoch", "last", "per_epoch"):
        merged.pop(key, None)
    if all("suggestion" in r for r in rows):
        merged["suggestion"] = [r["suggestion"] for r in rows]
    return merged


def _detect_set(name: str, root: Path, args: argparse.Namespace, lr_auto: bool) -> dict[str, Any]:
    del lr_auto  # the LR-finder target is a classification one
    budget = _budget(args, "detect", SETS[name].img_size)
    common = ["--data", str(root), "--weights", "none", "--epochs", str(budget.epochs),
              "--img-size", str(budget.img_size), "--batch-size", str(budget.batch_size)]
    flags = ["--task", "detect", "--model", "resnet18_ssd", *common]
    recipe = ["--config", str(RECIPE), f"data.root={root}", "train.eval_every=1", *common,
              f"optim.lr={recipe_lr_at(budget.batch_size):g}"]
    rows = [
        _finetune_row("detkit flags", flags, args.runs / name / "detkit_flags", args.threads, "val_map50"),
        _reference_row(f"torchvision SSD (SGD {args.tv_lr:g}, aug {args.tv_augment})",
                       lambda: torchvision_ssd(root, budget, lr=args.tv_lr, augment=args.tv_augment)),
        _finetune_row("detkit recipe", recipe, args.runs / name / "detkit_recipe", args.threads, "val_map50"),
    ]
    verdicts = [_verdict(rows[0], rows[1], "detkit >= torchvision SSD", 0.0),
                _verdict(rows[0], rows[2], f"detkit within {RECIPE_TOLERANCE} of detkit's recipe", RECIPE_TOLERANCE)]
    return {"task": "detect", "metric": "best val mAP50", "budget": dataclasses.asdict(budget),
            "images": _counts(root), "rows": rows, "verdicts": verdicts}


def recipe_lr_at(batch_size: int) -> float:
    """The demo recipe's ``optim.lr`` scaled linearly to ``batch_size`` (its lr x batch_size / its batch): the
    budget runs every implementation at one batch, and the recipe's rate belongs to its own batch (0.004 at 16
    gives 0.002 at the budget's 8, the rate the recipe had at batch 8)."""
    from detkit.config import load_config

    recipe = load_config(RECIPE)
    return recipe.optim.lr * batch_size / recipe.data.batch_size


def _same_lr(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def _verdict(row: dict[str, Any], reference: dict[str, Any], goal: str, tolerance: float) -> dict[str, Any]:
    """``row`` meets ``goal`` when its metric is at least ``reference``'s minus ``tolerance``."""
    if row.get("value") is None or reference.get("value") is None:
        return {"goal": goal, "met": None, "text": f"{goal}: not measured (a run failed)"}
    gap = row["value"] - reference["value"]
    met = gap >= -tolerance - 1e-12
    return {"goal": goal, "met": met, "gap": gap,
            "text": f"{goal}: {'met' if met else 'MISSED'} ({row['value']:.3f} vs {reference['value']:.3f}, {gap:+.3f})"}


# ------------------------------------------------------------------------------------------ runners


def _finetune_row(impl: str, flags: list[str], out: Path, threads: int, metric: str) -> dict[str, Any]:
    """Run ``tools/finetune.py FLAGS --output OUT`` in a subprocess; its best ``metric`` over epochs from metrics.json."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    command = [sys.executable, str(FINETUNE), *flags, "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "DETKIT_OFFLINE": "1"}
    print(f"  {impl}: {' '.join(['python', 'tools/finetune.py', *flags])}", flush=True)
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    row: dict[str, Any] = {"impl": impl, "command": "python tools/finetune.py " + " ".join(flags), "wall_s": wall,
                           "value": None}
    metrics_file = out / "metrics.json"
    if proc.returncode != 0 or not metrics_file.is_file():
        row["error"] = f"exit {proc.returncode}; log {out.parent / f'{out.name}.log'}"
        print(f"    FAILED: {row['error']}", flush=True)
        return row
    epochs = json.loads(metrics_file.read_text(encoding="utf-8"))["epochs"]
    scored = [e for e in epochs if metric in e]
    best = max(scored, key=lambda e: e[metric])
    finder = out / "lr_find" / "lr_find.json"
    if finder.is_file():  # an --lr auto run: the lr it trained at
        row["suggestion"] = float(json.loads(finder.read_text(encoding="utf-8"))["suggestion"])
    row.update(value=float(best[metric]), best_epoch=best["epoch"], last=float(scored[-1][metric]),
               per_epoch=[float(e[metric]) for e in scored],
               images_per_s=statistics.median(e["images_per_s"] for e in epochs if "images_per_s" in e))
    print(f"    {row['value']:.4f} (epoch {row['best_epoch']}), {wall:.0f} s", flush=True)
    return row


def _reference_row(impl: str, train) -> dict[str, Any]:
    print(f"  {impl}: in-process", flush=True)
    start = time.perf_counter()
    try:
        result = train()
    except (RuntimeError, ValueError) as err:  # e.g. a non-finite loss: recorded, the other rows still run
        print(f"    FAILED: {err}", flush=True)
        return {"impl": impl, "value": None, "error": str(err), "wall_s": time.perf_counter() - start}
    print(f"    {result['value']:.4f} (epoch {result['best_epoch']}), {result['wall_s']:.0f} s", flush=True)
    return {"impl": impl, **result}


def _finetune_accepts_lr_auto() -> bool:
    """Whether ``finetune.py --lr auto`` exists, read from ``finetune.py --help``."""
    proc = subprocess.run([sys.executable, str(FINETUNE), "--help"], cwd=REPO, capture_output=True, text=True,
                          check=False, env={**os.environ, "COLUMNS": "200"})
    return help_offers_lr_auto(proc.stdout)


def help_offers_lr_auto(help_text: str) -> bool:
    """Whether the ``--lr`` entry of an argparse ``--help`` text (up to the next option) mentions ``auto``."""
    entry = re.search(r"^\s*--lr\b(.*?)(?=^\s*-|\Z)", help_text, re.S | re.M)
    return bool(entry and re.search(r"\bauto\b", entry.group(1)))


# ------------------------------------------------------------------------------------------ output


def _machine(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "load_avg_start": load,
            "python": platform.python_version(), "torch": torch.__version__}


def _fmt(value: float | None) -> str:
    return "failed" if value is None else f"{value:.3f}"


def _print_set(name: str, result: dict[str, Any]) -> None:
    b = result["budget"]
    print(f"  {name}: {result['metric']}, {b['epochs']} epochs, {b['img_size']} px, batch {b['batch_size']}")
    for row in result["rows"]:
        seeds = f"  (seeds: {' '.join(_fmt(v) for v in row['per_seed'])})" if "per_seed" in row else ""
        lrs = row.get("suggestion")
        found = "" if lrs is None else "  lr " + " ".join(f"{lr:.2g}" for lr in (lrs if isinstance(lrs, list) else [lrs]))
        print(f"    {row['impl']:<42} {_fmt(row.get('value'))}   {row['wall_s']:7.0f} s{seeds}{found}")
    for v in result["verdicts"]:
        print(f"    {v['text']}")


def _print_table(report: dict[str, Any]) -> None:
    print("| set | implementation | metric | value | epochs | size | batch | train / val images | img/s | wall s |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|")
    for name, result in report["sets"].items():
        b, images = result["budget"], result["images"]
        n = "/".join(str(images[s]["images"] if isinstance(images[s], dict) else images[s]) for s in ("train", "val"))
        for row in result["rows"]:
            ips = row.get("images_per_s")
            print(f"| {name} | {row['impl']} | {result['metric']} | {_fmt(row.get('value'))} | {b['epochs']} | "
                  f"{b['img_size']} | {b['batch_size']} | {n} | {'-' if ips is None else f'{ips:.0f}'} | "
                  f"{row['wall_s']:.0f} |")
    print()
    for name, result in report["sets"].items():
        for v in result["verdicts"]:
            print(f"- {name}: {v['text']}")


def _write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
