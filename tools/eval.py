"""Evaluate a detkit checkpoint on a dataset split: classification accuracy and confusion matrix, or detection COCO mAP.

Examples:
    python tools/eval.py --checkpoint runs/shapes/best.pt --data data/shapes
    python tools/eval.py --checkpoint runs/shapes/best.pt --data data/shapes --split test --output runs/shapes/test
    python tools/eval.py --checkpoint runs/shapes_det_resnet18_ssd/best.pt --data data/shapes_det
    python tools/eval.py --predictions runs/detect/predictions.json --annotations data/shapes_det/val/annotations.json

The checkpoint says its task. Classification reads DATA/<split>/<class>/* and writes eval_metrics.json
(loss, acc@1, acc@5, per-class precision/recall), confusion_matrix.pt and confusion_matrix.png. Detection
reads the split's COCO annotations (DATA/<split>/annotations.json or DATA/annotations/instances_<split>.json)
and writes eval_metrics.json (pycocotools mAP@[.5:.95], mAP50, mAP75, AR, per-class AP), pr_curves.png
(precision-recall at IoU 0.5, one curve per class), pr_curves/<class>.png (one class each) and
val_predictions.png (predictions beside ground truth).
Files go to --output (default: <checkpoint dir>/eval_<split>); the results are printed.
With --predictions P --annotations A it scores any COCO results file (a list of image_id, category_id, bbox
[x, y, w, h], score; tools/detect.py's predictions.json) against COCO annotations with pycocotools and prints
the same report (eval_metrics.json in --output when given).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a detkit checkpoint (best.pt, last.pt)")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset root holding the split (class folders, or images and COCO annotations)")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="instead of --checkpoint/--data: a COCO results file to score (predictions.json)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="with --predictions: the COCO annotations (instances JSON) to score it against")
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
    if "predictions" in metrics:
        lines = [f"predictions {metrics['predictions']} against {metrics['annotations']}: {metrics['images']} images"]
    else:
        lines = [f"checkpoint {metrics['checkpoint']} on split {metrics['split']!r}: {metrics['images']} images"
                 + (f" ({skipped} unreadable skipped)" if skipped else "")]
    lines += _detection_lines(metrics) if metrics["task"] == "detect" else _classification_lines(metrics)
    if metrics.get("output"):
        lines += ["", f"results written to {metrics['output']}"]
    return "\n".join(lines)


def _read_results(path: Path) -> list[dict]:
    """A COCO results file: a JSON list of entries with image_id, category_id, bbox and score."""
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"predictions file {path} is not valid JSON: {err}") from None
    keys = {"image_id", "category_id", "bbox", "score"}
    bad = next((r for r in results if not isinstance(r, dict) or not keys <= set(r)), None) \
        if isinstance(results, list) else results
    if bad is not None:
        raise ValueError(f"predictions file {path} must be a COCO results list (entries with {sorted(keys)}), got "
                         f"{str(bad)[:120]}")
    return results


def score_predictions(predictions: Path, annotations: Path, output: Path | None) -> dict:
    """COCO metrics of a results file against annotations, in :func:`format_report`'s form."""
    from detkit.eval.coco import CocoEvaluator
    from detkit.io import atomic_write_json

    results = _read_results(predictions)
    evaluator = CocoEvaluator(annotations)
    unknown = sorted({int(r["image_id"]) for r in results} - set(evaluator.coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"{predictions}: {len(unknown)} image ids are not in {annotations} (e.g. {unknown[:5]}); "
                         f"write the predictions with tools/detect.py --annotations {annotations}")
    evaluator.add_results(results)
    m = evaluator.compute()
    metrics = {"task": "detect", "predictions": str(predictions), "annotations": str(annotations),
               "images": m.num_images, "output": str(output) if output else None, "val_detections": m.num_predictions,
               **{f"val_{k}": v for k, v in m.scalars().items()},
               "val_per_class_ap": {k: {"ap": m.per_class_ap[k], "ap50": m.per_class_ap50[k]} for k in m.per_class_ap}}
    if output is not None:
        atomic_write_json(output / "eval_metrics.json", metrics)
    return metrics


def main(args: argparse.Namespace) -> int:
    from detkit.engine.evaluation import evaluate_checkpoint

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.predictions is not None or args.annotations is not None:
        if args.predictions is None or args.annotations is None or args.checkpoint is not None:
            raise ValueError("give --predictions P and --annotations A together (and no --checkpoint)")
        print(format_report(score_predictions(args.predictions, args.annotations, args.output)))
        return 0
    if args.checkpoint is None or args.data is None:
        raise ValueError("give --checkpoint CKPT and --data ROOT (or --predictions P --annotations A)")
    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.output, device=args.device,
                                  batch_size=args.batch_size, workers=args.workers)
    print(format_report(metrics))
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
