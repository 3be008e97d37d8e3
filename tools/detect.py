"""Run a trained detector (or a COCO-pretrained torchvision one) on images; write annotated images and predictions.json.

Examples:
    python tools/detect.py --checkpoint runs/shapes_det/best.pt --source data/shapes_det/val --output runs/detect
    python tools/detect.py --checkpoint best.pt --source "photos/**/*.jpg" --output out --conf 0.4 --save-txt
    python tools/detect.py --model torchvision:fasterrcnn_resnet50_fpn --source street.jpg --output out

Writes DIR/<image>.jpg (boxes, class names, scores), DIR/predictions.json (COCO results with file_name,
category_id as in the training set, bbox [x, y, w, h] in original pixels, score) and, with --save-txt,
DIR/labels/<image>.txt (YOLO: label cx cy w h score, normalised). Unreadable files are reported and skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a detkit detection checkpoint (best.pt)")
    parser.add_argument("--model", default=None,
                        help="without --checkpoint: a COCO-pretrained torchvision detector, "
                             "e.g. torchvision:fasterrcnn_resnet50_fpn (its weights must be in the torch cache)")
    parser.add_argument("--source", required=True, help="an image file, a folder of images or a glob pattern")
    parser.add_argument("--output", type=Path, required=True, help="folder for annotated images and predictions.json")
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold (default: 0.25)")
    parser.add_argument("--iou", type=float, default=0.5, help="class-aware NMS IoU threshold (default: 0.5)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image (default: 100)")
    parser.add_argument("--img-size", type=int, default=None, help="network input side (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--save-txt", action="store_true", help="also write YOLO txt files to DIR/labels/")
    parser.add_argument("--no-images", action="store_true", help="do not write annotated images")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkit.engine.distributed import resolve_device
    from detkit.infer import Predictor, run_detection

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give exactly one of --checkpoint CKPT (a trained detector) or --model torchvision:NAME "
                         "(a COCO-pretrained one)")
    options = {"img_size": args.img_size, "device": resolve_device(args.device), "batch_size": args.batch_size,
               "conf": args.conf, "iou": args.iou, "max_det": args.max_det}
    if args.checkpoint is not None:
        predictor = Predictor.from_checkpoint(args.checkpoint, **options)
    else:
        predictor = Predictor.from_pretrained(args.model, **options)
    summary = run_detection(predictor, args.source, args.output, save_txt=args.save_txt,
                            save_images=not args.no_images)
    for path, reason in summary.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(summary)
    if summary.images == 0:
        print(f"error: none of the files of {args.source} could be read", file=sys.stderr)
        return 1
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
