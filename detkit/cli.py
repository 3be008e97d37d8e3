"""What the command-line tools in ``tools/`` share: the run flags that stand for config keys, logging, and the one
error path.

Library code raises; a CLI turns a user error into one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Sequence

from detkit.config.sections import TASKS
from detkit.errors import USER_ERRORS, one_line


def _lr_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


#: run flags of the training tools: flag (argparse dest) -> (dotted config key, argparse keywords); a flag given on the
#: command line overrides its key (precedence: recipe < KEY=VALUE overrides < flags)
RUN_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "task": ("task", {"choices": TASKS, "help": "task: classify (class folders or path,label lists) or detect "
                                                "(COCO, YOLO or VOC boxes)"}),
    "data": ("data.root", {"help": "dataset folder or file, read as it is (data.root): class folders or path,label "
                                   "lists (classify); COCO, YOLO (folder or data.yaml) or Pascal VOC (detect)"}),
    "model": ("model.name", {"help": "architecture, e.g. resnet18 or timm:resnet10t (model.name)"}),
    "weights": ("model.weights", {"help": "auto, imagenet, none or a weights file path (model.weights)"}),
    "epochs": ("train.epochs", {"type": int, "help": "training epochs (train.epochs)"}),
    "batch_size": ("data.batch_size", {"type": int, "help": "images per batch and process (data.batch_size)"}),
    "img_size": ("data.img_size", {"type": int, "help": "network input side in pixels (data.img_size)"}),
    "lr": ("optim.lr", {"type": _lr_value, "help": "base learning rate (optim.lr), or auto: the LR finder's "
                                                   "suggestion (plot and JSON in OUTPUT/lr_find/)"}),
    "output": ("train.output", {"help": "run directory (train.output)"}),
    "device": ("train.device", {"help": "auto, cpu, cuda or cuda:N (train.device)"}),
    "workers": ("data.workers", {"type": int, "help": "DataLoader worker processes (data.workers)"}),
    "seed": ("train.seed", {"type": int, "help": "random seed (train.seed)"}),
    "resume": ("train.resume", {"help": "checkpoint to continue from, or auto for OUTPUT/last.pt (train.resume)"}),
    "deterministic": ("train.deterministic", {"action": "store_true", "default": None,
                                              "help": "deterministic kernels and cuDNN (train.deterministic; slower)"}),
    "exist_ok": ("train.exist_ok", {"action": "store_true", "default": None,
                                    "help": "train into an --output that already holds a run, replacing it "
                                            "(train.exist_ok)"}),
}


def add_run_flags(parser: argparse.ArgumentParser, names: Sequence[str], **helps: str) -> None:
    """Add the :data:`RUN_FLAGS` ``names`` (argparse dests, e.g. ``batch_size`` for ``--batch-size``) to ``parser``;
    ``helps`` replaces the help text of some of them."""
    parser.set_defaults(run_flags=tuple(names))  # flag_overrides reads these flags only
    for name in names:
        _, kwargs = RUN_FLAGS[name]
        parser.add_argument("--" + name.replace("_", "-"), **{**kwargs, **({"help": helps[name]} if name in helps
                                                                           else {})})


def flag_overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The run flags (those :func:`add_run_flags` added) that were given, as ``(dotted key, value)`` overrides."""
    names = getattr(args, "run_flags", ())
    return [(RUN_FLAGS[name][0], getattr(args, name)) for name in names if getattr(args, name) is not None]


def add_log_level(parser: argparse.ArgumentParser, default: str = "INFO") -> None:
    """``--log-level`` (console log level)."""
    parser.add_argument("--log-level", default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="console log level")


def configure_logging(level: str) -> None:
    """One log format for every tool: ``HH:MM:SS LEVEL logger: message``."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_cli(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``main(args)``; a user error (bad config, missing file, unavailable weights, ...) prints one line, returns 2.

    Errors outside :data:`detkit.errors.USER_ERRORS` are bugs and keep their traceback.
    """
    try:
        return main(args)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
