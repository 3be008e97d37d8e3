"""Tests for detkit.data.box_stats: boxes as the network sees them, anchor coverage, and fitting default boxes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detkit.data.box_stats import anchor_coverage, fit_ssd_anchors, input_boxes, ssd_default_boxes
from detkit.ops import box_iou

RESNET_SSD_128 = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]  # resnet18_ssd levels at 128 px (layer3 first)
SSD_RATIOS = [[2.0] if i == 0 or i >= 4 else [2.0, 3.0] for i in range(6)]
SSD_SCALES = [0.1 + 0.8 * k / 5 for k in range(6)] + [1.0]


def _records(shapes, n=200, side=200, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        boxes = []
        for w, h in shapes:
            x, y = rng.uniform(0, side - w), rng.uniform(0, side - h)
            boxes.append([x, y, x + w, y + h])
        records.append(SimpleNamespace(height=side, width=side, boxes=np.array(boxes, np.float32)))
    return records


def test_input_boxes_follow_the_letterbox_of_each_image():
    wide = SimpleNamespace(height=50, width=100, boxes=np.array([[0, 0, 100, 50]], np.float32))
    out = input_boxes([wide], 64)
    torch.testing.assert_close(out, torch.tensor([[0.0, 16.0, 64.0, 48.0]]))  # long side to 64, centred
    stretched = input_boxes([wide], 64, resize_mode="resize")
    torch.testing.assert_close(stretched, torch.tensor([[0.0, 0.0, 64.0, 64.0]]))


def test_coverage_matches_the_best_iou_from_box_iou():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 90, (40, 2))
    boxes = torch.tensor(np.concatenate([xy, xy + rng.uniform(5, 40, (40, 2))], 1), dtype=torch.float32)
    anchors = ssd_default_boxes(SSD_SCALES, SSD_RATIOS, RESNET_SSD_128, 128)
    best = box_iou(boxes, anchors).amax(dim=1)
    coverage, mean_iou = anchor_coverage(boxes, anchors)
    assert coverage == pytest.approx(float((best >= 0.5).float().mean()))
    assert mean_iou == pytest.approx(float(best.mean()), abs=1e-5)


def test_fit_recovers_known_box_shapes_and_covers_them():
    records = _records([(40, 80), (80, 40)])  # every box 2:1 or 1:2, sqrt-area 56.6 px of 200 -> 0.283 of the side
    boxes = input_boxes(records, 128)
    fit = fit_ssd_anchors(boxes, RESNET_SSD_128, 128)
    assert fit.ratios[0] == [2.0]  # the elongation of every box
    assert min(abs(s - 0.2828) for s in fit.scales) < 0.01  # a level sits on the boxes' size
    assert fit.coverage >= 0.95 and fit.num_boxes == 400
    default, _ = anchor_coverage(boxes, ssd_default_boxes(SSD_SCALES, SSD_RATIOS, RESNET_SSD_128, 128))
    assert default < 0.5 < fit.coverage  # SSD's 0.1 .. 0.9 ladder misses these boxes
    again = fit_ssd_anchors(boxes, RESNET_SSD_128, 128)
    assert again == fit  # deterministic


def test_small_boxes_need_the_finer_level_and_square_boxes_get_square_default_boxes():
    boxes = input_boxes(_records([(30, 30), (60, 60)]), 128)  # 19 and 38 px squares at 128 px
    coarse = fit_ssd_anchors(boxes, RESNET_SSD_128, 128)  # stride 16: centres too far apart for 19 px boxes
    fine = fit_ssd_anchors(boxes, [(16, 16), *RESNET_SSD_128], 128)  # with layer2's stride-8 level
    assert coarse.coverage < 0.6 and fine.coverage >= 0.95
    assert all(r == [] for r in fine.ratios)  # squares only: fewer default boxes for the same coverage
    with pytest.raises(ValueError, match="no boxes"):
        fit_ssd_anchors(torch.zeros(0, 4), RESNET_SSD_128, 128)
