"""Evaluate a detkit checkpoint on a dataset split: classification accuracy and confusion matrix, or detection COCO mAP.

Examples:
    python tools/eval.py --checkpoint runs/shapes/best.pt --data data/shapes
    python tools/eval.py --checkpoint runs/shapes/best.pt --data data/shapes --split test --output runs/shapes/test
    python tools/eval.py --checkpoint runs/shapes_det_resnet18_ssd/best.pt --data data/shapes_det

The checkpoint says its task. Classification reads DATA/<split>/<class>/* and writes eval_metrics.json
(loss, acc@1, acc@5, per-class precision/recall), confusion_matrix.pt and confusion_matrix.png. Detection
reads the split's COCO annotations (DATA/<split>/annotations.json or DATA/annotations/instances_<split>.json)
and writes eval_metrics.json (pycocotools mAP@[.5:.95], mAP50, mAP75, AR, per-class AP), pr_curves.png
(precision-recall at IoU 0.5, one curve per class), pr_curves/<class>.png (one class each) and
val_predictions.png (predictions beside ground truth).
Files go to --output (default: <checkpoint dir>/eval_<split>); the results are printed.
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
    parser.add_argument("--data", type=Path, required=True,
                        help="dataset root holding the split (class folders, or images and COCO annotations)")
    parser.add_argument("--split", default="val", help="sub-folder of --data to evaluate (default: val)")
    parser.add_argument("--output", type=Path, default=None, help="where to write results (default: <ckpt dir>/eval_<split>)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the training config's)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


def _score(value: float) -> str:
    """A COCO number, or n/a where pycocotools has nothing to measure (-1: no ground truth)."""
    return f"{value:.4f}" if value >= 0 else "n/a"


def _classification_lines(metrics: dict) -> list[str]:
    """Accuracy, per-class precision/recall table and confusion matrix, with class names in full."""
    classes = metrics["classes"]
    label = max(len("class"), *(len(c) for c in classes))
    lines = [
        f"acc@1 {metrics['val_acc']:.4f}  acc@5 {metrics['val_acc5']:.4f}  loss {metrics['val_loss']:.4f}",
        "",
        f"{'class':<{label}} {'precision':>9} {'recall':>9}",
    ]
    for name, row in metrics["val_per_class"].items():
        lines.append(f"{name:<{label}} {row['precision']:>9.4f} {row['recall']:>9.4f}")
    cm = metrics["confusion_matrix"].tolist()
    widths = [max(len(c), *(len(str(r[j])) for r in cm)) + 1 for j, c in enumerate(classes)]
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * label + "".join(f"{c:>{w}}" for c, w in zip(classes, widths))]
    lines += [f"{c:<{label}}" + "".join(f"{v:>{w}}" for v, w in zip(r, widths)) for c, r in zip(classes, cm)]
    if metrics.get("most_confused"):
        lines += ["", "most confused: " + ", ".join(f"{t} -> {p} ({n})" for t, p, n in metrics["most_confused"])]
    return lines


def _detection_lines(metrics: dict) -> list[str]:
    """COCO mAP, AR and the per-class AP table."""
    label = max(len("class"), *(len(c) for c in metrics["val_per_class_ap"]))
    loss = f"  loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
    lines = [
        f"mAP@[.5:.95] {_score(metrics['val_map'])}  mAP50 {_score(metrics['val_map50'])}  "
        f"mAP75 {_score(metrics['val_map75'])}  AR@100 {_score(metrics['val_ar100'])}{loss}",
        f"{metrics['val_detections']} detections",
        "",
        f"{'class':<{label}} {'AP':>9} {'AP50':>9}",
    ]
    for name, row in metrics["val_per_class_ap"].items():
        lines.append(f"{name:<{label}} {_score(row['ap']):>9} {_score(row['ap50']):>9}")
    if any(row["ap"] < 0 for row in metrics["val_per_class_ap"].values()):
        lines += ["", "n/a: the class has no ground-truth boxes in this split"]
    return lines


def format_report(metrics: dict) -> str:
    """Human-readable report of :func:`detkit.engine.experiment.evaluate_checkpoint`'s metrics, by their task."""
    skipped = metrics.get("skipped_images")
    lines = [f"checkpoint {metrics['checkpoint']} on split {metrics['split']!r}: {metrics['images']} images"
             + (f" ({skipped} unreadable skipped)" if skipped else "")]
    lines += _detection_lines(metrics) if metrics["task"] == "detect" else _classification_lines(metrics)
    lines += ["", f"results written to {metrics['output']}"]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from detkit.engine.evaluation import evaluate_checkpoint

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.output, device=args.device,
                                  batch_size=args.batch_size, workers=args.workers)
    print(format_report(metrics))
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
