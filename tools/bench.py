"""Benchmarks: medians and ratios against references measured in the same run.

Examples:
    python tools/bench.py ops            # box ops vs torchvision.ops and textbook loops
    python tools/bench.py ops --quick    # a smaller, faster pass
    python tools/bench.py train          # detkit trainer vs a hand-written loop; transform throughput
    python tools/bench.py detect         # detector latency vs torchvision detectors; training images/s
    python tools/bench.py faults         # payloads, bad inputs and injected faults: what detkit refuses and survives
    python tools/bench.py quality        # accuracy / mAP50 on small real-image sets vs plain torchvision loops
    python tools/bench.py quality --quick --only digits
    python tools/bench.py detect-train   # resnet18_ssd training steps vs torchvision's SSD; data pipeline share
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUITES = {"ops": "benchmarks.ops", "train": "benchmarks.train", "detect": "benchmarks.detect",
          "quality": "benchmarks.quality", "faults": "benchmarks.faults", "detect-train": "benchmarks.detect_train"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="suite", required=True)
    for name, module in SUITES.items():
        mod = importlib.import_module(module)
        mod.add_args(sub.add_parser(name, help=mod.__doc__.splitlines()[0]))
    return parser


def main(args: argparse.Namespace) -> int:
    return importlib.import_module(SUITES[args.suite]).run(args) or 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
