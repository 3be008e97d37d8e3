"""Convert a detection dataset between COCO json, YOLO txt and Pascal VOC XML (split by split).

Training reads COCO, YOLO and VOC datasets as they are (see README, Datasets); convert only to get a copy in another
format.

Examples:
    python tools/convert_dataset.py --from yolo --to coco --src data/yolo_set --dst data/coco_set
    python tools/convert_dataset.py --from coco --to voc --src data/shapes_det --dst /tmp/shapes_voc
    python tools/convert_dataset.py --from coco --to yolo --src ann/instances_val2017.json --images val2017 --dst out

Layouts: COCO ``SRC/annotations.json`` or ``SRC/{train,val,test}/annotations.json`` (or an annotation file with
--images); YOLO ``SRC/images[/split]`` + ``SRC/labels[/split]`` + ``data.yaml`` or ``classes.txt``; VOC
``SRC/Annotations``, ``SRC/JPEGImages``, optional ``SRC/ImageSets/Main/<split>.txt``.
--dst must lie outside --src; image names that leave their folder (absolute, or with ``..``) are refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from detkit.data.formats import FORMATS, convert_dataset  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="src_format", choices=FORMATS, required=True, help="format of --src")
    parser.add_argument("--to", dest="dst_format", choices=FORMATS, required=True, help="format to write")
    parser.add_argument("--src", type=Path, required=True, help="source dataset root (or COCO annotation file)")
    parser.add_argument("--dst", type=Path, required=True, help="output root (created; not --src nor inside it)")
    parser.add_argument("--images", type=Path, default=None, help="image folder of a COCO annotation file given as --src")
    parser.add_argument("--no-copy-images", action="store_true", help="write annotations only, do not copy images")
    parser.add_argument("--workers", type=int, default=None, help="threads reading image sizes (default: CPU count + 4)")
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = convert_dataset(
        args.src,
        args.dst,
        args.src_format,
        args.dst_format,
        copy_images=not args.no_copy_images,
        images_dir=args.images,
        workers=args.workers,
    )
    for split, path in written.items():
        print(f"{split or 'all'}: {path}")
    return 0


def _run_cli() -> int:
    from detkit.cli import run_cli

    return run_cli(main, get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
