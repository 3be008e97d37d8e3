"""Box ops: median times of detkit, torchvision.ops and textbook loops (NMS, post-processing, IoU, anchors, matching).

Runs the NMS and post-processing cases defined here plus the cases of ``benchmarks/ops_basic.py`` (IoU, anchors,
matching and targets), prints one table and optionally writes it as JSON. Examples:

    python tools/bench.py ops                       # full sizes, CPU (and CUDA rows when a GPU is present)
    python tools/bench.py ops --quick               # a few seconds (a smoke run)
    python tools/bench.py ops --device cuda --repeat 20 --json bench-ops.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD

from benchmarks.ops_basic import cases as basic_cases
from benchmarks.ops_basic import peak_bytes
from detkit.ops.nms import batched_nms, nms, soft_nms
from detkit.ops.postprocess import multibox_detection, postprocess_detections

nms_module = sys.modules["detkit.ops.nms"]  # ``detkit.ops.nms`` the attribute is the function

Case = dict
IMPLS = ("detkit", "torchvision", "textbook loop")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a pass of a few seconds")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                        help="cpu; cuda; or auto = cpu, plus cuda rows when a GPU is present (default)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed runs per implementation, the median is reported (default 7, 3 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, like torchvision's CPU NMS kernel, and stable on a "
                             "shared machine; 0 keeps torch's default)")
    parser.add_argument("--only", default=None, help="run only the ops whose name contains this text, e.g. nms")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows and the machine as JSON")


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def _boxes(n: int, g: torch.Generator, extent: float, side: tuple[float, float]) -> torch.Tensor:
    """``Tensor[n, 4]`` xyxy boxes, corners uniform in ``[0, extent]``, sides uniform in ``side`` (pixels)."""
    xy = torch.rand(n, 2, generator=g) * extent
    wh = side[0] + torch.rand(n, 2, generator=g) * (side[1] - side[0])
    return torch.cat((xy, xy + wh), dim=1)


def _clustered(n: int, g: torch.Generator, objects: int = 50) -> torch.Tensor:
    """Detector-like output: ``n`` boxes jittered around ``objects`` objects in a 1000 px image."""
    centres = _boxes(objects, g, 1000.0, (30.0, 300.0))[torch.randint(0, objects, (n,), generator=g)]
    wh = centres[:, 2:] - centres[:, :2]
    return centres + (torch.rand(n, 4, generator=g) - 0.5) * 0.3 * wh.repeat(1, 2)


DISTRIBUTIONS: dict[str, tuple[str, Callable[[int, torch.Generator], torch.Tensor]]] = {
    "random": ("uniform in a 1000 px image, sides 10-200 px (realistic overlap)",
               lambda n, g: _boxes(n, g, 1000.0, (10.0, 200.0))),
    "crowded": ("uniform in a 100 px area, sides 20-60 px (many boxes in a small area)",
                lambda n, g: _boxes(n, g, 100.0, (20.0, 60.0))),
    "clustered": ("jittered copies of 50 objects (detector-like: most boxes suppressed)", _clustered),
}


# ------------------------------------------------------------------------------------------------
# textbook references (Dive into Deep Learning, anchor boxes; written from its description)
# ------------------------------------------------------------------------------------------------
def textbook_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Take the best remaining box, drop the rest that overlap it above the threshold; one step per kept box."""
    order = torch.argsort(scores, dim=-1, descending=True)
    keep = []
    while order.numel() > 0:
        best = order[0]
        keep.append(best)
        if order.numel() == 1:
            break
        iou = torchvision.ops.box_iou(boxes[best].reshape(-1, 4), boxes[order[1:]]).reshape(-1)
        order = order[1:][iou <= iou_threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long, device=boxes.device)


def textbook_multibox_detection(cls_probs, offset_preds, anchors, nms_threshold=0.5, pos_threshold=0.009999999):
    """The textbook's ``multibox_detection``: one image at a time, its own NMS loop."""
    anchors = anchors.squeeze(0)
    centre = torchvision.ops.box_convert(anchors, "xyxy", "cxcywh")
    out = []
    for cls_prob, offset_pred in zip(cls_probs, offset_preds):
        offset_pred = offset_pred.reshape(-1, 4)
        conf, class_id = torch.max(cls_prob[1:], 0)
        xy = offset_pred[:, :2] * centre[:, 2:] / 10 + centre[:, :2]
        wh = torch.exp(offset_pred[:, 2:] / 5) * centre[:, 2:]
        boxes = torchvision.ops.box_convert(torch.cat((xy, wh), 1), "cxcywh", "xyxy")
        keep = textbook_nms(boxes, conf, nms_threshold)
        combined = torch.cat((keep, torch.arange(len(conf), device=keep.device)))
        uniques, counts = combined.unique(return_counts=True)
        others = uniques[counts == 1]
        class_id[others] = -1
        order = torch.cat((keep, others))
        class_id, conf, boxes = class_id[order], conf[order], boxes[order]
        below = conf < pos_threshold
        class_id[below] = -1
        conf[below] = 1 - conf[below]
        out.append(torch.cat((class_id[:, None], conf[:, None], boxes), 1))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------
# NMS and post-processing cases
# ------------------------------------------------------------------------------------------------
def _nms_case(kind: str, n: int, device: torch.device, textbook: bool) -> Case:
    g = torch.Generator().manual_seed(n)
    note, make = DISTRIBUTIONS[kind]
    boxes, scores = make(n, g).to(device), torch.rand(n, generator=g).to(device)
    kept = len(nms(boxes, scores, 0.5))
    return {
        "op": "nms",
        "size": f"N={n:,} {kind}",
        "impls": {
            "detkit": lambda: nms(boxes, scores, 0.5),
            "torchvision": lambda: torchvision.ops.nms(boxes, scores, 0.5),
            "textbook loop": (lambda: textbook_nms(boxes, scores, 0.5)) if textbook else None,
        },
        "setup_note": f"{note}; float32, IoU threshold 0.5, {kept:,} kept",
        "peak_bytes": {"detkit": lambda: peak_bytes(lambda: nms(boxes, scores, 0.5), device),
                       "torchvision": lambda: peak_bytes(lambda: torchvision.ops.nms(boxes, scores, 0.5), device)},
    }


def _crossover_case(kind: str, n: int) -> Case:
    """Where detkit's CPU ``nms`` stops handing the whole input to torchvision's kernel.

    ``detkit`` here is what ``nms`` runs just above the crossover (``_KERNEL_MAX_CPU = N - 1``): one
    vectorised round (the kernel decides the 128 best boxes, a pass drops what their kept boxes
    suppress), then the kernel on the rest; called without ``nms``'s input checks. ``torchvision`` is
    the kernel alone, which is what ``nms`` runs at and below the crossover.
    """
    g = torch.Generator().manual_seed(n)
    note, make = DISTRIBUTIONS[kind]
    boxes, scores = make(n, g), torch.rand(n, generator=g)
    threshold = nms_module._threshold_for(boxes.dtype, 0.5)
    return {
        "op": "nms_crossover",
        "size": f"N={n:,} {kind}",
        "impls": {
            "detkit": lambda: nms_module._greedy_keep_cpu(boxes, scores, threshold, kernel_max=n - 1),
            "torchvision": lambda: torchvision.ops.nms(boxes, scores, 0.5),
            "textbook loop": None,
        },
        "setup_note": f"{note}; detkit = one vectorised round, then the kernel; torchvision = the kernel alone",
    }


def _batched_case(kind: str, n: int, classes: int, device: torch.device) -> Case:
    g = torch.Generator().manual_seed(n + classes)
    note, make = DISTRIBUTIONS[kind]
    boxes, scores = make(n, g).to(device), torch.rand(n, generator=g).to(device)
    idxs = torch.randint(0, classes, (n,), generator=g).to(device)
    return {
        "op": "batched_nms",
        "size": f"N={n:,} {kind}, {classes} classes",
        "impls": {
            "detkit": lambda: batched_nms(boxes, scores, idxs, 0.5),
            "torchvision": lambda: torchvision.ops.batched_nms(boxes, scores, idxs, 0.5),
            "textbook loop": None,
        },
        "setup_note": f"{note}; random class per box; torchvision offsets boxes per class up to 4,000 "
                      "coordinates on CPU, then loops over classes",
    }


def _soft_nms_case(n: int, device: torch.device) -> Case:
    g = torch.Generator().manual_seed(7)
    boxes, scores = _clustered(n, g).to(device), torch.rand(n, generator=g).to(device)
    return {
        "op": "soft_nms",
        "size": f"N={n:,} clustered",
        "impls": {"detkit": lambda: soft_nms(boxes, scores), "torchvision": None, "textbook loop": None},
        "setup_note": "gaussian, sigma 0.5, score threshold 0.001; one vectorised step per selected box",
    }


def _multibox_detection_case(batch: int, num_anchors: int, classes: int, device: torch.device) -> Case:
    g = torch.Generator().manual_seed(8)
    anchors = (_boxes(num_anchors, g, 0.8, (0.05, 0.2))).unsqueeze(0).to(device)
    cls_probs = torch.rand(batch, classes + 1, num_anchors, generator=g).softmax(1).to(device)
    offsets = (torch.randn(batch, num_anchors * 4, generator=g) * 0.1).to(device)
    return {
        "op": "multibox_detection",
        "size": f"batch {batch}, {num_anchors:,} anchors, {classes} classes",
        "impls": {
            "detkit": lambda: multibox_detection(cls_probs, offsets, anchors),
            "torchvision": None,
            "textbook loop": lambda: textbook_multibox_detection(cls_probs, offsets, anchors),
        },
        "setup_note": "textbook = per-image loop with its own NMS loop",
    }


def _postprocess_case(batch: int, num_anchors: int, classes: int, device: torch.device) -> Case:
    g = torch.Generator().manual_seed(9)
    anchors = _boxes(num_anchors, g, 280.0, (8.0, 120.0)).to(device)
    logits = (torch.randn(batch, num_anchors, classes, generator=g) * 3).to(device)
    regression = (torch.randn(batch, num_anchors, 4, generator=g) * 0.3).to(device)
    sizes = [(300, 300)] * batch
    ssd = argparse.Namespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), score_thresh=0.01,
                             topk_candidates=400, nms_thresh=0.45, detections_per_img=200)
    head = {"bbox_regression": regression, "cls_logits": logits}
    return {
        "op": "postprocess_detections",
        "size": f"batch {batch}, {num_anchors:,} anchors, {classes} classes",
        "impls": {
            "detkit": lambda: postprocess_detections(logits, regression, anchors, sizes, score_thresh=0.01,
                                                     topk_candidates=400, nms_thresh=0.45, detections_per_img=200),
            "torchvision": lambda: SSD.postprocess_detections(ssd, head, [anchors] * batch, sizes),
            "textbook loop": None,
        },
        "setup_note": "SSD300-like head; torchvision = SSD.postprocess_detections (loops over images and classes)",
    }


def nms_cases(quick: bool, device: torch.device) -> list[Case]:
    """The NMS and post-processing cases for one device."""
    if device.type == "cuda":
        sizes = (10_000,) if quick else (10_000, 20_000, 50_000, 100_000)
        out = [_nms_case(kind, n, device, False) for n in sizes for kind in ("random", "clustered")]
        out.append(_batched_case("random", 20_000, 80, device))
        out.append(_postprocess_case(8, 8732, 21, device))
        return out
    if quick:
        out = [_nms_case(kind, 1000, device, kind == "clustered") for kind in DISTRIBUTIONS]
        out.append(_batched_case("random", 5000, 80, device))
        out.append(_soft_nms_case(50, device))
        out.append(_multibox_detection_case(1, 300, 1, device))
        out.append(_postprocess_case(2, 2000, 21, device))
        return out
    out = [_nms_case(kind, n, device, True) for n in (1000, 5000) for kind in DISTRIBUTIONS]
    out += [_crossover_case(kind, n) for n in (256, 384, 512, 640, 768, 1024) for kind in DISTRIBUTIONS]
    out += [_nms_case(kind, 20_000, device, False) for kind in ("random", "clustered")]
    out += [_batched_case(kind, n, 80, device) for n in (5000, 20_000) for kind in ("random", "clustered")]
    out.append(_soft_nms_case(1000, device))
    out.append(_multibox_detection_case(4, 5444, 1, device))
    out.append(_postprocess_case(8, 8732, 21, device))
    return out


# ------------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# one timed sample of a fast call repeats it until the sample lasts about this long (as timeit's autorange):
# a single call of under a millisecond is at the mercy of timer and cache noise
_SAMPLE_S = 0.02
_MAX_CALLS = 1000


def _timed(fn: Callable[[], object], device: torch.device, number: int = 1) -> tuple[float, float]:
    """Wall time and CPU time of the calling thread per call, in seconds, over ``number`` consecutive calls."""
    _sync(device)
    start, start_cpu = time.perf_counter(), time.thread_time()
    for _ in range(number):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / number, (time.thread_time() - start_cpu) / number


def _calls_per_sample(seconds: float) -> int:
    """Consecutive calls in one timed sample of a call that took ``seconds``: enough for about ``_SAMPLE_S``."""
    return max(1, min(_MAX_CALLS, int(_SAMPLE_S / max(seconds, 1e-9))))


def _interleaved_medians(fns: dict[str, Callable[[], object]], repeat: int, device: torch.device,
                         slow: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Median wall and CPU time (ms) per call of each implementation, the samples interleaved round by round.

    Every round takes one sample of each implementation, in an order that rotates from round to round, so
    that a change of load on the machine hits all of them alike. A sample is one call, or for calls faster
    than ``_SAMPLE_S`` as many consecutive calls as fill about that time (the per-call mean of the sample
    is what the median is taken over). A first call of each warms caches, lazy initialisation and CUDA
    kernels and is not counted; an implementation named in ``slow`` (reference loops) whose first call
    takes longer than its limit in seconds is measured by that call alone, and the others in ``slow`` run
    at most 3 rounds of single calls.
    """
    first = {impl: _timed(fn, device) for impl, fn in fns.items()}
    number = {impl: 1 if impl in slow else _calls_per_sample(first[impl][0]) for impl in fns}
    runs: dict[str, list[tuple[float, float]]] = {impl: [] for impl in fns}
    for impl, limit in slow.items():
        if impl in first and first[impl][0] > limit:
            runs[impl].append(first[impl])
    names = list(fns)
    for i in range(repeat):
        for impl in names[i % len(names):] + names[: i % len(names)]:
            if impl in slow and (len(runs[impl]) >= 3 or first[impl][0] > slow[impl]):
                continue
            runs[impl].append(_timed(fns[impl], device, number[impl]))
    return {impl: (statistics.median(r[0] for r in rs) * 1e3, statistics.median(r[1] for r in rs) * 1e3)
            for impl, rs in runs.items()}


def _measure(case: Case, repeat: int, quick: bool) -> list[dict]:
    """Time every implementation of a case; ratios use the thread's CPU time when it is the whole cost.

    On the CPU with one torch thread all work runs on the calling thread, so its CPU time is the cost
    without the noise of other processes taking the core; otherwise (CUDA, several threads) wall time.
    """
    device = torch.device(case.get("device", "cpu"))
    by_cpu = device.type == "cpu" and torch.get_num_threads() == 1
    fns = {impl: case["impls"][impl] for impl in IMPLS if case["impls"].get(impl) is not None}
    # a textbook loop that takes over 0.5 s (0.1 s with --quick) runs once
    times = _interleaved_medians(fns, repeat, device, {"textbook loop": 0.1 if quick else 0.5})
    cost = {impl: t[1] if by_cpu else t[0] for impl, t in times.items()}
    peaks = case.get("peak_bytes")
    if callable(peaks):  # a single callable measures detkit
        peaks = {"detkit": peaks}
    rows = []
    for impl, (wall, cpu) in times.items():
        peak = peaks.get(impl) if peaks else None
        peak_bytes = peak() if peak is not None else None
        rows.append({
            "op": case["op"], "size": case["size"], "impl": impl, "device": device.type,
            "median_ms": wall, "cpu_ms": cpu if device.type == "cpu" else None,
            "ratio_basis": "cpu" if by_cpu else "wall",
            "vs_torchvision": cost[impl] / cost["torchvision"] if "torchvision" in cost else None,
            "vs_detkit": cost[impl] / cost["detkit"] if "detkit" in cost else None,
            "peak_mib": peak_bytes / 2**20 if peak_bytes is not None else None,
            "note": case.get("setup_note", ""),
        })
    return rows


# ------------------------------------------------------------------------------------------------
# machine, table, entry point
# ------------------------------------------------------------------------------------------------
def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(rows: list[dict]) -> str:
    header = ("op", "size", "impl", "dev", "median ms", "cpu ms", "x torchvision", "x detkit", "peak MiB")
    lines = [
        (r["op"], r["size"], r["impl"], r["device"], _fmt(r["median_ms"], ".3f"), _fmt(r["cpu_ms"], ".3f"),
         _fmt(r["vs_torchvision"], ".2f"), _fmt(r["vs_detkit"], ".2f"), _fmt(r["peak_mib"], ".1f"))
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    out.append("  ".join("-" * w for w in widths))
    previous = None
    for line in lines:
        if previous is not None and line[:2] != previous:
            out.append("")
        previous = line[:2]
        out.append("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench ops: --device cuda asked for, but no CUDA device is available")
        return 2
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}
    repeat = args.repeat or (3 if args.quick else 7)
    info = machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    info["load_average_1min"] = load
    if load > (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other processes are competing, "
              "medians will be noisy")
    print(f"machine: {info['cpu']}, {info['cpu_count']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"torchvision {info['torchvision']}" + (f", {info['cuda_device']}" if "cuda_device" in info else ""))
    rows, notes = [], {}
    for name in devices[args.device]:
        device = torch.device(name)
        for case in nms_cases(args.quick, device) + basic_cases(args.quick, device=device):
            if args.only and args.only not in case["op"]:
                continue
            case.setdefault("device", name)
            rows.extend(_measure(case, repeat, args.quick))
            notes[(case["op"], case["size"])] = case.get("setup_note", "")
    print(format_table(rows))
    basis = "the calling thread's CPU time (one torch thread)" if torch.get_num_threads() == 1 else "wall time"
    print(f"\nmedian ms: wall clock; cpu ms: CPU time of the calling thread; ratios on CPU rows use {basis}, "
          "on CUDA rows wall time")
    print("\ncases:")
    for (op, size), note in notes.items():
        print(f"  {op} {size}: {note}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": info, "repeat": repeat, "quick": args.quick, "rows": rows}, out, indent=1)
        print(f"wrote {args.json}")
    return 0
