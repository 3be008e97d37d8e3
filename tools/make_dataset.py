"""Generate detkit's embedded synthetic datasets (procedurally drawn, deterministic for a seed).

Examples:
    python tools/make_dataset.py shapes --task classify --out data/shapes
    python tools/make_dataset.py shapes --task classify --out data/shapes --n-train 2000 --n-val 400 --size 128 --seed 0
    python tools/make_dataset.py shapes --task detect --out data/shapes_det --n-train 400 --n-val 100 --seed 0
    python tools/make_dataset.py shapes --task classify --out /tmp/tiny --n-train 60 --n-val 12 --size 64 --overwrite

Re-running with the same settings finds the finished set and writes nothing; other settings need --overwrite.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from detkit.data.det_synthetic import DET_CLASSES, make_shapes_detection  # noqa: E402
from detkit.data.synthetic import CLASSIFICATION_CLASSES, SHAPES, make_shapes_classification  # noqa: E402


def _shapes_classify(args: argparse.Namespace) -> str:
    start = time.perf_counter()
    meta, created = make_shapes_classification(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        size=args.size,
        seed=args.seed,
        classes=args.classes.split(",") if args.classes else CLASSIFICATION_CLASSES,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    splits = " + ".join(f"{n} {s}" for s, n in meta["splits"].items())
    verb = f"wrote in {time.perf_counter() - start:.1f} s" if created else "already up to date, nothing written"
    return (
        f"shapes/classify: {splits} images, {meta['size']} px, {len(meta['classes'])} classes, "
        f"seed {meta['seed']} -> {args.out} ({verb})"
    )


def _shapes_detect(args: argparse.Namespace) -> str:
    start = time.perf_counter()
    meta, created = make_shapes_detection(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        min_size=args.min_size,
        max_size=args.max_size,
        seed=args.seed,
        classes=args.classes.split(",") if args.classes else DET_CLASSES,
        max_shapes=args.max_shapes,
        empty_prob=args.empty_prob,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{s} {c['images']} images / {c['boxes']} boxes" for s, c in meta["counts"].items())
    verb = f"wrote in {time.perf_counter() - start:.1f} s" if created else "already up to date, nothing written"
    return (
        f"shapes/detect: {counts}, {meta['min_size']}-{meta['max_size']} px, {len(meta['classes'])} classes, "
        f"seed {meta['seed']} -> {args.out} ({verb})"
    )


# One entry per --task.
SHAPES_TASKS = {"classify": _shapes_classify, "detect": _shapes_detect}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    shapes = sub.add_parser("shapes", help="coloured geometric shapes on textured, noisy backgrounds")
    shapes.add_argument("--task", choices=sorted(SHAPES_TASKS), default="classify", help="dataset kind to generate")
    shapes.add_argument("--out", type=Path, default=Path("data/shapes"), help="output folder (default: data/shapes)")
    shapes.add_argument("--n-train", type=int, default=2000, help="training images (default: 2000)")
    shapes.add_argument("--n-val", type=int, default=400, help="validation images (default: 400)")
    shapes.add_argument("--n-test", type=int, default=0, help="test images; 0 writes no test/ split (default: 0)")
    shapes.add_argument("--size", type=int, default=128, help="image side in pixels, >= 32 (default: 128)")
    shapes.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    shapes.add_argument(
        "--classes",
        default="",
        help=f"comma-separated names from {','.join(SHAPES)} (default: classify {','.join(CLASSIFICATION_CLASSES)}; "
        f"detect {','.join(DET_CLASSES)})",
    )
    shapes.add_argument("--min-size", type=int, default=160, help="detect: smallest image side in pixels (default: 160)")
    shapes.add_argument("--max-size", type=int, default=320, help="detect: largest image side in pixels (default: 320)")
    shapes.add_argument("--max-shapes", type=int, default=6, help="detect: most shapes per image (default: 6)")
    shapes.add_argument("--empty-prob", type=float, default=0.05,
                        help="detect: fraction of images without shapes (default: 0.05)")
    shapes.add_argument("--workers", type=int, default=None, help="generator threads (default: CPU count + 4)")
    shapes.add_argument("--overwrite", action="store_true", help="replace a set generated earlier with other settings")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        summary = SHAPES_TASKS[args.task](args)
    except (ValueError, FileExistsError, OSError) as err:
        print(f"make_dataset: error: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def _run_cli() -> int:
    return main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_run_cli())
