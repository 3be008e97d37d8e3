"""Tests for Freezer: which stages are frozen when, bit-identical frozen weights under SGD/AdamW, BN statistics.

Training steps run on timm's tiny test_resnet (0.5M parameters) at 32x32 input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detkit.engine.freeze import FreezeConfig, Freezer
from detkit.engine.optim import OptimConfig, build_optimizer
from detkit.models import create_classifier, param_stages

BACKBONE = ["stem", "stage1", "stage2", "stage3", "stage4"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_classifier("timm:test_resnet", 3, weights="none")


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 3, (4,), generator=generator)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), targets).backward()
    optimizer.step()


def test_backbone_frozen_for_k_epochs_then_everything_trains() -> None:
    freezer = Freezer(_model(), FreezeConfig(backbone_epochs=2))
    assert [freezer.frozen_stages(e) for e in range(4)] == [BACKBONE, BACKBONE, [], []]


def test_gradual_unfreezing_goes_from_the_head_backwards() -> None:
    freezer = Freezer(_model(), FreezeConfig(backbone_epochs=1, gradual=True, stage_epochs=2))
    schedule = [freezer.frozen_stages(e) for e in range(13)]
    assert schedule[0] == BACKBONE
    assert schedule[1] == schedule[2] == BACKBONE[:4]  # stage4 (next to the head) first
    assert schedule[3] == schedule[4] == BACKBONE[:3]
    assert schedule[5] == BACKBONE[:2] and schedule[7] == BACKBONE[:1]
    assert schedule[9] == schedule[12] == []


def test_no_freezing_by_default_and_head_is_never_frozen() -> None:
    model = _model()
    assert Freezer(model, FreezeConfig()).apply(0) == []
    frozen = Freezer(model, FreezeConfig(backbone_epochs=5)).apply(0)
    assert "head" not in frozen
    assert all(p.requires_grad for p in model.get_classifier().parameters())


def test_apply_sets_requires_grad_and_clears_gradients_of_frozen_stages() -> None:
    model = _model()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    freezer = Freezer(model, FreezeConfig(backbone_epochs=1))
    assert freezer.apply(0) == BACKBONE
    stages = param_stages(model)
    for stage in BACKBONE:
        assert all(not p.requires_grad and p.grad is None for _, p in stages[stage])
    assert all(p.requires_grad and p.grad is not None for _, p in stages["head"])
    assert freezer.apply(1) == []
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "optim",
    [
        OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.1),
        OptimConfig(name="adamw", lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adamw-wd"],
)
def test_frozen_parameters_stay_bit_identical_after_steps(optim: OptimConfig) -> None:
    model = _model()
    optimizer = build_optimizer(model, optim)
    freezer = Freezer(model, FreezeConfig(backbone_epochs=1, gradual=True))
    # Train everything first so momentum / Adam moments exist for every parameter...
    model.train()
    freezer.apply(10)
    for seed in range(1):
        _train_step(model, optimizer, seed)
    # ...then freeze: momentum and decoupled decay must not move the frozen weights either.
    model.train()
    frozen = freezer.apply(2)
    assert frozen == BACKBONE[:3]
    stages = param_stages(model)
    before = {n: p.detach().clone() for s in frozen for n, p in stages[s]}
    trained_before = {n: p.detach().clone() for n, p in stages["stage4"] + stages["head"]}
    for seed in range(1, 3):
        _train_step(model, optimizer, seed)
    for stage in frozen:
        for name, param in stages[stage]:
            assert torch.equal(param, before[name]), name
    assert any(not torch.equal(p, trained_before[n]) for n, p in stages["stage4"] + stages["head"])


def test_bn_statistics_of_frozen_stages_do_not_change_when_freeze_bn() -> None:
    model = _model()
    model.train()
    Freezer(model, FreezeConfig(backbone_epochs=1, freeze_bn=True)).apply(0)
    bn_stem, bn_head_side = model.conv1[1], model.layer4[0].bn1
    assert not bn_stem.training and not bn_head_side.training
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 3 + 1)
    for key, value in stats.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_bn_statistics_keep_updating_without_freeze_bn() -> None:
    model = _model()
    model.train()
    Freezer(model, FreezeConfig(backbone_epochs=1, freeze_bn=False)).apply(0)
    assert model.conv1[1].training
    before = model.conv1[1].running_mean.clone()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(model.conv1[1].running_mean, before)


def test_bn_without_affine_parameters_is_found_through_its_parent() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False))
            self.fc = nn.Linear(4, 2)

    model = Net().train()
    Freezer(model, FreezeConfig(backbone_epochs=1)).apply(0)
    assert not model.body[1].training


@pytest.mark.parametrize(
    ("cfg", "pattern"),
    [
        (FreezeConfig(backbone_epochs=-1), "backbone_epochs must be >= 0"),
        (FreezeConfig(stage_epochs=0), "stage_epochs must be >= 1"),
    ],
)
def test_bad_freeze_settings_are_errors(cfg: FreezeConfig, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Freezer(_model(), cfg)


def test_freezing_an_ssd_backbone_leaves_its_new_extra_blocks_trainable() -> None:
    from detkit.models import create_detector

    model = create_detector("resnet18_ssd", 2, weights="none")
    freezer = Freezer(model, FreezeConfig(backbone_epochs=1))
    assert freezer.backbone_stages == ["stem", "layer1", "layer2", "layer3", "layer4"]
    freezer.apply(0)
    assert not any(p.requires_grad for p in model.layer4.parameters())
    assert all(p.requires_grad for p in model.extras.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
