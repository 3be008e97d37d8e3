"""Tests for ImageNet weights: the offline error and auto fallback, loading from the cache, safe downloads.

Nothing is downloaded: the cache is a temp TORCH_HOME, "cached" files are random state dicts saved there.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from pathlib import Path

import pytest
import torch
import torchvision

from detkit.models import (
    WeightsUnavailableError,
    create_classifier,
    hub_cache_path,
    timm_pretrained,
    torchvision_pretrained,
)
from detkit.models.pretrained import download_file, network_available


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _save_fake_imagenet_resnet18(cache_dir: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache_dir / "resnet18-f37072fd.pth")
    return state


def test_cache_path_follows_torch_home(offline_cache: Path) -> None:
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    assert hub_cache_path(url) == offline_cache / "resnet18-f37072fd.pth"
    assert torchvision_pretrained("resnet18").cache_path == offline_cache / "resnet18-f37072fd.pth"


def test_imagenet_offline_fails_at_once_naming_cache_path_and_alternative(offline_cache: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        create_classifier("resnet18", 3, weights="imagenet")
    message = str(info.value)
    assert str(offline_cache / "resnet18-f37072fd.pth") in message
    assert "--weights PATH" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not offline_cache.exists() or not any(offline_cache.iterdir())  # nothing half-written


def test_imagenet_offline_for_timm_names_its_caches() -> None:
    pattern = r"timm:resnet10t.*resnet10t_176_c3-f3215ab1\.pth.*--weights PATH"
    with pytest.raises(WeightsUnavailableError, match=pattern):
        create_classifier("timm:resnet10t", 3, weights="imagenet")


def test_auto_offline_warns_once_and_falls_back_to_random_init(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model = create_classifier("resnet18", 3, weights="auto")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "RANDOM INITIALISATION" in warnings[0].getMessage()
    assert "resnet18-f37072fd.pth" in warnings[0].getMessage()
    assert model.detkit_meta["pretrained"] is False
    assert model.detkit_meta["mean"] is None and model.detkit_meta["input_size"] is None


@pytest.mark.parametrize("mode", ["imagenet", "auto"])
def test_cached_weights_are_loaded_and_carry_their_preprocessing(
    mode: str, offline_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = _save_fake_imagenet_resnet18(offline_cache)
    with caplog.at_level(logging.WARNING):
        model = create_classifier("resnet18", 5, weights=mode)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    loaded = model.state_dict()
    for key, value in _backbone(saved).items():
        assert torch.equal(loaded[key], value), key
    assert model.fc.weight.shape == (5, 512)
    preprocess = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    meta = model.detkit_meta
    assert meta["pretrained"] is True and meta["weights"] == mode
    assert meta["mean"] == pytest.approx(tuple(preprocess.mean))
    assert meta["std"] == pytest.approx(tuple(preprocess.std))
    assert meta["input_size"] == preprocess.crop_size[0]


def test_cached_weights_keep_the_pretrained_head_when_class_count_matches(offline_cache: Path) -> None:
    saved = _save_fake_imagenet_resnet18(offline_cache)
    model = create_classifier("resnet18", 1000, weights="imagenet")
    assert torch.equal(model.fc.weight, saved["fc.weight"])
    assert torch.equal(model.fc.bias, saved["fc.bias"])


def test_timm_weights_found_in_torch_hub_cache_are_loaded(offline_cache: Path) -> None:
    import timm

    torch.manual_seed(5)
    source = timm.create_model("resnet10t", pretrained=False)
    published = timm_pretrained("resnet10t")
    published.cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(source.state_dict(), published.cache_path)

    model = create_classifier("timm:resnet10t", 4, weights="auto")
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert model.get_classifier().out_features == 4
    assert model.detkit_meta["pretrained"] is True
    assert model.detkit_meta["mean"] == pytest.approx(published.mean)
    assert model.detkit_meta["input_size"] == published.input_size


def test_corrupt_cached_file_is_an_error_naming_it(offline_cache: Path) -> None:
    offline_cache.mkdir(parents=True)
    (offline_cache / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="resnet18-f37072fd.pth"):
        create_classifier("resnet18", 3, weights="imagenet")


def test_offline_switch_skips_the_network_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network probed although DETKIT_OFFLINE is set")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert network_available("https://download.pytorch.org/models/x.pth") is False


def test_probe_reports_an_unreachable_host_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DETKIT_OFFLINE")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    assert network_available("https://download.pytorch.org/models/x.pth", timeout=0.5) is False
    assert network_available("file:///tmp/x.pth") is False  # not a network URL


def test_download_file_writes_atomically_and_checks_the_hash_in_the_name(tmp_path: Path) -> None:
    payload = b"weights" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    source = tmp_path / "src" / f"net-{digest[:8]}.pth"
    source.parent.mkdir()
    source.write_bytes(payload)
    dst = tmp_path / "cache" / source.name
    assert download_file(source.as_uri(), dst) == dst
    assert dst.read_bytes() == payload

    wrong = tmp_path / "src" / "net-deadbeef.pth"
    wrong.write_bytes(payload)
    bad_dst = tmp_path / "cache" / wrong.name
    with pytest.raises(ValueError, match="expected deadbeef"):
        download_file(wrong.as_uri(), bad_dst)
    assert not bad_dst.exists()
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # no .part files left behind


def test_download_of_a_missing_url_raises_oserror_and_leaves_nothing(tmp_path: Path) -> None:
    dst = tmp_path / "cache" / "net.pth"
    with pytest.raises(OSError):
        download_file((tmp_path / "missing.pth").as_uri(), dst)
    assert list(dst.parent.iterdir()) == []
