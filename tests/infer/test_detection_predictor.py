"""The detection Predictor's class filter, per-class thresholds and input-size checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detkit.infer import Predictor

CLASSES = ["person", "car", "dog"]


class _Listed(nn.Module):
    """Returns the same detections for every image (input pixels) and records the thresholds it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40], [1, 1, 9, 9], [2, 2, 8, 8.0]])
        self.scores = torch.tensor([0.9, 0.6, 0.45, 0.4, 0.3])
        self.labels = torch.tensor([1, 0, 0, 2, 1])

    def forward(self, images, targets=None):
        keep = self.scores > self.score_thresh
        return [{"boxes": self.boxes[keep], "scores": self.scores[keep], "labels": self.labels[keep]}
                for _ in range(images.shape[0])]


def _predict(**kwargs):
    predictor = Predictor(_Listed(), CLASSES, [10, 20, 30], mean=[0.5] * 3, std=[0.25] * 3, img_size=64,
                          resize_mode="resize", **kwargs)
    return predictor, predictor.predict([np.zeros((64, 64, 3), np.uint8)])[0]


def test_without_filters_the_model_gets_the_thresholds_as_they_are():
    predictor, det = _predict(conf=0.35, iou=0.6, max_det=7)
    model = predictor.model
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img) == (0.35, 0.6, 7)
    assert det["scores"].tolist() == pytest.approx([0.9, 0.6, 0.45, 0.4])
    assert det["category_ids"].tolist() == [20, 10, 10, 30]


def test_keep_classes_drops_the_others():
    _, det = _predict(conf=0.2, keep_classes=["person", "dog"])
    assert det["labels"].tolist() == [0, 0, 2]
    assert det["category_ids"].tolist() == [10, 10, 30]


def test_per_class_thresholds_replace_conf_for_their_class():
    predictor, det = _predict(conf=0.5, class_conf={"dog": 0.35, "person": 0.65})
    assert predictor.model.score_thresh == 0.35  # the model keeps what the lowest threshold lets through
    assert list(zip(det["labels"].tolist(), det["scores"].tolist())) == [(1, pytest.approx(0.9)),
                                                                          (2, pytest.approx(0.4))]


def test_max_det_counts_the_detections_that_survive_the_filters():
    _, det = _predict(conf=0.2, keep_classes=["person", "dog"], max_det=2)
    assert det["labels"].tolist() == [0, 0]  # the best two kept ones, not the best two before the filter


def test_unknown_class_names_and_bad_thresholds_are_errors():
    with pytest.raises(ValueError, match="unknown class 'cat'.*person"):
        _predict(keep_classes=["cat"])
    with pytest.raises(ValueError, match="class_conf"):
        _predict(class_conf={"dog": 1.5})
    with pytest.raises(ValueError, match="img_size"):
        Predictor(_Listed(), CLASSES, mean=[0.5] * 3, std=[0.25] * 3, img_size=0)
