"""Tests for the textbook's TinySSD behind the detector interface: levels, anchors, gradients, weights, overfitting.

The overfit test trains on three 64 px synthetic images with coloured rectangles and checks the predicted boxes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detkit.models import param_stages
from detkit.models.detector import create_detector
from detkit.models.tiny_ssd import TINY_SSD_RATIOS, TINY_SSD_SIZES, TinySSD
from detkit.ops import box_iou, multibox_prior


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions gain nothing from intra-op threads and lose a lot on a shared, busy CPU
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_levels_and_anchor_count_match_the_textbook() -> None:
    torch.manual_seed(0)
    model = create_detector("tiny_ssd", 1, weights="none").eval()
    images = torch.zeros(2, 3, 256, 256)
    with torch.no_grad():
        features = model.extract_features(images)
        logits, regression, anchors = model.head_outputs(images)
    shapes = [tuple(f.shape[1:]) for f in features]
    assert shapes == [(64, 32, 32), (128, 16, 16), (128, 8, 8), (128, 4, 4), (128, 1, 1)]
    assert anchors.shape == (5444, 4)  # the book's "output anchors: torch.Size([1, 5444, 4])"
    assert logits.shape == (2, 5444, 2) and regression.shape == (2, 5444, 4)
    # level 0 anchors are the book's multibox_prior values scaled to pixels; so are the last level's
    level0 = multibox_prior(torch.zeros(1, 64, 32, 32), TINY_SSD_SIZES[0], TINY_SSD_RATIOS[0])[0] * 256
    assert torch.allclose(anchors[: 32 * 32 * 4], level0)
    last = multibox_prior(torch.zeros(1, 128, 1, 1), TINY_SSD_SIZES[4], TINY_SSD_RATIOS[4])[0] * 256
    assert torch.allclose(anchors[-4:], last)
    assert model.anchors_for(features, (256, 256)) is anchors  # cached


def test_non_square_input_scales_anchors_by_width_and_height() -> None:
    model = create_detector("tiny_ssd", 2, weights="none").eval()
    with torch.no_grad():
        _, _, anchors = model.head_outputs(torch.zeros(1, 3, 64, 128))
    last = anchors[-4:]  # the global level: centred on the image
    centres = (last[:, :2] + last[:, 2:]) / 2
    assert torch.allclose(centres, torch.tensor([64.0, 32.0]).expand(4, 2))


def test_training_loss_is_finite_and_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = create_detector("tiny_ssd", 3, weights="none")
    # one box per level: its first anchor at an inner cell, so that every level has a positive
    with torch.no_grad():
        features = model.extract_features(torch.zeros(1, 3, 96, 96))  # 12, 6, 3, 1, 1 cells per side
    anchors = model.anchors_for(features, (96, 96))
    picked, start = [], 0
    for f in features:
        h, w = f.shape[-2:]
        picked.append(anchors[start + ((h // 2) * w + w // 2) * 4])
        start += h * w * 4
    boxes = torch.stack(picked)
    assert ((boxes >= 0) & (boxes <= 96)).all()
    model.train()
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 1, 2, 0, 1])}]
    losses = model(torch.randn(1, 3, 96, 96), targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_stages_meta_and_weights_modes(tmp_path: Path) -> None:
    model = create_detector("tiny_ssd", 4, weights="auto")
    assert list(param_stages(model)) == ["base", "extras", "head"]
    assert model.detkit_meta == {
        "name": "tiny_ssd", "num_classes": 4, "weights": "auto", "pretrained": False,
        "mean": None, "std": None, "input_size": 256,
    }  # fmt: skip
    assert [conv.out_channels for conv in model.head.cls_predictors] == [4 * 5] * 5
    with pytest.raises(ValueError, match="no published imagenet weights"):
        create_detector("tiny_ssd", 4, weights="imagenet")
    path = tmp_path / "tiny.pt"
    torch.save({"format": "detkit", "model": model.state_dict()}, path)
    reloaded = create_detector("tiny_ssd", 4, weights=str(path))
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert reloaded.detkit_meta["pretrained"] is True


def _rectangles(size: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Three grey images with red (class 0) and green (class 1) rectangles, normalised to [-0.5, 0.5]."""
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    specs = [
        ([[5, 6, 30, 35], [35, 30, 60, 55]], [0, 1]),
        ([[15, 10, 50, 32]], [1]),
        ([[10, 25, 35, 59]], [0]),
    ]
    images, targets = [], []
    for boxes, labels in specs:
        image = torch.full((3, size, size), 0.5)
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            image[:, y1:y2, x1:x2] = colours[label][:, None, None]
        images.append(image - 0.5)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return torch.stack(images), targets


def test_overfits_three_images_and_predicts_their_boxes() -> None:
    torch.manual_seed(0)
    images, targets = _rectangles(64)
    model: TinySSD = create_detector("tiny_ssd", 2, weights="none")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for _ in range(60):
        losses = model(images, targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.05 * history[0]

    model.eval()
    with torch.no_grad():
        detections = model(images)
    for det, target in zip(detections, targets):
        confident = det["scores"] > 0.5
        boxes, labels = det["boxes"][confident], det["labels"][confident]
        assert len(boxes) == len(target["boxes"])  # every object found, no confident false positive
        iou = box_iou(target["boxes"], boxes)  # [G, D]
        best = iou.argmax(dim=1)
        assert (iou.max(dim=1).values > 0.5).all()
        assert torch.equal(labels[best], target["labels"])
