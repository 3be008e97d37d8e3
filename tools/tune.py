"""Hyperparameter grid: one fine-tuning run per combination, and a results table sorted by the best val metric.

Examples:
    python tools/tune.py --config configs/shapes_cls_resnet18.yaml --grid lr=0.01,0.001 batch_size=32,64
    python tools/tune.py --config configs/shapes_cls_resnet18.yaml --grid optim.name=sgd,adamw \\
        --set train.epochs=2 --output runs/tune_optim

Grid keys are dotted config keys or unique leaf names (lr = optim.lr, batch_size = data.batch_size).
Each run gets OUTPUT/<params>/ with its own checkpoints and TensorBoard events; the combined table
is written to OUTPUT/results.csv and OUTPUT/results.json (as RunManager names them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML recipe every run starts from")
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                        help="values to try per key; runs cover every combination")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="fixed dotted overrides applied to every run, e.g. train.epochs=2")
    parser.add_argument("--output", type=Path, default=Path("runs/tune"), help="root directory of the runs")
    parser.add_argument("--exist-ok", action="store_true", help="replace the runs of an earlier grid in --output")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkit.config import load_config, parse_grid
    from detkit.engine.tune import tune

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    cfg = load_config(args.config, [*args.overrides, *([("train.exist_ok", True)] if args.exist_ok else [])])
    result = tune(cfg, parse_grid(args.grid), args.output)
    for run in result["runs"]:
        params = ", ".join(f"{k}={v}" for k, v in run["params"].items())
        value = run["value"]
        shown = f"{result['metric']} {value:.4f}" if value is not None else f"failed: {run.get('error', 'no result')}"
        print(f"{params}: best {shown} ({run['dir']})")
    print(f"results: {result['csv']} and {result['json']}")
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
