"""Tests for ResNet-SSD and the detector factory: levels and anchors, losses, gradients, eval outputs, weights, stages.

Real forward passes use resnet18_ssd on 64-128 px inputs; resnet34/50 are built on the meta device only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

from detkit.engine.freeze import FreezeConfig, Freezer
from detkit.models import WeightsUnavailableError, param_stages
from detkit.models.detector import create_detector, list_detectors
from detkit.models.ssd import ResNetSSD, _extra_block, default_aspect_ratios

ALL_NAMES = [
    "resnet18_ssd", "resnet34_ssd", "resnet50_ssd", "tiny_ssd",
    "torchvision:fasterrcnn_resnet50_fpn", "torchvision:retinanet_resnet50_fpn", "torchvision:ssd300_vgg16",
    "torchvision:ssdlite320_mobilenet_v3_large", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions gain nothing from intra-op threads and lose a lot on a shared, busy CPU
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def ssd18() -> ResNetSSD:
    torch.manual_seed(0)
    return create_detector("resnet18_ssd", 3, weights="none")


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[8.0, 10.0, 60.0, 50.0], [70.0, 64.0, 120.0, 126.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]


def test_registry_holds_every_documented_name() -> None:
    assert list_detectors() == sorted(ALL_NAMES)


def test_unknown_name_error_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="Did you mean 'resnet18_ssd'") as err:
        create_detector("resnet18-ssd", 3)
    for name in ALL_NAMES:
        assert name in str(err.value)


def test_bad_num_classes_and_weights_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_detector("resnet18_ssd", 0, weights="none")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_detector("resnet18_ssd", 2, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="coco"):
        create_detector("resnet18_ssd", 2, weights="coco")


def test_levels_and_anchor_counts_on_a_non_square_input(ssd18: ResNetSSD) -> None:
    ssd18.eval()
    images = torch.randn(2, 3, 256, 320)
    with torch.no_grad():
        features = ssd18.extract_features(images)
        logits, regression, anchors = ssd18.head_outputs(images)
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    assert [f.shape[1] for f in features] == [256, 512, 512, 256, 256, 256]
    per_cell = ssd18.anchor_generator.num_anchors_per_location()
    assert per_cell == [4, 6, 6, 6, 4, 4]
    expected = sum(f.shape[-2] * f.shape[-1] * k for f, k in zip(features, per_cell))
    assert expected == 320 * 4 + 80 * 6 + 20 * 6 + 6 * 6 + 2 * 4 + 1 * 4
    assert logits.shape == (2, expected, 4)  # 3 classes + background
    assert regression.shape == (2, expected, 4)
    assert anchors.shape == (expected, 4)
    # centres of the first level lie on its 16-pixel grid, and the anchors are cached per input size
    first = anchors[: 16 * 20 * 4]
    centres = (first[:, :2] + first[:, 2:]) / 2
    assert torch.allclose(centres[0], torch.tensor([8.0, 8.0]))
    assert torch.allclose(centres[-1], torch.tensor([312.0, 248.0]))
    assert ssd18.anchors_for(features, (256, 320)) is anchors


def test_layer2_first_level_adds_a_stride_8_level_that_trains() -> None:
    torch.manual_seed(0)
    model = create_detector("resnet18_ssd", 3, weights="none", first_level="layer2", box_loss="giou")
    model.eval()
    images = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        features = model.extract_features(images)
        logits, regression, anchors = model.head_outputs(images)
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2), (1, 1), (1, 1)]
    assert [f.shape[1] for f in features] == [128, 256, 512, 512, 256, 256, 256]
    per_cell = model.anchor_generator.num_anchors_per_location()
    assert per_cell == [4, 6, 6, 6, 6, 4, 4]  # default_aspect_ratios(7)
    assert logits.shape[1] == regression.shape[1] == anchors.shape[0] == sum(
        f.shape[-2] * f.shape[-1] * k for f, k in zip(features, per_cell)
    )
    centres = (anchors[:4, :2] + anchors[:4, 2:]) / 2  # the first cell of the stride-8 level
    assert torch.allclose(centres, torch.tensor([4.0, 4.0]).expand(4, 2))
    model.train()
    losses = model(torch.randn(2, 3, 128, 128), [
        {"boxes": torch.tensor([[4.0, 6.0, 20.0, 18.0]]), "labels": torch.tensor([1])},  # 16 px: the stride-8 level
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ])
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and losses["loss_box"] > 0
    assert model.layer2[-1].conv2.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.head.parameters())


def test_first_level_must_be_layer2_or_layer3() -> None:
    with pytest.raises(ValueError, match="first_level must be one of"):
        create_detector("resnet18_ssd", 3, weights="none", first_level="layer1")
    with pytest.raises(ValueError, match="aspect_ratios must have one entry per feature level"):
        create_detector("resnet18_ssd", 3, weights="none", first_level="layer2", aspect_ratios=[[2.0]] * 6)


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_any_multiple_of_32_works(ssd18: ResNetSSD, size: tuple[int, int]) -> None:
    ssd18.eval()
    with torch.no_grad():
        logits, regression, anchors = ssd18.head_outputs(torch.randn(1, 3, *size))
    assert logits.shape[1] == regression.shape[1] == anchors.shape[0]
    assert torch.isfinite(logits).all() and torch.isfinite(regression).all()


def _one_box_per_level(model: ResNetSSD, size: int) -> torch.Tensor:
    """``Tensor[L, 4]``: for each level, its first default box at an inner cell, so every level has a positive."""
    with torch.no_grad():
        features = model.extract_features(torch.zeros(1, 3, size, size))
    anchors = model.anchors_for(features, (size, size))
    boxes, start = [], 0
    for f, k in zip(features, model.anchor_generator.num_anchors_per_location()):
        h, w = f.shape[-2:]
        cell = max(h // 2 - 1, 0) * w + max(w // 2 - 1, 0)
        boxes.append(anchors[start + cell * k])
        start += h * w * k
    return torch.stack(boxes)


@pytest.mark.parametrize("options", [{}, {"cls_loss": "focal", "box_loss": "giou"}])
def test_training_losses_are_finite_and_every_trainable_parameter_gets_a_gradient(options: dict) -> None:
    torch.manual_seed(0)
    model = create_detector("resnet18_ssd", 3, weights="none", **options)
    boxes = _one_box_per_level(model, 128)
    assert ((boxes >= 0) & (boxes <= 128)).all()
    targets = [{"boxes": boxes, "labels": torch.arange(len(boxes)) % 3}, _targets()[1]]
    model.train()
    losses = model(torch.randn(2, 3, 128, 128), targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss"].item() == pytest.approx((losses["loss_cls"] + losses["loss_box"]).item())
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []


def test_batch_of_one_trains_although_the_last_levels_are_one_cell() -> None:
    images = torch.randn(1, 3, 64, 64)  # levels 4, 2, 1, 1, 1, 1
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    losses = create_detector("resnet18_ssd", 2, weights="none").train()(images, targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    # BatchNorm in the extra blocks (the option) cannot normalise one value per channel
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        create_detector("resnet18_ssd", 2, weights="none", extra_norm="batch").train()(images, targets)


def test_eval_returns_detections_in_input_pixels_with_contiguous_labels(ssd18: ResNetSSD) -> None:
    ssd18.eval()
    ssd18.score_thresh, ssd18.detections_per_img = 0.0, 7
    try:
        with torch.no_grad():
            detections = ssd18(torch.randn(2, 3, 96, 128))
    finally:
        ssd18.score_thresh, ssd18.detections_per_img = 0.01, 200
    assert len(detections) == 2
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape == (7, 4) and det["scores"].shape == (7,) and det["labels"].dtype == torch.int64
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert (det["boxes"][:, 0::2] >= 0).all() and (det["boxes"][:, 0::2] <= 128).all()
        assert (det["boxes"][:, 1::2] >= 0).all() and (det["boxes"][:, 1::2] <= 96).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_focal_head_has_no_background_column_and_predicts_every_class() -> None:
    torch.manual_seed(0)
    model = create_detector("resnet18_ssd", 2, weights="none", cls_loss="focal").eval()
    model.score_thresh = 0.0
    with torch.no_grad():
        logits, _, _ = model.head_outputs(torch.randn(1, 3, 64, 64))
        det = model(torch.randn(1, 3, 64, 64))[0]
    assert logits.shape[-1] == 2
    # RetinaNet's prior: every class starts at probability 0.01 before the weights' contribution
    for conv in model.head.cls_predictors:
        assert torch.sigmoid(conv.bias).allclose(torch.tensor(0.01))
    assert torch.sigmoid(logits).median().item() < 0.05
    assert set(det["labels"].tolist()) == {0, 1}


def test_channels_last_gives_the_same_outputs(ssd18: ResNetSSD) -> None:
    ssd18.eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits, regression, _ = ssd18.head_outputs(images)
        ssd18.to(memory_format=torch.channels_last)
        try:
            logits_cl, regression_cl, _ = ssd18.head_outputs(images.contiguous(memory_format=torch.channels_last))
        finally:
            ssd18.to(memory_format=torch.contiguous_format)
    assert torch.allclose(logits, logits_cl, atol=1e-4) and torch.allclose(regression, regression_cl, atol=1e-4)


def test_inputs_are_validated_with_clear_errors(ssd18: ResNetSSD) -> None:
    ssd18.train()
    images = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="targets are required"):
        ssd18(images)
    with pytest.raises(ValueError, match=r"images must be a floating Tensor\[B, 3, H, W\]"):
        ssd18(torch.randn(3, 64, 64), _targets())
    bad_label = _targets()
    bad_label[0]["labels"] = torch.tensor([0, 3])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must be in \[0, 3\)"):
        ssd18(images, bad_label)
    flat_box = _targets()
    flat_box[0]["boxes"] = torch.tensor([[8.0, 10.0, 8.0, 50.0], [1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match=r"box 0 is \[8.0, 10.0, 8.0, 50.0\]"):
        ssd18(images, flat_box)
    with pytest.raises(ValueError, match="list of 2 dicts"):
        ssd18(images, _targets()[:1])


@pytest.mark.parametrize(("name", "c3", "c4"), [("resnet34_ssd", 256, 512), ("resnet50_ssd", 1024, 2048)])
def test_deeper_resnets_honour_num_classes(name: str, c3: int, c4: int) -> None:
    with torch.device("meta"):
        model = create_detector(name, 5, weights="none")
    head = model.head
    assert [conv.in_channels for conv in head.cls_predictors] == [c3, c4, 512, 256, 256, 256]
    assert [conv.out_channels for conv in head.cls_predictors] == [k * 6 for k in (4, 6, 6, 6, 4, 4)]
    assert [conv.out_channels for conv in head.box_predictors] == [k * 4 for k in (4, 6, 6, 6, 4, 4)]
    assert model.detkit_meta["name"] == name and model.detkit_meta["num_classes"] == 5


def test_stages_feed_param_stages_and_the_freezer_never_freezes_the_head(ssd18: ResNetSSD) -> None:
    stages = param_stages(ssd18)
    assert list(stages) == ["stem", "layer1", "layer2", "layer3", "layer4", "extras", "head"]
    assert {n for n, _ in stages["head"]} == {n for n, _ in ssd18.head.named_parameters(prefix="head")}
    freezer = Freezer(ssd18, FreezeConfig(backbone_epochs=1))
    ssd18.train()
    try:
        # the extra blocks are new (random init) like the head: issue 12, freezing the backbone leaves them trainable
        assert freezer.apply(0) == ["stem", "layer1", "layer2", "layer3", "layer4"]
        assert all(p.requires_grad for p in ssd18.head.parameters())
        assert all(p.requires_grad for p in ssd18.extras.parameters())
        assert not any(p.requires_grad for p in ssd18.layer4.parameters())
        assert not ssd18.layer1[0].bn1.training  # frozen stages' BatchNorm in eval mode
    finally:
        freezer.apply(1)


def test_default_aspect_ratios_follow_ssd() -> None:
    assert default_aspect_ratios(6) == [[2.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0], [2.0]]
    with pytest.raises(ValueError, match="aspect_ratios must have one entry per feature level"):
        create_detector("resnet18_ssd", 2, weights="none", aspect_ratios=[[2.0]] * 5)


def test_imagenet_weights_offline_raise_naming_the_cache_file(offline_cache: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="resnet18-f37072fd.pth") as err:
        create_detector("resnet18_ssd", 2, weights="imagenet")
    assert str(offline_cache) in str(err.value) and "--weights PATH" in str(err.value)


def test_auto_weights_offline_fall_back_to_random_init(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model = create_detector("resnet18_ssd", 2, weights="auto")
    assert "RANDOM INITIALISATION" in caplog.text
    assert model.detkit_meta == {
        "name": "resnet18_ssd", "num_classes": 2, "weights": "auto", "pretrained": False,
        "mean": None, "std": None, "input_size": 320,
    }  # fmt: skip


def test_cached_imagenet_backbone_is_loaded(offline_cache: Path) -> None:
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18()
    offline_cache.mkdir(parents=True)
    torch.save(resnet.state_dict(), offline_cache / "resnet18-f37072fd.pth")
    model = create_detector("resnet18_ssd", 2, weights="imagenet")
    assert torch.equal(model.stem.conv1.weight, resnet.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)
    assert model.detkit_meta["pretrained"] is True
    assert model.detkit_meta["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_backbone_weights_file_is_loaded_into_the_resnet(tmp_path: Path) -> None:
    torch.manual_seed(2)
    resnet = torchvision.models.resnet18()
    path = tmp_path / "backbone.pth"
    torch.save(resnet.state_dict(), path)
    model = create_detector("resnet18_ssd", 2, weights=str(path))
    assert torch.equal(model.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert model.detkit_meta["pretrained"] is True and model.detkit_meta["weights"] == str(path)


def test_detection_checkpoint_reloads_whole_and_skips_a_head_of_another_class_count(
    ssd18: ResNetSSD, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "best.pt"
    normalization = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    torch.save({"format": "detkit", "version": 1, "model": ssd18.state_dict(), "normalization": normalization}, path)

    same = create_detector("resnet18_ssd", 3, weights=str(path))
    for key, value in ssd18.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    assert same.detkit_meta["mean"] == (0.1, 0.2, 0.3) and same.detkit_meta["pretrained"] is True

    with caplog.at_level(logging.WARNING):
        other = create_detector("resnet18_ssd", 5, weights=str(path))
    assert "not loading the head" in caplog.text
    assert torch.equal(other.extras[0][0].weight, ssd18.extras[0][0].weight)
    assert other.head.cls_predictors[0].out_channels == 4 * 6


def test_bfloat16_autocast_gives_float32_losses_and_detections() -> None:
    torch.manual_seed(0)
    model = create_detector("resnet18_ssd", 2, weights="none").train()
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = model(images)
    assert detections[0]["boxes"].dtype == torch.float32



@pytest.mark.parametrize("side", [1, 2, 3])
def test_extra_blocks_strided_conv_equals_the_padded_3x3_conv_in_outputs_and_gradients(side: int) -> None:
    """The 1 x 1 short path of the extra blocks' stride-2 conv is the same maths as nn.Conv2d (float64)."""
    torch.manual_seed(side)
    block = _extra_block(8, 16)
    strided = block[3]
    plain = torch.nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, bias=False).double()
    strided.double().load_state_dict(plain.state_dict())
    x = torch.randn(3, 8, side, side, dtype=torch.float64, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    out, out_plain = strided(x), plain(x_plain)
    grad = torch.randn_like(out_plain)
    (out * grad).sum().backward()
    (out_plain * grad).sum().backward()
    assert out.shape == out_plain.shape and torch.allclose(out, out_plain)
    assert torch.allclose(strided.weight.grad, plain.weight.grad) and torch.allclose(x.grad, x_plain.grad)


def test_extra_blocks_on_one_cell_levels_get_finite_gradients_under_cpu_bfloat16_autocast() -> None:
    """torch's CPU bf16 weight gradient of a padded stride-2 3x3 conv on a 1 x 1 input leaves the taps that only see
    padding uninitialised (NaN in training); the extra blocks must not go through it. NaN-filled bf16 buffers of
    the gradient's size are freed just before the backward, so that the bad kernel would pick up their memory."""
    torch.manual_seed(0)
    strided = _extra_block(16, 64)[3]  # the block's 3x3 stride-2 conv, 32 -> 64 channels
    for _ in range(4):
        strided.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = strided(torch.randn(4, 32, 1, 1))
        junk = [torch.full(tuple(strided.weight.shape), float("nan"), dtype=torch.bfloat16) for _ in range(8)]
        del junk
        out.float().sum().backward()
        assert torch.isfinite(strided.weight.grad).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_trains_under_fp16_autocast() -> None:
    torch.manual_seed(0)
    model = create_detector("resnet18_ssd", 2, weights="none").eval()
    images = torch.randn(2, 3, 128, 160)
    # TF32 convolutions (the cuDNN default on Ampere and later) differ from float32 by ~1e-3
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cpu_logits, cpu_regression, cpu_anchors = model.head_outputs(images)
        model.cuda()
        logits, regression, anchors = model.head_outputs(images.cuda())
        detections = model(images.cuda())
    assert anchors.is_cuda and torch.allclose(anchors.cpu(), cpu_anchors)
    assert torch.allclose(logits.cpu(), cpu_logits, atol=1e-3)
    assert torch.allclose(regression.cpu(), cpu_regression, atol=1e-3)
    assert all(d["boxes"].is_cuda and d["labels"].dtype == torch.int64 for d in detections)
    model.train()
    box, label = torch.tensor([[4.0, 4.0, 60.0, 50.0]], device="cuda"), torch.tensor([1], device="cuda")
    targets = [{"boxes": box, "labels": label}] * 2
    with torch.autocast("cuda", dtype=torch.float16):
        losses = model(images.cuda(), targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and model.head.cls_predictors[0].weight.grad.is_cuda
