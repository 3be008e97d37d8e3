"""Fine-tune (or train from scratch) a classifier or detector from a YAML recipe, dotted overrides and flags; the
run lands in --output.

Examples:
    python tools/finetune.py --config configs/shapes_cls_resnet18.yaml
    python tools/finetune.py --config configs/shapes_cls_resnet18.yaml optim.lr=0.02 train.epochs=3
    python tools/finetune.py --data data/shapes --model resnet18 --weights none --epochs 2 --output runs/quick
    python tools/finetune.py --data data/shapes --weights none --lr auto --output runs/lr_auto
    python tools/finetune.py --data data/shapes --weights none --folds 5 --output runs/cv
    python tools/finetune.py --config configs/shapes_cls_resnet18.yaml --resume auto
    torchrun --nproc_per_node=2 tools/finetune.py --config configs/shapes_cls_resnet18.yaml --device cpu

Precedence: recipe file < dotted KEY=VALUE overrides < flags. Keys left null are filled by the start policy
(fine-tuning when pretrained weights were loaded, from scratch otherwise), logged and written to OUTPUT/config.yaml.
Every key is listed in configs/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from detkit.cli import add_log_level, add_run_flags, configure_logging, flag_overrides

RUN_FLAG_NAMES = ("task", "data", "model", "weights", "epochs", "batch_size", "img_size", "lr", "output", "device",
                  "workers", "seed", "resume", "deterministic", "exist_ok")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML recipe (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. optim.lr=0.01")
    add_run_flags(parser, RUN_FLAG_NAMES)
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="K-fold cross-validation of the train split: K runs in OUTPUT/fold_<i>/, the table in "
                             "OUTPUT/kfold.csv and kfold.json (as tools/kfold.py)")
    add_log_level(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from detkit.config import load_config
    from detkit.engine.experiment import run_experiment

    rank = int(os.environ.get("RANK", "0"))  # torchrun sets it; only rank 0 talks
    configure_logging(args.log_level if rank == 0 else "WARNING")
    cfg = load_config(args.config, [*args.overrides, *flag_overrides(args)])
    if args.folds is not None:
        from detkit.engine.kfold import run_kfold_and_report

        report = run_kfold_and_report(cfg, args.folds)
        if rank == 0:
            print(report)
        return 0
    result = run_experiment(cfg)
    best = result.get("best") or {}
    if rank == 0:
        value = best.get("value")
        shown = f"{value:.4f}" if isinstance(value, float) else "n/a"
        print(f"best {best.get('metric', 'metric')} {shown} (epoch {best.get('epoch', '-')}); "
              f"run directory: {cfg.train.output}")
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_intermixed_args())  # KEY=VALUE overrides may sit between flags


if __name__ == "__main__":
    sys.exit(_run_cli())
