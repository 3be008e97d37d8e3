"""Tests for detkit.engine.lr_finder: the sweep, its suggestions, its files, and the bit-for-bit restore."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from detkit.config import load_config
from detkit.engine.experiment import build_experiment
from detkit.engine.lr_finder import (PEAK_FACTOR, find_lr, minimum_lr, save_lr_find, steepest_lr, suggest_lr,
                                     valley_lr)
from image_folders import make_image_folder


class _Regression:
    """A task-like object: least squares y = x @ w_true on fixed batches (what find_lr needs of a Task)."""

    def move_batch(self, batch, device, channels_last=False):
        x, y = batch
        return x.to(device), y.to(device), []

    def train_step(self, model, images, targets):
        loss = nn.functional.mse_loss(model(images), targets)
        return loss, {}


def _batches(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(32, 4, generator=g)
        out.append((x, x @ w))
    return out


def test_valley_and_steepest_find_the_descent_of_a_known_curve():
    lrs = list(np.logspace(-6, 0, 61))  # 10 points per decade
    losses = [2.0] * 15 + list(np.linspace(2.0, 0.2, 31))[1:] + list(np.linspace(0.2, 5.0, 16))  # falls 1e-4.5 .. 1e-1.5
    valley = valley_lr(lrs, losses)
    assert 10 ** -3.6 < valley < 10 ** -2.4  # halfway down the fall
    slope_at = steepest_lr(lrs, losses)
    assert 10 ** -4.6 <= slope_at <= 10 ** -1.5
    assert valley_lr(lrs[:4], losses[:4]) is None and steepest_lr(lrs[:3], losses[:3]) is None


def test_minimum_is_not_moved_by_lag_and_the_suggestion_is_three_times_it_within_the_caps():
    rng = np.random.default_rng(0)
    lrs = list(np.logspace(-7, 1, 101))  # 12.5 points per decade, fastai's sweep
    x = np.log10(lrs)
    losses = list(2.0 - 0.8 * np.exp(-((x + 3.0) ** 2) / 0.8) + rng.normal(0, 0.02, x.size))  # minimum at 1e-3
    assert 10 ** -3.25 < minimum_lr(lrs, losses) < 10 ** -2.75
    ema, average = [], 0.0
    for i, value in enumerate(losses):
        average = 0.98 * average + 0.02 * value
        ema.append(average / (1 - 0.98 ** (i + 1)))
    assert lrs[int(np.argmin(ema))] > 10 ** -2.5  # the exponential average's minimum lags towards higher lrs
    assert suggest_lr(lrs, losses) == pytest.approx(PEAK_FACTOR * minimum_lr(lrs, losses))
    # a positive loss past 4x its minimum soon after it: the suggestion stays a factor 3 below that lr (the centred
    # average is 5 steps wide here: at step 56 it holds two of the 0.9s, (3 x 0.1 + 2 x 0.9) / 5 = 0.42 > 0.4)
    blowing_up = [1.0] * 50 + [0.1] * 7 + [0.9] * 44  # the minimum is at steps 52-54, around lr 1e-3
    assert suggest_lr(lrs, blowing_up) == pytest.approx(lrs[56] / PEAK_FACTOR)
    assert minimum_lr(lrs[:4], losses[:4]) is None and suggest_lr(lrs[:4], losses[:4]) is None
    assert minimum_lr(lrs[:20], losses[:19] + [float("nan")]) == minimum_lr(lrs[:19], losses[:19])  # NaN ends it


def test_sweep_suggests_an_lr_where_the_loss_falls_and_writes_its_files(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    result = find_lr(model, _Regression(), optimizer, _batches(), base_lr=0.01, start_lr=1e-5, end_lr=10.0,
                     num_steps=60)
    assert result.stopped == "loss diverged" and len(result.lrs) < 60  # least squares blows up past lr ~ 1
    # least squares: Hessian 2I, stable below lr 1; the loss falls until it blows up, so the edge decides (3x
    # the minimum would be past the divergence)
    assert result.minimum is not None and 0.1 < result.suggestion < 1.0 < PEAK_FACTOR * result.minimum
    assert result.lrs == sorted(result.lrs) and result.lrs[0] == pytest.approx(1e-5)
    json_path, png_path = save_lr_find(result, tmp_path / "lr_find")
    saved = json.loads(json_path.read_text())
    assert saved["suggestion"] == result.suggestion and len(saved["losses"]) == len(result.lrs)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_groups_keep_their_ratio_to_the_base_lr_during_the_sweep():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01},
                                 {"params": model[1].parameters(), "lr": 0.1}], lr=0.01)
    seen = []
    original = optimizer.step

    def spy(*args, **kwargs):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return original(*args, **kwargs)

    optimizer.step = spy
    find_lr(model, _Regression(), optimizer, _batches(), base_lr=0.01, start_lr=1e-6, end_lr=1e-2, num_steps=12)
    assert all(head == pytest.approx(10 * body) for body, head in seen)
    assert seen[0][0] == pytest.approx(1e-6) and [g["lr"] for g in optimizer.param_groups] == [0.01, 0.1]


def test_finder_restores_weights_optimizer_state_and_rng_bit_for_bit(tmp_path):
    root = make_image_folder(tmp_path / "data")
    cfg = load_config(None, [f"data.root={root}", "data.img_size=32", "data.batch_size=4", "data.workers=0",
                             "data.scan_workers=1", "model.name=timm:test_resnet", "model.weights=none",
                             "train.epochs=1", "train.device=cpu", f"train.output={tmp_path / 'run'}",
                             "train.progress=false", "train.tensorboard=false"])
    torch.set_num_threads(1)
    trainer = build_experiment(cfg).trainer
    trainer.fit()  # momentum buffers and BatchNorm statistics that the sweep must not keep
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt_state = trainer.optimizer.state_dict()
    moments = {k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)} for k, v in opt_state["state"].items()}
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    shuffle = trainer.train_loader.generator.get_state()
    find_lr(trainer.model, trainer.task, trainer.optimizer, trainer.train_loader, base_lr=float(cfg.optim.lr or 2e-3),
            num_steps=10)
    # the loader shuffles as it would have without the sweep: an --lr auto run sees a fixed-lr run's batches
    assert torch.equal(trainer.train_loader.generator.get_state(), shuffle)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    after = trainer.optimizer.state_dict()["state"]
    for key, tensors in moments.items():
        for name, tensor in tensors.items():
            assert torch.equal(after[key][name], tensor), (key, name)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == lrs
    assert torch.equal(torch.get_rng_state(), rng[0]) and (np.random.get_state()[1] == rng[1]).all()
    assert random.getstate() == rng[2]
