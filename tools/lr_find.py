"""LR finder: an exponential learning-rate sweep over the training data (Smith's range test, fastai's lr_find), the
smoothed loss, a suggestion, lr_find.png and lr_find.json; the model is left as it was.

Examples:
    python tools/lr_find.py --config configs/shapes_cls_resnet18.yaml
    python tools/lr_find.py --data data/shapes --model resnet18 --weights none --img-size 32 --steps 150
    python tools/finetune.py --data data/shapes --weights none --lr auto    # sweep, then train at the suggestion

The run's optimiser, per-stage ratios and policy are those the config resolves to (as tools/finetune.py would train
it); the printed suggestion is a value for optim.lr.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from detkit.cli import add_log_level, add_run_flags, configure_logging, flag_overrides


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML recipe (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    add_run_flags(parser, ("task", "data", "model", "weights", "batch_size", "img_size", "device", "workers", "seed"))
    parser.add_argument("--steps", type=int, default=100, help="steps of the sweep (default 100)")
    parser.add_argument("--start-lr", type=float, default=1e-7, help="first lr of the sweep (default 1e-7)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="last lr of the sweep (default 10)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for lr_find.png and lr_find.json (default: <train.output>/lr_find)")
    add_log_level(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    from detkit.config import load_config
    from detkit.engine.experiment import build_experiment
    from detkit.engine.lr_finder import PEAK_FACTOR, find_lr, save_lr_find

    configure_logging(args.log_level)
    cfg = load_config(args.config, [*args.overrides, *flag_overrides(args)])
    if cfg.optim.lr == "auto":  # the sweep is what auto would run: start it from the policy's lr instead
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=None))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=None))
    experiment = build_experiment(cfg)
    trainer = experiment.trainer
    result = find_lr(trainer.model, experiment.task, trainer.optimizer, trainer.train_loader,
                     base_lr=float(experiment.cfg.optim.lr), device=trainer.device, start_lr=args.start_lr,
                     end_lr=args.end_lr, num_steps=args.steps, amp_dtype=trainer.amp_dtype)
    out = args.output if args.output is not None else Path(cfg.train.output) / "lr_find"
    json_path, png_path = save_lr_find(result, out)
    minimum, valley, steepest = (("n/a" if lr is None else f"{lr:.3g}")
                                 for lr in (result.minimum, result.valley, result.steepest))
    print(f"suggested optim.lr {result.suggestion:.3g} ({PEAK_FACTOR:g}x the loss minimum {minimum}, kept {PEAK_FACTOR:g}x "
          f"below where it blows up; valley {valley}, steepest {steepest}; {len(result.lrs)} steps, {result.stopped}); "
          f"plot {png_path}, data {json_path}")
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_intermixed_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
