"""Tests for the torchvision detector adapter: head swap per architecture, label mapping, training, eval, weights.

Heavy detectors are built on the meta device; real passes use the MobileNetV3 models on small inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

from detkit.models import WeightsUnavailableError, param_stages
from detkit.models.detector import create_detector
from detkit.models.tv_detection import TorchvisionDetector

FRCNN_MOBILE = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
SSDLITE = "torchvision:ssdlite320_mobilenet_v3_large"
SSDLITE_FILE = "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"


@pytest.fixture(autouse=True)
def one_thread():
    # small convolutions gain nothing from intra-op threads and lose a lot on a shared, busy CPU
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[6.0, 8.0, 40.0, 44.0], [30.0, 20.0, 60.0, 58.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]


def _class_columns(det: TorchvisionDetector) -> list[int]:
    """Class columns of every swapped predictor, read from its output size."""
    model = det.model
    if isinstance(model, torchvision.models.detection.FasterRCNN):
        predictor = model.roi_heads.box_predictor
        assert predictor.bbox_pred.out_features == 4 * predictor.cls_score.out_features
        return [predictor.cls_score.out_features]
    if isinstance(model, torchvision.models.detection.RetinaNet):
        head = model.head.classification_head
        return [head.cls_logits.out_channels // head.num_anchors]
    per_cell = model.anchor_generator.num_anchors_per_location()
    return [det.get_submodule(f"model.{name}").out_channels // k for name, k in zip(det.head_modules, per_cell)]


@pytest.mark.parametrize(
    ("name", "columns", "stages"),
    [
        ("torchvision:fasterrcnn_resnet50_fpn", 5, ["backbone", "neck", "extras", "head"]),
        ("torchvision:retinanet_resnet50_fpn", 4, ["backbone", "neck", "extras", "head"]),
        ("torchvision:ssd300_vgg16", 5, ["backbone", "extras", "head"]),
        (SSDLITE, 5, ["backbone", "extras", "head"]),
        (FRCNN_MOBILE, 5, ["backbone", "neck", "extras", "head"]),
    ],
)
def test_every_torchvision_detector_gets_class_predictors_for_num_classes(
    name: str, columns: int, stages: list[str]
) -> None:
    with torch.device("meta"):
        det = create_detector(name, 4, weights="none")
    assert set(_class_columns(det)) == {columns}  # + background except RetinaNet (sigmoid classes)
    assert det.label_offset == columns - 4
    found = param_stages(det)
    assert list(found) == stages
    head_names = {n for n, _ in found["head"]}
    assert head_names and all(n.startswith(tuple(f"model.{m}." for m in det.head_modules)) for n in head_names)
    assert det.detkit_meta["name"] == name and det.detkit_meta["num_classes"] == 4
    assert det.model.transform.image_mean == [0.0, 0.0, 0.0] and det.model.transform.image_std == [1.0, 1.0, 1.0]


def test_fasterrcnn_mobilenet_trains_and_its_losses_decrease() -> None:
    torch.manual_seed(0)
    det = create_detector(FRCNN_MOBILE, 3, weights="none", min_size=64, max_size=96)
    optimizer = torch.optim.SGD(det.parameters(), lr=0.02, momentum=0.9)
    images = torch.rand(2, 3, 64, 64)
    det.train()
    totals = []
    for _ in range(4):
        losses = det(images, _targets())
        assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        parts = sum(v for k, v in losses.items() if k != "loss")
        assert losses["loss"].item() == pytest.approx(parts.item())
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        totals.append(losses["loss"].item())
    assert totals[-1] < totals[0]

    det.eval()
    det.score_thresh = 0.0
    assert det.model.roi_heads.score_thresh == 0.0  # forwarded to torchvision's post-processing
    with torch.no_grad():
        detections = det(images)
    assert len(detections) == 2
    for d in detections:
        assert set(d) == {"boxes", "scores", "labels"} and d["boxes"].shape[1:] == (4,)
        assert ((d["labels"] >= 0) & (d["labels"] < 3)).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 64).all()  # the input's pixels
        assert (d["scores"][:-1] >= d["scores"][1:]).all()


def test_labels_are_shifted_past_the_background_inside_and_back_outside() -> None:
    torch.manual_seed(0)
    det = create_detector(SSDLITE, 3, weights="none")
    det.model.transform.fixed_size = (96, 96)  # torchvision resizes to 320 by default; small is enough here
    images = torch.rand(2, 3, 80, 96)
    det.train()
    torch.manual_seed(1)
    ours = det(images, _targets())
    torch.manual_seed(1)
    shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in _targets()]
    theirs = det.model(list(images), shifted)
    for key, value in theirs.items():
        assert ours[key].item() == pytest.approx(value.item())

    det.eval()
    det.score_thresh, det.detections_per_img = 0.0, 20
    with torch.no_grad():
        ours = det(images)
        theirs = det.model(list(images))
    for mine, raw in zip(ours, theirs):
        assert len(mine["labels"]) == 20
        assert torch.equal(mine["labels"], raw["labels"] - 1) and torch.equal(mine["boxes"], raw["boxes"])
        assert ((mine["labels"] >= 0) & (mine["labels"] < 3)).all()
        assert (mine["boxes"][:, 0::2] <= 96).all() and (mine["boxes"][:, 1::2] <= 80).all()


def test_coco_weights_offline_raise_naming_the_cache_file_and_auto_falls_back(
    offline_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(WeightsUnavailableError, match=SSDLITE_FILE) as err:
        create_detector(SSDLITE, 2, weights="coco")
    assert str(offline_cache) in str(err.value) and "--weights PATH" in str(err.value)
    with caplog.at_level(logging.WARNING):
        det = create_detector(SSDLITE, 2, weights="auto")
    assert "RANDOM INITIALISATION" in caplog.text
    assert det.detkit_meta["pretrained"] is False and det.detkit_meta["mean"] is None
    assert det.detkit_meta["input_size"] == 320


def test_cached_coco_weights_and_weight_files_are_loaded(offline_cache: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    coco = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None)
    offline_cache.mkdir(parents=True)
    torch.save(coco.state_dict(), offline_cache / SSDLITE_FILE)

    det = create_detector(SSDLITE, 2, weights="coco")
    assert torch.equal(det.model.backbone.features[0][0][0].weight, coco.backbone.features[0][0][0].weight)
    regression = "head.regression_head.module_list.0.1.weight"  # class-agnostic: kept from COCO
    assert torch.equal(det.model.state_dict()[regression], coco.state_dict()[regression])
    assert _class_columns(det) == [3] * 6
    assert det.detkit_meta["pretrained"] is True and det.detkit_meta["mean"] == (0.5, 0.5, 0.5)

    # torchvision's own file given as a path, and a detkit checkpoint of the adapter
    from_file = create_detector(SSDLITE, 2, weights=str(offline_cache / SSDLITE_FILE))
    assert torch.equal(from_file.model.state_dict()[regression], coco.state_dict()[regression])
    checkpoint = tmp_path / "best.pt"
    torch.save({"format": "detkit", "model": det.state_dict()}, checkpoint)
    reloaded = create_detector(SSDLITE, 2, weights=str(checkpoint))
    for key, value in det.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
