"""Tests for detkit.engine.checkpoint: atomic writes survive a crash mid-save, the format round-trips, RNG restores."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from detkit.io import atomic_write_text
from detkit.engine.checkpoint import (
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)


def _small_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(2, 3, 6, 6))  # materialise the lazy layer
    model.detkit_meta = {"name": "toy", "num_classes": 2, "pretrained": False}
    return model


def test_crash_during_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.arange(5)}, path)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(17)  # half-written file, then the "power cut"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2, "w": torch.zeros(5)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    old = torch.load(path, weights_only=True)
    assert old["epoch"] == 1 and torch.equal(old["w"], torch.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "the temporary file must be removed"


def test_crash_during_text_write_keeps_old_text(tmp_path):
    path = atomic_write_text(tmp_path / "metrics.json", "old\n")

    class Boom(Exception):
        pass

    from detkit.io import atomic_write

    def write(f):
        f.write(b"partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(path, write)
    assert path.read_text() == "old\n"
    assert len(list(tmp_path.iterdir())) == 1


def test_checkpoint_round_trip_holds_every_entry_and_no_module_prefix(tmp_path):
    model = _small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    scheduler.step()
    wrapped = nn.DataParallel(model)  # checkpoints must store the bare model's keys
    path = save_checkpoint(
        tmp_path / "best.pt", model=wrapped, epoch=3, optimizer=optimizer, scheduler=scheduler,
        config={"train": {"epochs": 5}}, classes=["cat", "dog"],
        normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        metrics={"val_acc": 0.75}, best_metric=0.75,
    )
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "detkit" and ckpt["version"] == 1
    assert set(ckpt["model"]) == set(model.state_dict())
    assert not any(k.startswith("module.") for k in ckpt["model"])
    # (DataParallel moves the model to the GPU when there is one; checkpoints hold CPU tensors)
    assert all(torch.equal(ckpt["model"][k], v.cpu()) for k, v in model.state_dict().items())
    assert ckpt["model_meta"]["name"] == "toy"
    assert ckpt["epoch"] == 3 and ckpt["classes"] == ["cat", "dog"] and ckpt["best_metric"] == 0.75
    assert ckpt["normalization"]["std"] == [0.25, 0.25, 0.25] and ckpt["metrics"] == {"val_acc": 0.75}
    fresh = torch.optim.SGD(_small_model().parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(ckpt["optimizer"])
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.01)  # the scheduled lr, restored
    assert ckpt["scheduler"]["last_epoch"] == 1


def test_extra_entries_cannot_replace_standard_ones(tmp_path):
    with pytest.raises(ValueError, match="extra: key 'epoch'"):
        save_checkpoint(tmp_path / "x.pt", model=_small_model(), epoch=1, extra={"epoch": 5})


def test_load_rejects_missing_foreign_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "weights.pth"
    torch.save(_small_model().state_dict(), foreign)
    with pytest.raises(ValueError, match="not a detkit checkpoint"):
        load_checkpoint(foreign)
    good = save_checkpoint(tmp_path / "good.pt", model=_small_model(), epoch=1)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(truncated)


def test_rng_state_restores_torch_numpy_and_python():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_load_model_state_tolerates_only_batchnorm_counters():
    # a frozen-BatchNorm model (torchvision's pretrained detectors) has no num_batches_tracked entries
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {k: v.clone() + 1 for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_model_state(fresh, state, "frozen.pt")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    del state["1.running_var"]
    with pytest.raises(ValueError, match=r"checkpoint frozen.pt does not fit the Sequential it names: 1 mismatched keys, "
                                         r"e.g. \['1.running_var'\]"):
        load_model_state(fresh, state, "frozen.pt")
