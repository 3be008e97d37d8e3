"""Classify images with a trained classifier (a checkpoint or its ONNX/TorchScript export); write top-k labels.

Examples:
    detkit-predict --checkpoint runs/shapes/best.pt --source data/shapes/val/circle --output runs/predict
    python tools/predict.py --checkpoint best.onnx --source "photos/**/*.jpg" --output out --topk 3 --contact-sheet

Writes DIR/predictions.csv (file_name, label1, probability1, ..., labelK, probabilityK), DIR/predictions.json
(per image: file_name and top: label, class_index, probability, decreasing) and, with --contact-sheet,
DIR/contact_sheet.png (thumbnails with their top-2 labels). The preprocessing is the checkpoint's eval transform
(shorter-side resize, centre crop, its normalisation). Unreadable files are reported and skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a detkit classification checkpoint (best.pt) or its export (.onnx, .torchscript.pt)")
    parser.add_argument("--source", required=True, help="an image file, a folder of images or a glob pattern")
    parser.add_argument("--output", type=Path, required=True, help="folder for the results (not inside --source)")
    parser.add_argument("--topk", type=int, default=5, help="labels per image (default: 5, at most the classes)")
    parser.add_argument("--contact-sheet", action="store_true", help="also write contact_sheet.png")
    parser.add_argument("--img-size", type=int, default=None, help="network input side (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkit.engine.distributed import resolve_device
    from detkit.export import load_predictor
    from detkit.infer import run_classification, write_errors_as_user_errors

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    predictor = load_predictor(args.checkpoint, "classify", img_size=args.img_size,
                               device=args.device if args.device == "auto" else resolve_device(args.device),
                               batch_size=args.batch_size)
    with write_errors_as_user_errors(args.output):  # a full disk: one line, no partial file
        summary = run_classification(predictor, args.source, args.output, topk=args.topk,
                                     contact_sheet=args.contact_sheet)
    for line in summary.problems(args.source):
        print(line, file=sys.stderr)
    print(summary)
    return summary.exit_code


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
