"""Export a detkit checkpoint (classifier or detector) to ONNX or TorchScript, verified against PyTorch.

Examples:
    detkit-export --checkpoint runs/shapes_det_resnet18_ssd/best.pt --format onnx
    python tools/export.py --checkpoint runs/shapes/best.pt --format torchscript --output deploy/shapes.pt
    python tools/export.py --checkpoint best.pt --format onnx --dynamic-batch --img-size 320 --conf 0.3

Writes beside the checkpoint by default (best.onnx / best.torchscript.pt). Detectors export decode, score
threshold, top-k, class-aware NMS and the per-image cap inside the graph (single-shot detectors take the score
and IoU thresholds and the cap as graph inputs; torchvision detectors keep --conf as the lowest threshold and
--iou as their NMS IoU). Class names, category ids, normalisation and the input size are stored in the file.
The export runs on sample inputs and on validation images (--verify-images, else the checkpoint's val split,
else generated images) beside PyTorch; the largest differences are printed and nothing is written if any
output disagrees (exit 2). Run an export with tools/detect.py or tools/predict.py --checkpoint FILE.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a detkit checkpoint (best.pt)")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="export format")
    parser.add_argument("--output", type=Path, default=None,
                        help="file to write (default: beside the checkpoint, best.onnx / best.torchscript.pt)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="ONNX: any batch size (default: one image per call); TorchScript takes any batch")
    parser.add_argument("--img-size", type=int, default=None, help="input side (default: the checkpoint's)")
    parser.add_argument("--conf", type=float, default=0.25, help="detectors: default score threshold (0.25)")
    parser.add_argument("--iou", type=float, default=0.5, help="detectors: default NMS IoU threshold (0.5)")
    parser.add_argument("--max-det", type=int, default=100, help="detectors: default detections per image (100)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--verify-images", default=None,
                        help="images (file, folder, glob) to compare on (default: the checkpoint's val split)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


def main(args: argparse.Namespace) -> int:
    from detkit.export import export_checkpoint

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    report = export_checkpoint(args.checkpoint, args.format, args.output, img_size=args.img_size,
                               dynamic_batch=args.dynamic_batch, conf=args.conf, iou=args.iou, max_det=args.max_det,
                               opset=args.opset, verify_images=args.verify_images)
    print("\n".join(report.lines()))
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
