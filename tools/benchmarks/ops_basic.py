"""Benchmark cases for the basic box ops: IoU, anchors, matching and targets (detkit vs torchvision vs textbook).

``cases(quick, device)`` returns the cases; ``tools/benchmarks/ops.py`` times them and prints the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchvision

from detkit.ops import assign_anchors, box_iou, generalized_box_iou, multibox_prior, multibox_target

Case = dict


def _random_boxes(n: int, generator: torch.Generator, extent: float = 1.0, max_side: float = 0.3) -> torch.Tensor:
    """``Tensor[n, 4]`` xyxy boxes with positive sizes inside roughly ``[0, extent]``, realistic overlap."""
    xy = torch.rand(n, 2, generator=generator) * extent
    wh = (torch.rand(n, 2, generator=generator) * max_side + 0.01) * extent
    return torch.cat((xy, xy + wh), dim=1)


# ------------------------------------------------------------------------------------------------
# textbook references (plain loops, written from the book's description)
# ------------------------------------------------------------------------------------------------
def textbook_multibox_prior_loop(height: int, width: int, sizes: list[float], ratios: list[float]) -> torch.Tensor:
    """Per-pixel, per-anchor Python loop producing the textbook's anchors, ``Tensor[1, H*W*k, 4]``."""
    shapes = [(s * math.sqrt(ratios[0]), s / math.sqrt(ratios[0])) for s in sizes]
    shapes += [(sizes[0] * math.sqrt(r), sizes[0] / math.sqrt(r)) for r in ratios[1:]]
    rows = []
    for i in range(height):
        cy = (i + 0.5) / height
        for j in range(width):
            cx = (j + 0.5) / width
            for w, h in shapes:
                w = w * height / width
                rows.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return torch.tensor(rows, dtype=torch.float32).reshape(1, -1, 4)


def textbook_assign_anchor_to_bbox(gt: torch.Tensor, anchors: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The textbook's assignment: threshold pass, then ``G`` argmaxes over the whole ``[A, G]`` matrix."""
    num_anchors, num_gt = anchors.shape[0], gt.shape[0]
    jaccard = torchvision.ops.box_iou(anchors, gt)  # [A, G]
    matches = torch.full((num_anchors,), -1, dtype=torch.long)
    max_ious, indices = torch.max(jaccard, dim=1)
    above = max_ious >= threshold
    matches[above] = indices[above]
    for _ in range(num_gt):
        flat = int(torch.argmax(jaccard))
        box, anchor = flat % num_gt, flat // num_gt
        matches[anchor] = box
        jaccard[:, box] = -1
        jaccard[anchor, :] = -1
    return matches


def textbook_multibox_target(anchors: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The textbook's ``multibox_target``: a loop over images, each with the per-gt greedy loop."""
    anchors = anchors.squeeze(0)
    num_anchors = anchors.shape[0]
    offsets, masks, classes = [], [], []
    for label in labels:
        matches = textbook_assign_anchor_to_bbox(label[:, 1:], anchors)
        mask = (matches >= 0).float().unsqueeze(-1).repeat(1, 4)
        class_labels = torch.zeros(num_anchors, dtype=torch.long)
        assigned = torch.zeros((num_anchors, 4))
        true_idx = torch.nonzero(matches >= 0)
        gt_idx = matches[true_idx]
        class_labels[true_idx] = label[gt_idx, 0].long() + 1
        assigned[true_idx] = label[gt_idx, 1:]
        c_anc = torchvision.ops.box_convert(anchors, "xyxy", "cxcywh")
        c_gt = torchvision.ops.box_convert(assigned, "xyxy", "cxcywh")
        off_xy = 10 * (c_gt[:, :2] - c_anc[:, :2]) / c_anc[:, 2:]
        off_wh = 5 * torch.log(1e-6 + c_gt[:, 2:] / c_anc[:, 2:])
        offsets.append((torch.cat((off_xy, off_wh), dim=1) * mask).reshape(-1))
        masks.append(mask.reshape(-1))
        classes.append(class_labels)
    return torch.stack(offsets), torch.stack(masks), torch.stack(classes)


# ------------------------------------------------------------------------------------------------
# peak memory of one run (resident set size; torch's CPU allocations are invisible to tracemalloc)
# ------------------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_delta(fn: Callable[[], object]) -> int | None:
    """Bytes by which the resident set size peaks above its level before ``fn()``; None if unknown.

    Resets the kernel's high-water mark through ``/proc/self/clear_refs`` (Linux); elsewhere
    returns None rather than a misleading figure.
    """
    before = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return None
    if before is None:
        return None
    fn()
    peak = _rss_kib("VmHWM")
    return None if peak is None else max(0, peak - before) * 1024


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory of one call above the level before it: the CUDA allocator's peak, or the RSS peak."""
    if device.type != "cuda":
        return peak_rss_delta(fn)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _assign_case(num_anchors: int, num_gt: int, with_textbook: bool, note: str, device: torch.device) -> Case:
    g = torch.Generator().manual_seed(3)
    anchors = _random_boxes(num_anchors, g, extent=1.0, max_side=0.2).to(device)
    gt = _random_boxes(num_gt, g, extent=1.0, max_side=0.3).to(device)
    matrix_bytes = 4 * num_anchors * num_gt
    return {
        "op": "assign_anchors",
        "size": f"{num_anchors:,} anchors x {num_gt} gts",
        "impls": {
            "detkit": lambda: assign_anchors(gt, anchors),
            "torchvision": None,
            "textbook loop": (lambda: textbook_assign_anchor_to_bbox(gt, anchors)) if with_textbook else None,
        },
        "setup_note": f"{note}; one [G, A] float32 matrix = {matrix_bytes / 2**20:,.0f} MiB",
        "peak_bytes": lambda: peak_bytes(lambda: assign_anchors(gt, anchors), device),
    }


def cases(quick: bool, device: torch.device | str = "cpu") -> list[Case]:
    """Benchmark cases on ``device``; ``quick`` shrinks the sizes to a few-second smoke run.

    Textbook loops run on the CPU only (on CUDA they would time Python, not the GPU).
    """
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    g = torch.Generator().manual_seed(0)
    out: list[Case] = []

    n = 1000 if quick else 4000
    a, b = _random_boxes(n, g, extent=800.0).to(device), _random_boxes(n, g, extent=800.0).to(device)
    out.append({
        "op": "box_iou",
        "size": f"{n}x{n}",
        "impls": {"detkit": lambda: box_iou(a, b), "torchvision": lambda: torchvision.ops.box_iou(a, b),
                  "textbook loop": None},
        "setup_note": "float32 pixel boxes, sides up to 30% of an 800 px image; target <= 0.8x torchvision",
        "peak_bytes": {"detkit": lambda: peak_bytes(lambda: box_iou(a, b), device),
                       "torchvision": lambda: peak_bytes(lambda: torchvision.ops.box_iou(a, b), device)},
    })

    n = 500 if quick else 2000
    ga, gb = _random_boxes(n, g, extent=800.0).to(device), _random_boxes(n, g, extent=800.0).to(device)
    out.append({
        "op": "generalized_box_iou",
        "size": f"{n}x{n}",
        "impls": {"detkit": lambda: generalized_box_iou(ga, gb),
                  "torchvision": lambda: torchvision.ops.generalized_box_iou(ga, gb), "textbook loop": None},
        "setup_note": "float32 pixel boxes",
    })

    sizes, ratios = [0.75, 0.5, 0.25], [1, 2, 0.5]
    x = torch.zeros(1, 3, 561, 728, device=device)
    out.append({
        "op": "multibox_prior",
        "size": "561x728 (2,042,040 anchors)",
        "impls": {"detkit": lambda: multibox_prior(x, sizes, ratios), "torchvision": None, "textbook loop": None},
        "setup_note": "the textbook's published example; target < 0.3 s (loop version: see the next row)",
    })
    h, w = (14, 18) if quick else (56, 73)
    small = torch.zeros(1, 3, h, w, device=device)
    out.append({
        "op": "multibox_prior",
        "size": f"{h}x{w} ({h * w * 5:,} anchors)",
        "impls": {"detkit": lambda: multibox_prior(small, sizes, ratios), "torchvision": None,
                  "textbook loop": (lambda: textbook_multibox_prior_loop(h, w, sizes, ratios)) if on_cpu else None},
        "setup_note": "a smaller map so the per-pixel, per-anchor Python loop finishes; both on the same map",
    })

    batch, num_anchors, num_gt = (8, 2000, 10) if quick else (32, 10_000, 20)
    anchors = _random_boxes(num_anchors, g, extent=1.0, max_side=0.2).unsqueeze(0)
    labels = torch.cat(
        (torch.randint(0, 5, (batch, num_gt, 1), generator=g).float(),
         torch.stack([_random_boxes(num_gt, g, extent=1.0, max_side=0.3) for _ in range(batch)])),
        dim=2,
    )
    anchors, labels = anchors.to(device), labels.to(device)
    out.append({
        "op": "multibox_target",
        "size": f"batch {batch}, {num_anchors:,} anchors, {num_gt} gts",
        "impls": {"detkit": lambda: multibox_target(anchors, labels), "torchvision": None,
                  "textbook loop": (lambda: textbook_multibox_target(anchors, labels)) if on_cpu else None},
        "setup_note": "normalised boxes; textbook = per-image, per-gt loop; target >= 20x faster than it",
    })

    out.append(_assign_case(40_000, 100, on_cpu, "textbook = per-gt argmax over the whole matrix", device))
    if not quick:
        out.append(_assign_case(400_000, 500, False,
                                "textbook loop skipped (500 argmaxes over 2e8 entries); peak memory matters", device))
    return out
