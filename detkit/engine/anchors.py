"""Detection without a recipe: the finest feature level and default boxes chosen from the train set's boxes.

For every candidate first level a throw-away detector says which feature maps it has; default boxes are fitted to
the letterboxed train boxes (:func:`detkit.data.box_stats.fit_ssd_anchors`) and the better-covering level wins.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from detkit.config.sections import FIRST_LEVELS, DetectConfig
from detkit.data.box_stats import anchor_coverage, fit_ssd_anchors, input_boxes, ssd_default_boxes
from detkit.models.detector import build_detector

__all__ = ["LOW_COVERAGE", "AnchorChoice", "feature_shapes", "resolve_anchors", "takes_default_boxes"]

logger = logging.getLogger(__name__)

#: coverage below which the run summary warns (share of train boxes with a best default box IoU >= 0.5)
LOW_COVERAGE = 0.9
# layer2 (stride 8) costs about 4x the default boxes of layer3: it must cover this much more to be chosen
_LAYER2_MARGIN = 0.01


@dataclasses.dataclass(frozen=True)
class AnchorChoice:
    """The default boxes a detection run trains with, and how well they cover its train boxes."""

    detect: DetectConfig
    coverage: float
    mean_iou: float
    num_boxes: int
    fitted: bool

    def describe(self) -> str:
        """One line for the run log."""
        d = self.detect
        how = "fitted to the train boxes" if self.fitted else "as configured"
        shape = (f"first level {d.first_level}, scales {d.anchor_scales}, ratios {d.anchor_ratios[0] if d.anchor_ratios else 'SSD default'}"
                 if d.anchor_scales is not None else f"first level {d.first_level}, SSD default boxes")
        return (f"anchor coverage {self.coverage:.3f} of {self.num_boxes} train boxes (best default box IoU >= 0.5; "
                f"mean best IoU {self.mean_iou:.3f}), default boxes {how}: {shape}")


def takes_default_boxes(model: nn.Module) -> bool:
    """Whether a detector has SSD default boxes that ``detect.anchor_scales`` / ``anchor_ratios`` set."""
    generator = getattr(model, "anchor_generator", None)
    return hasattr(generator, "scales") and hasattr(generator, "aspect_ratios") and \
        callable(getattr(model, "extract_features", None))


@torch.no_grad()
def feature_shapes(model: nn.Module, img_size: int) -> list[tuple[int, int]]:
    """``(h, w)`` of each feature level of a single-shot detector for an ``img_size`` square (one dummy forward)."""
    was_training = model.training
    model.eval()
    features = model.extract_features(torch.zeros(1, 3, img_size, img_size))
    model.train(was_training)
    return [tuple(int(v) for v in f.shape[-2:]) for f in features]


def resolve_anchors(model_name: str, num_classes: int, detect: DetectConfig, records: Any, img_size: int
                    ) -> AnchorChoice | None:
    """Resolve ``detect.first_level: auto`` and fit null ``anchor_scales``/``anchor_ratios`` (with ``anchor_fit``).

    Args:
        model_name: the detector (only those with SSD default boxes take fitted ones; others return None).
        num_classes: C, to build the throw-away detectors that report their feature maps.
        detect: the ``detect`` section; keys already set are kept (explicit keys win).
        records: the train split's records (``height``, ``width``, ``boxes``).
        img_size: side of the square training input.

    Returns:
        The chosen :class:`AnchorChoice` (its ``detect`` has a concrete ``first_level`` and, when fitted, the
        scales and ratios), or None for a detector without SSD default boxes.
    """
    boxes = input_boxes(records, img_size, detect.resize_mode)
    levels = list(FIRST_LEVELS)[::-1] if detect.first_level == "auto" else [detect.first_level]  # layer3 first
    fit = detect.anchor_fit and (detect.anchor_scales is None or detect.anchor_ratios is None)
    choices = []
    for level in levels:
        probe_cfg = dataclasses.replace(detect, first_level=level)
        probe = build_detector(model_name, num_classes, "none", probe_cfg)
        if not takes_default_boxes(probe):
            return None
        shapes = feature_shapes(probe, img_size)
        scales, ratios = list(probe.anchor_generator.scales), [list(r) for r in probe.anchor_generator.aspect_ratios]
        if fit and len(boxes):
            fitted = fit_ssd_anchors(boxes, shapes, img_size)
            scales = list(detect.anchor_scales) if detect.anchor_scales is not None else fitted.scales
            ratios = [list(r) for r in detect.anchor_ratios] if detect.anchor_ratios is not None else fitted.ratios
        coverage, mean_iou = anchor_coverage(boxes, ssd_default_boxes(scales, ratios, shapes, img_size))
        chosen = dataclasses.replace(detect, first_level=level, anchor_scales=scales if fit else detect.anchor_scales,
                                     anchor_ratios=ratios if fit else detect.anchor_ratios)
        choices.append(AnchorChoice(chosen, coverage, mean_iou, len(boxes), fit))
    best = choices[0]
    for other in choices[1:]:
        if other.coverage > best.coverage + _LAYER2_MARGIN:
            best = other
    return best
