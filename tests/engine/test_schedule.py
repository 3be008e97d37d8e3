"""Tests for learning-rate schedules: every group's lr is its base lr times the schedule factor at each step.

Per-group ratios (head multiplier, layer decay) must hold through every schedule; factors are checked against
closed-form references written here independently.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from detkit.engine.optim import OptimConfig, build_optimizer
from detkit.engine.schedule import ScheduleConfig, build_scheduler

EPOCHS, STEPS = 4, 5  # 20 optimiser steps
TOTAL = EPOCHS * STEPS


class _Staged(nn.Module):
    """Three stages, one of them a head: enough to give groups different base lrs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(2, 2)
        self.body = nn.Linear(2, 2)
        self.fc = nn.Linear(2, 2)


def _optimizer(**optim: object) -> torch.optim.Optimizer:
    return build_optimizer(_Staged(), OptimConfig(name="sgd", lr=0.1, **optim))


def _reference_factor(cfg: ScheduleConfig, step: int) -> float:
    warmup = 0 if cfg.name == "onecycle" else round(cfg.warmup_epochs * STEPS)
    if step < warmup:
        return cfg.warmup_start_ratio + (1 - cfg.warmup_start_ratio) * step / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** len([e for e in cfg.step_epochs if step >= e * STEPS])
    if cfg.name == "cosine":
        t = (step - warmup) / (TOTAL - 1 - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 + math.cos(math.pi * t)) / 2
    peak = round(cfg.pct_start * TOTAL)
    low, top = 1 / cfg.div_factor, 1.0
    end = low / cfg.final_div_factor
    if step < peak:
        return top - (top - low) * (1 + math.cos(math.pi * step / peak)) / 2
    return end + (top - end) * (1 + math.cos(math.pi * (step - peak) / (TOTAL - 1 - peak))) / 2


SCHEDULES = [
    ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr_ratio=0.05),
    ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
    ScheduleConfig(name="step", warmup_epochs=0.4, step_epochs=(2.0, 3.0), gamma=0.5),
    ScheduleConfig(name="constant", warmup_epochs=0.0),
]


@pytest.mark.parametrize("cfg", SCHEDULES, ids=[c.name for c in SCHEDULES])
@pytest.mark.parametrize("optim", [{"head_lr_mult": 10.0}, {"layer_decay": 0.5}, {"group_lrs": {"body": 0.02}}])
def test_every_group_follows_its_base_lr_times_the_schedule(cfg: ScheduleConfig, optim: dict) -> None:
    optimizer = _optimizer(**optim)
    base = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert len(set(base.values())) > 1  # the groups really differ
    scheduler = build_scheduler(optimizer, cfg, epochs=EPOCHS, steps_per_epoch=STEPS)
    for step in range(TOTAL):
        factor = _reference_factor(cfg, step)
        for group in optimizer.param_groups:
            expected = base[group["name"]] * factor
            assert group["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), (step, group["name"])
        optimizer.step()
        scheduler.step()


def test_landmarks_of_each_schedule() -> None:
    def lrs(cfg: ScheduleConfig) -> list[float]:
        optimizer = _optimizer(head_lr_mult=1.0)
        scheduler = build_scheduler(optimizer, cfg, epochs=EPOCHS, steps_per_epoch=STEPS)
        out = []
        for _ in range(TOTAL):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    cosine = lrs(ScheduleConfig(name="cosine", warmup_epochs=1.0, warmup_start_ratio=0.01, min_lr_ratio=0.05))
    assert cosine[0] == pytest.approx(0.001) and cosine[STEPS] == pytest.approx(0.1)
    assert cosine[-1] == pytest.approx(0.005)
    assert all(a < b for a, b in zip(cosine[:STEPS], cosine[1 : STEPS + 1]))  # warmup rises
    assert all(a >= b for a, b in zip(cosine[STEPS:], cosine[STEPS + 1 :]))  # then decays
    onecycle = lrs(ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=25.0, final_div_factor=1e4))
    assert onecycle[0] == pytest.approx(0.1 / 25) and max(onecycle) == pytest.approx(0.1)
    assert onecycle.index(max(onecycle)) == 5 and onecycle[-1] == pytest.approx(0.1 / 25 / 1e4)
    step = lrs(ScheduleConfig(name="step", warmup_epochs=0.0, step_epochs=(1.0, 3.0), gamma=0.1))
    assert step[:5] == pytest.approx([0.1] * 5) and step[5:15] == pytest.approx([0.01] * 10)
    assert step[15:] == pytest.approx([0.001] * 5)


def test_scheduler_state_resumes_exactly_and_loads_weights_only() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1.0)
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, cfg, epochs=EPOCHS, steps_per_epoch=STEPS)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_opt = _optimizer()
    resumed_opt.load_state_dict(saved["optimizer"])
    resumed = build_scheduler(resumed_opt, cfg, epochs=EPOCHS, steps_per_epoch=STEPS)
    resumed.load_state_dict(saved["scheduler"])
    for _ in range(5):
        optimizer.step(), scheduler.step()
        resumed_opt.step(), resumed.step()
        assert [g["lr"] for g in resumed_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]


@pytest.mark.parametrize(
    ("cfg", "epochs", "pattern"),
    [
        (ScheduleConfig(name="poly"), 2, r"schedule.name must be one of .*'poly'"),
        (ScheduleConfig(), 0, "epochs and steps_per_epoch must be >= 1"),
        (ScheduleConfig(warmup_epochs=-1.0), 2, "warmup_epochs must be >= 0"),
        (ScheduleConfig(name="onecycle", pct_start=1.0), 2, r"pct_start must be in \(0, 1\)"),
    ],
)
def test_bad_schedule_settings_are_errors(cfg: ScheduleConfig, epochs: int, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build_scheduler(_optimizer(), cfg, epochs=epochs, steps_per_epoch=3)


def test_warmup_longer_than_training_is_clipped() -> None:
    optimizer = _optimizer(head_lr_mult=1.0)
    cfg = ScheduleConfig(name="constant", warmup_epochs=10.0)
    scheduler = build_scheduler(optimizer, cfg, epochs=1, steps_per_epoch=4)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert all(a < b for a, b in zip(seen, seen[1:])) and seen[-1] < 0.1
