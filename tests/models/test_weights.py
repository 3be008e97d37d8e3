"""Tests for loading weight files: formats, nesting, prefixes, detkit checkpoints, head skipping, strictness.

Backbone tensors are compared bit for bit; files are random state dicts written to a temp dir.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from detkit.models import create_classifier, load_weights_file, read_state_dict


def _resnet18(num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_classifier("resnet18", num_classes, weights="none")


def _small(num_classes: int, seed: int) -> nn.Module:
    # timm's 0.5M-parameter test ResNet: same key layout idea as torchvision's, 20x cheaper to build.
    torch.manual_seed(seed)
    return create_classifier("timm:test_resnet", num_classes, weights="none")


def _assert_backbone_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key


def test_plain_pth_round_trip_loads_everything(tmp_path: Path) -> None:
    source = _resnet18(5, seed=1)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    target = _resnet18(5, seed=2)
    report = load_weights_file(target, tmp_path / "w.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert report["head_loaded"] is True
    assert report["missing"] == [] and report["unexpected"] == [] and report["skipped"] == []
    assert len(report["loaded"]) == len(source.state_dict())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
        lambda sd: {"model_state_dict": sd, "epoch": 3},
        lambda sd: {"model": {f"module.model.{k}": v for k, v in sd.items()}, "optimizer": {}},
    ],
    ids=["module-prefix", "state_dict-model-prefix", "model_state_dict", "model-nested-double-prefix"],
)
def test_nested_and_prefixed_layouts_are_unwrapped(tmp_path: Path, wrap) -> None:
    source = _small(3, seed=1)
    torch.save(wrap(source.state_dict()), tmp_path / "w.pt")
    target = _small(3, seed=2)
    report = load_weights_file(target, tmp_path / "w.pt")
    _assert_backbone_equal(target, source.state_dict())
    assert torch.equal(target.fc.weight, source.fc.weight)
    assert report["head_loaded"] is True


def test_safetensors_file_is_loaded(tmp_path: Path) -> None:
    source = _small(3, seed=1)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    target = _small(3, seed=2)
    load_weights_file(target, tmp_path / "w.safetensors")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_head_with_other_class_count_is_skipped_with_a_warning_and_backbone_survives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _resnet18(10, seed=1)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    target = _resnet18(5, seed=2)
    fresh_head = target.fc.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        report = load_weights_file(target, tmp_path / "w.pth")
    _assert_backbone_equal(target, source.state_dict())
    assert target.fc.weight.shape == (5, 512)
    assert torch.equal(target.fc.weight, fresh_head)
    assert report["head_loaded"] is False
    assert sorted(k for k, _ in report["skipped"]) == ["fc.bias", "fc.weight"]
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "10 classes" in message and "has 5" in message


def test_strict_head_refuses_a_different_class_count(tmp_path: Path) -> None:
    torch.save(_small(10, seed=1).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="10 classes"):
        load_weights_file(_small(5, seed=2), tmp_path / "w.pth", strict_head=True)


def test_unrelated_file_is_a_clear_error_not_a_silent_no_op(tmp_path: Path) -> None:
    torch.save(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)).state_dict(), tmp_path / "mlp.pth")
    target = _small(2, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"mlp\.pth does not fit ResNet.*missing from the file"):
        load_weights_file(target, tmp_path / "mlp.pth")
    for key, value in before.items():
        assert torch.equal(target.state_dict()[key], value)  # nothing was half-loaded


def test_other_architecture_is_refused_but_can_be_loaded_leniently(tmp_path: Path) -> None:
    source = _small(3, seed=1).state_dict()
    other = {k: v for k, v in source.items() if not k.startswith("layer4.")}  # a shallower network...
    other["layer5.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)  # ...with a block the model lacks
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"missing from the file.*file keys the model lacks.*layer5"):
        load_weights_file(_small(3, seed=2), tmp_path / "other.pth")
    target = _small(3, seed=2)
    report = load_weights_file(target, tmp_path / "other.pth", strict_backbone=False)
    assert report["unexpected"] == ["layer5.0.conv1.weight"]
    assert all(k.startswith("layer4.") for k in report["missing"]) and report["missing"]
    assert torch.equal(target.layer1[0].conv1.weight, source["layer1.0.conv1.weight"])  # what fits is loaded


def test_backbone_shape_mismatch_is_an_error(tmp_path: Path) -> None:
    state = _small(3, seed=1).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight: \(1, 1, 1, 1\) in file vs"):
        load_weights_file(_small(3, seed=2), tmp_path / "w.pth")


def test_detkit_checkpoint_gives_weights_and_its_normalisation(tmp_path: Path) -> None:
    source = _resnet18(4, seed=1)
    checkpoint = {
        "format": "detkit",
        "version": 1,
        "model": source.state_dict(),
        "model_meta": {"name": "resnet18", "num_classes": 4, "input_size": 96},
        "normalization": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]},
        "classes": ["a", "b", "c", "d"],
        "rng": {"numpy": np.random.get_state()},  # needs full unpickling: exercises the fallback
    }
    torch.save(checkpoint, tmp_path / "best.pt")
    state, info = read_state_dict(tmp_path / "best.pt")
    assert set(state) == set(source.state_dict())
    assert info["classes"] == ["a", "b", "c", "d"]

    model = create_classifier("resnet18", 4, weights=str(tmp_path / "best.pt"))
    _assert_backbone_equal(model, source.state_dict())
    assert torch.equal(model.fc.weight, source.fc.weight)
    assert model.detkit_meta["pretrained"] is True
    assert model.detkit_meta["mean"] == pytest.approx((0.1, 0.2, 0.3))
    assert model.detkit_meta["std"] == pytest.approx((0.4, 0.5, 0.6))
    assert model.detkit_meta["input_size"] == 96


def test_file_named_like_the_torchvision_download_carries_imagenet_preprocessing(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    imagenet_like = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(imagenet_like, path)
    model = create_classifier("resnet18", 6, weights=str(path))
    _assert_backbone_equal(model, imagenet_like)
    assert model.fc.out_features == 6
    assert model.detkit_meta["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert model.detkit_meta["input_size"] == 224


def test_file_with_unknown_origin_leaves_normalisation_to_the_data(tmp_path: Path) -> None:
    torch.save(_small(3, seed=1).state_dict(), tmp_path / "mine.pth")
    model = create_classifier("timm:test_resnet", 3, weights=str(tmp_path / "mine.pth"))
    assert model.detkit_meta["pretrained"] is True
    assert model.detkit_meta["mean"] is None and model.detkit_meta["std"] is None


def test_timm_layout_file_loads_into_timm_model_with_new_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_classifier("timm:test_resnet", 1000, weights="none")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "timm.pth")
    model = create_classifier("timm:test_resnet", 3, weights=str(tmp_path / "timm.pth"))
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert model.get_classifier().out_features == 3


def test_missing_and_damaged_files_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights_file(_small(2, seed=0), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="junk.safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds no tensors.*epoch"):
        read_state_dict(tmp_path / "empty.pth")


def test_a_renamed_copy_of_a_published_release_gets_its_preprocessing_as_the_cached_file_does(tmp_path: Path) -> None:
    import hashlib

    import torchvision

    from detkit.models import torchvision_pretrained

    torch.manual_seed(0)
    path = tmp_path / "my_imagenet_backbone.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    release = torchvision_pretrained("resnet18")
    # pretend this file is the release: its URL's file name carries the file's own SHA-256 prefix
    fake = type(release)(**{**vars(release), "url": f"https://example.invalid/resnet18-{digest[:8]}.pth"})
    import detkit.models.classifier as classifier

    original = classifier.torchvision_pretrained
    try:
        classifier.torchvision_pretrained = lambda name, tag="DEFAULT": fake
        model = create_classifier("resnet18", 6, weights=str(path))
    finally:
        classifier.torchvision_pretrained = original
    assert model.detkit_meta["mean"] == pytest.approx(release.mean)
    assert model.detkit_meta["input_size"] == release.input_size
