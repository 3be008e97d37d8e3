"""Parity of an export with the PyTorch model it came from: the same logits, the same detections after NMS.

``compare_detections`` matches detections one to one (same class, close box and score); ``Parity`` says how close.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Parity", "compare_detections", "compare_logits"]


@dataclass
class Parity:
    """How an export's outputs compare with PyTorch's on the same inputs.

    Attributes:
        what: what was compared (``"logits on 2 sample inputs"``).
        max_abs_diff: the largest absolute difference of matched values (logits or probabilities; detection
            scores and box coordinates in pixels).
        compared: values (classifiers) or detections (detectors) compared.
        missing: detections PyTorch finds that the export does not (above the threshold by more than the
            tolerance), plus those only the export finds; classifiers: images whose top-1 class differs.
    """

    what: str
    max_abs_diff: float = 0.0
    compared: int = 0
    missing: int = 0

    @property
    def agrees(self) -> bool:
        return self.missing == 0

    def __str__(self) -> str:
        verdict = "agree" if self.agrees else f"DISAGREE ({self.missing} unmatched)"
        return f"{self.what}: {self.compared} compared, max |diff| {self.max_abs_diff:.2e}, {verdict}"


def compare_logits(reference: Tensor, exported: Tensor, what: str, tolerance: float = 1e-3) -> Parity:
    """Compare ``Tensor[B, C]`` logits (or probabilities): within ``tolerance * (1 + max |reference|)`` and the
    same top-1 class per row count as agreeing."""
    if reference.shape != exported.shape:
        return Parity(what, float("inf"), 0, reference.shape[0])
    diff = float((reference.float() - exported.float()).abs().max()) if reference.numel() else 0.0
    bound = tolerance * (1.0 + float(reference.abs().max()) if reference.numel() else 1.0)
    missing = int((reference.argmax(1) != exported.argmax(1)).sum()) if reference.numel() else 0
    return Parity(what, diff, reference.numel(), missing + int(diff > bound))


def _match_image(ref: dict[str, Tensor], got: dict[str, Tensor], threshold: float, score_tol: float,
                 box_tol: float) -> tuple[int, int, float]:
    """``(matched, unmatched, max diff)`` of one image's detections, greedily by decreasing reference score."""
    used = torch.zeros(len(got["scores"]), dtype=torch.bool)
    matched, unmatched, worst = 0, 0, 0.0
    for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"]):
        box_diff = (got["boxes"] - box).abs().amax(dim=1) if len(got["scores"]) else got["scores"]
        score_diff = (got["scores"] - score).abs()
        ok = (~used) & (got["labels"] == label) & (box_diff <= box_tol) & (score_diff <= score_tol)
        if bool(ok.any()):
            j = int(torch.where(ok, score_diff, torch.full_like(score_diff, float("inf"))).argmin())
            used[j] = True
            matched += 1
            worst = max(worst, float(box_diff[j]), float(score_diff[j]))
        elif float(score) > threshold + score_tol:  # near the threshold either side may keep a detection
            unmatched += 1
    unmatched += int(((~used) & (got["scores"] > threshold + score_tol)).sum())
    return matched, unmatched, worst


def compare_detections(reference: Sequence[dict[str, Tensor]], exported: Sequence[dict[str, Tensor]], what: str, *,
                       threshold: float, score_tol: float = 1e-3, box_tol: float = 0.05) -> Parity:
    """Match two detectors' outputs image by image: same label, every box coordinate within ``box_tol`` pixels
    and the score within ``score_tol``. Detections scoring within ``score_tol`` of ``threshold`` may be missing
    on either side; any other detection without a partner counts as missing.

    Args:
        reference, exported: one dict per image with ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)``, ``scores``
            ``Tensor[K]`` and ``labels`` ``Tensor[K]``.
        what: description for the report.
        threshold: the score threshold both ran with.
        score_tol, box_tol: tolerances (probability units, pixels).
    """
    if len(reference) != len(exported):
        return Parity(what, float("inf"), 0, abs(len(reference) - len(exported)))
    parity = Parity(what)
    for ref, got in zip(reference, exported):
        ref = {k: ref[k].detach().cpu() for k in ("boxes", "scores", "labels")}
        got = {k: got[k].detach().cpu() for k in ("boxes", "scores", "labels")}
        matched, unmatched, worst = _match_image(ref, got, threshold, score_tol, box_tol)
        parity.compared += matched
        parity.missing += unmatched
        parity.max_abs_diff = max(parity.max_abs_diff, worst)
    return parity
