"""Evaluate a detkit checkpoint on a dataset split: accuracy, per-class precision/recall and the confusion matrix.

Examples:
    python tools/eval.py --checkpoint runs/shapes/best.pt --data data/shapes
    python tools/eval.py --checkpoint runs/shapes/best.pt --data data/shapes --split test --output runs/shapes/test

Writes eval_metrics.json, confusion_matrix.pt and confusion_matrix.png to --output
(default: <checkpoint dir>/eval_<split>) and prints the results.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a detkit checkpoint (best.pt, last.pt)")
    parser.add_argument("--data", type=Path, required=True, help="dataset root holding the split's class folders")
    parser.add_argument("--split", default="val", help="sub-folder of --data to evaluate (default: val)")
    parser.add_argument("--output", type=Path, default=None, help="where to write results (default: <ckpt dir>/eval_<split>)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the training config's)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


def format_report(metrics: dict, classes: list[str]) -> str:
    """Human-readable accuracy, per-class table and confusion matrix."""
    lines = [
        f"checkpoint {metrics['checkpoint']} on split {metrics['split']!r}: {metrics['val_count']} images"
        + (f" ({metrics['skipped_images']} unreadable skipped)" if metrics.get("skipped_images") else ""),
        f"acc@1 {metrics['val_acc']:.4f}  acc@5 {metrics['val_acc5']:.4f}  loss {metrics['val_loss']:.4f}",
        "",
        f"{'class':<20} {'precision':>9} {'recall':>9}",
    ]
    for name, row in metrics["val_per_class"].items():
        lines.append(f"{name[:20]:<20} {row['precision']:>9.4f} {row['recall']:>9.4f}")
    cm = metrics["confusion_matrix"].tolist()
    width = max(5, *(len(str(v)) for r in cm for v in r)) + 1
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * 20 + "".join(f"{c[:width - 1]:>{width}}" for c in classes)]
    lines += [f"{c[:20]:<20}" + "".join(f"{v:>{width}}" for v in r) for c, r in zip(classes, cm)]
    if metrics.get("most_confused"):
        lines += ["", "most confused: " + ", ".join(f"{t} -> {p} ({n})" for t, p, n in metrics["most_confused"])]
    lines += ["", f"results written to {metrics['output']}"]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from detkit.engine.experiment import evaluate_checkpoint

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.output, device=args.device,
                                  batch_size=args.batch_size, workers=args.workers)
    print(format_report(metrics, list(metrics["val_per_class"])))
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
