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
import logging
import os
import sys
from pathlib import Path

from detkit.config import TASKS  # noqa: E402  (light: no torch)

# flag name -> dotted config key
FLAG_KEYS = {
    "task": "task",
    "data": "data.root",
    "model": "model.name",
    "weights": "model.weights",
    "epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "img_size": "data.img_size",
    "lr": "optim.lr",
    "output": "train.output",
    "device": "train.device",
    "workers": "data.workers",
    "seed": "train.seed",
    "resume": "train.resume",
    "deterministic": "train.deterministic",
    "exist_ok": "train.exist_ok",
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML recipe (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. optim.lr=0.01")
    parser.add_argument("--task", choices=TASKS, help="task: classify (class folders or path,label lists) or detect (COCO, YOLO or VOC boxes)")
    parser.add_argument("--data", help="dataset folder or file, read as it is (data.root): class folders or path,label "
                        "lists (classify); COCO, YOLO (folder or data.yaml) or Pascal VOC (detect)")
    parser.add_argument("--model", help="architecture, e.g. resnet18 or timm:resnet10t (model.name)")
    parser.add_argument("--weights", help="auto, imagenet, none or a weights file path (model.weights)")
    parser.add_argument("--epochs", type=int, help="training epochs (train.epochs)")
    parser.add_argument("--batch-size", type=int, help="images per batch and process (data.batch_size)")
    parser.add_argument("--img-size", type=int, help="network input side in pixels (data.img_size)")
    parser.add_argument("--lr", type=_lr_value, help="base learning rate (optim.lr), or auto: the LR finder's "
                        "suggestion (plot and JSON in OUTPUT/lr_find/)")
    parser.add_argument("--output", help="run directory (train.output)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes (data.workers)")
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument("--resume", help="checkpoint to continue from, or auto for OUTPUT/last.pt (train.resume)")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="deterministic kernels and cuDNN (train.deterministic; slower)")
    parser.add_argument("--exist-ok", action="store_true", default=None,
                        help="train into an --output that already holds a run, replacing it (train.exist_ok)")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="K-fold cross-validation of the train split: K runs in OUTPUT/fold_<i>/, the table in "
                             "OUTPUT/kfold.csv and kfold.json (as tools/kfold.py)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


def _lr_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def flag_overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The flags that were given, as ``(dotted key, value)`` overrides."""
    return [(key, getattr(args, flag)) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None]


def main(args: argparse.Namespace) -> int:
    from detkit.config import load_config
    from detkit.engine.experiment import run_experiment

    rank = int(os.environ.get("RANK", "0"))  # torchrun sets it; only rank 0 talks
    logging.basicConfig(level=args.log_level if rank == 0 else "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config, [*args.overrides, *flag_overrides(args)])
    if args.folds is not None:
        from detkit.engine.kfold import format_kfold_table, run_kfold

        result = run_kfold(cfg, args.folds)
        if rank == 0:
            print(format_kfold_table(result))
            print(f"k-fold table: {Path(cfg.train.output) / 'kfold.csv'} and kfold.json")
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
