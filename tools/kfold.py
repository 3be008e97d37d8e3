"""K-fold cross-validation: split the train split into K folds (stratified for classification, by image for
detection), train one run per fold, print and write the table of every fold's best metric with its mean +- std.

Examples:
    python tools/kfold.py --config configs/shapes_cls_resnet18.yaml --folds 5
    python tools/kfold.py --data data/shapes --model resnet18 --weights none --folds 3 train.epochs=5 --output runs/cv

Each fold trains in OUTPUT/fold_<i>/ (its config.yaml has data.kfold and data.fold, so a fold repeats alone); the
table is OUTPUT/kfold.csv and OUTPUT/kfold.json. The same train.seed gives the same folds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML recipe every fold starts from")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. train.epochs=5")
    parser.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds (>= 2)")
    parser.add_argument("--task", choices=("classify", "detect"), help="task (task)")
    parser.add_argument("--data", help="dataset root; its train split is divided into folds (data.root)")
    parser.add_argument("--model", help="architecture (model.name)")
    parser.add_argument("--weights", help="auto, imagenet, none or a weights file path (model.weights)")
    parser.add_argument("--epochs", type=int, help="training epochs per fold (train.epochs)")
    parser.add_argument("--seed", type=int, help="seed of the folds and of every run (train.seed)")
    parser.add_argument("--output", help="root of the fold runs and the table (train.output)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


FLAG_KEYS = {"task": "task", "data": "data.root", "model": "model.name", "weights": "model.weights",
             "epochs": "train.epochs", "seed": "train.seed", "output": "train.output"}


def main(args: argparse.Namespace) -> int:
    from detkit.config import load_config
    from detkit.engine.kfold import format_kfold_table, run_kfold

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    flags = [(key, getattr(args, flag)) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]
    cfg = load_config(args.config, [*args.overrides, *flags])
    result = run_kfold(cfg, args.folds)
    print(format_kfold_table(result))
    print(f"k-fold table: {Path(cfg.train.output) / 'kfold.csv'} and kfold.json")
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_intermixed_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
