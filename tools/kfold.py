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
import sys
from pathlib import Path

from detkit.cli import add_log_level, add_run_flags, configure_logging, flag_overrides


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML recipe every fold starts from")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. train.epochs=5")
    parser.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds (>= 2)")
    add_run_flags(parser, ("task", "data", "model", "weights", "epochs", "batch_size", "img_size", "lr", "device",
                           "workers", "seed", "output"),
                  data="dataset folder or file; its train split is divided into folds (data.root)",
                  epochs="training epochs per fold (train.epochs)",
                  seed="seed of the folds and of every run (train.seed)",
                  output="root of the fold runs and the table (train.output)")
    add_log_level(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from detkit.config import load_config
    from detkit.engine.kfold import run_kfold_and_report

    configure_logging(args.log_level)
    cfg = load_config(args.config, [*args.overrides, *flag_overrides(args)])
    print(run_kfold_and_report(cfg, args.folds))
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_intermixed_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
