"""Run a trained detector (a checkpoint, its ONNX/TorchScript export, or a COCO-pretrained torchvision model) on
images, videos or a camera; write annotated images or video, predictions.json or JSON lines, YOLO txt.

Examples:
    detkit-detect --checkpoint runs/shapes_det/best.pt --source data/shapes_det/val --output runs/detect
    python tools/detect.py --checkpoint best.onnx --source "photos/**/*.jpg" --output out --conf 0.4 --save-txt
    python tools/detect.py --checkpoint best.pt --source photos --output out --classes person car \\
        --conf 0.25 --conf-class person=0.5
    python tools/detect.py --checkpoint best.pt --source clip.mp4 --output out          # or --source 0 (camera)
    python tools/detect.py --checkpoint best.pt --source aerial.jpg --output out --tile 640 --tile-overlap 0.2
    python tools/detect.py --model torchvision:fasterrcnn_resnet50_fpn --source street.jpg --output out

Images: DIR/<image>.jpg (boxes, class names, scores), DIR/predictions.json (COCO results: image_id, file_name,
category_id as in the training set, bbox [x, y, w, h] in original pixels, score) and, with --save-txt,
DIR/labels/<image>.txt (YOLO: label cx cy w h score, normalised) with DIR/classes.txt and DIR/data.yaml.
image_id is the dataset's id (matched by file name) when the source folder holds annotations.json (a detkit
split) or --annotations is given, so predictions.json scores with pycocotools as it is; otherwise sequential.
Videos, cameras, stream URLs: DIR/<name>.mp4 (annotated) and DIR/<name>.jsonl (one line per frame).
Unreadable files are reported and skipped; --output may not be (or lie inside) the source folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a detkit detection checkpoint (best.pt) or its export (best.onnx, best.torchscript.pt)")
    parser.add_argument("--model", default=None,
                        help="without --checkpoint: a COCO-pretrained torchvision detector, "
                             "e.g. torchvision:fasterrcnn_resnet50_fpn (its weights must be in the torch cache)")
    parser.add_argument("--source", required=True,
                        help="an image file, a folder of images, a glob pattern, a video file, a camera index (0) "
                             "or a stream URL")
    parser.add_argument("--output", type=Path, required=True, help="folder for the results (not inside --source)")
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold (default: 0.25)")
    parser.add_argument("--conf-class", action="append", default=[], metavar="NAME=SCORE",
                        help="score threshold of one class (repeatable), e.g. --conf-class person=0.5")
    parser.add_argument("--classes", nargs="+", default=None, metavar="NAME", help="keep only these classes")
    parser.add_argument("--iou", type=float, default=0.5, help="class-aware NMS IoU threshold (default: 0.5)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image (default: 100)")
    parser.add_argument("--img-size", type=int, default=None, help="network input side (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="images (or tiles, frames) per forward pass")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="COCO annotations of the source images: predictions.json uses their image ids")
    parser.add_argument("--save-txt", action="store_true", help="also write YOLO txt files to DIR/labels/")
    parser.add_argument("--no-images", action="store_true", help="do not write annotated images (or video)")
    parser.add_argument("--tile", type=int, default=None, metavar="PIXELS",
                        help="detect on overlapping tiles of this side (large images, small objects)")
    parser.add_argument("--tile-overlap", type=float, default=0.2, help="fraction of a tile its neighbours share")
    parser.add_argument("--tile-full", action="store_true", help="with --tile: also run the whole image")
    parser.add_argument("--max-frames", type=int, default=None, help="videos and cameras: stop after N frames")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")
    return parser


def class_thresholds(values: list[str]) -> dict[str, float]:
    """``["person=0.5", ...]`` as ``{"person": 0.5}``; ``ValueError`` naming a malformed entry."""
    out: dict[str, float] = {}
    for value in values:
        name, sep, score = value.rpartition("=")
        try:
            out[name] = float(score)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ValueError(f"--conf-class: expected NAME=SCORE (e.g. person=0.5), got {value!r}")
    return out


def _predictor(args: argparse.Namespace):
    from detkit.engine.distributed import resolve_device
    from detkit.export import load_predictor
    from detkit.infer import Predictor, TiledPredictor

    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give exactly one of --checkpoint CKPT (a trained detector or its export) or --model "
                         "torchvision:NAME (a COCO-pretrained one)")
    # "auto" stays for exports: ONNX Runtime takes CUDA only where it has the provider
    device = args.device if args.device == "auto" and args.checkpoint is not None else resolve_device(args.device)
    options = {"img_size": args.img_size, "device": device, "batch_size": args.batch_size,
               "conf": args.conf, "iou": args.iou, "max_det": args.max_det,
               "class_conf": class_thresholds(args.conf_class), "keep_classes": args.classes}
    if args.checkpoint is not None:
        predictor = load_predictor(args.checkpoint, "detect", **options)
    else:
        predictor = Predictor.from_pretrained(args.model, **options)
    if args.tile is not None:
        return TiledPredictor(predictor, tile=args.tile, overlap=args.tile_overlap, full_image=args.tile_full)
    return predictor


def main(args: argparse.Namespace) -> int:
    from detkit.infer import is_stream_source, run_detection, run_video_detection, write_errors_as_user_errors

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    predictor = _predictor(args)
    with write_errors_as_user_errors(args.output):  # a full disk: one line, no partial file
        if is_stream_source(args.source):
            if args.save_txt or args.annotations is not None:
                raise ValueError("--save-txt and --annotations apply to image sources; a video writes JSON lines")
            summary = run_video_detection(predictor, args.source, args.output, save_video=not args.no_images,
                                          max_frames=args.max_frames)
            print(summary)
            return 0
        summary = run_detection(predictor, args.source, args.output, save_txt=args.save_txt,
                                save_images=not args.no_images, annotations=args.annotations)
    for line in summary.problems(args.source):
        print(line, file=sys.stderr)
    print(summary)
    return summary.exit_code


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
