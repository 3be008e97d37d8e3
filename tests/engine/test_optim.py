"""Tests for per-stage parameter groups and optimisers: lr precedence, no-decay split, every optimiser steps.

Group structure is checked on resnet18 built on the meta device; optimiser steps use timm's tiny test_resnet.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from detkit.engine.optim import (
    OPTIMIZERS,
    OptimConfig,
    _fused_if_supported,
    build_optimizer,
    build_param_groups,
    no_decay_parameter_names,
    stage_learning_rates,
)
from detkit.models import create_classifier

STAGES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


@pytest.fixture(scope="module")
def resnet18_meta() -> nn.Module:
    with torch.device("meta"):
        return create_classifier("resnet18", 5, weights="none")


def _lr_by_stage(groups: list[dict]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for group in groups:
        stage = group["name"].split("/")[0]
        assert rates.setdefault(stage, group["lr"]) == group["lr"]  # both halves of a stage share its lr
    return rates


def test_head_multiplier_gives_the_textbook_10x(resnet18_meta: nn.Module) -> None:
    groups = build_param_groups(resnet18_meta, OptimConfig(lr=0.01, head_lr_mult=10.0))
    rates = _lr_by_stage(groups)
    assert list(rates) == STAGES
    assert rates["head"] == pytest.approx(0.1)
    assert all(rates[s] == pytest.approx(0.01) for s in STAGES[:-1])


def test_layer_decay_scales_by_distance_from_head(resnet18_meta: nn.Module) -> None:
    rates = _lr_by_stage(build_param_groups(resnet18_meta, OptimConfig(lr=0.1, layer_decay=0.5)))
    expected = {stage: 0.1 * 0.5 ** (len(STAGES) - 1 - i) for i, stage in enumerate(STAGES)}
    assert rates == pytest.approx(expected)
    assert rates["head"] == pytest.approx(0.1) and rates["stem"] == pytest.approx(0.1 / 32)


def test_explicit_group_lrs_win_and_the_rest_follow_the_other_rules(resnet18_meta: nn.Module) -> None:
    cfg = OptimConfig(lr=0.01, head_lr_mult=5.0, group_lrs={"stem": 0.0, "layer4": 0.003})
    rates = _lr_by_stage(build_param_groups(resnet18_meta, cfg))
    assert rates["stem"] == 0.0 and rates["layer4"] == 0.003
    assert rates["layer1"] == pytest.approx(0.01) and rates["head"] == pytest.approx(0.05)
    cfg = OptimConfig(lr=0.01, layer_decay=0.5, group_lrs={"head": 1.0})
    rates = _lr_by_stage(build_param_groups(resnet18_meta, cfg))
    assert rates["head"] == 1.0 and rates["layer4"] == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("cfg", "pattern"),
    [
        (OptimConfig(group_lrs={"layer9": 0.1}), r"unknown stages \['layer9'\].*'stem', 'layer1'"),
        (OptimConfig(lr=-1.0), "learning rates must be >= 0"),
        (OptimConfig(layer_decay=1.5), r"layer_decay must be in \(0, 1\], got 1.5"),
    ],
)
def test_bad_rate_settings_are_errors(cfg: OptimConfig, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        stage_learning_rates(STAGES, cfg)


def test_norm_and_bias_parameters_get_no_weight_decay(resnet18_meta: nn.Module) -> None:
    groups = build_param_groups(resnet18_meta, OptimConfig(weight_decay=0.05))
    names = {id(p): n for n, p in resnet18_meta.named_parameters()}
    for group in groups:
        members = [names[id(p)] for p in group["params"]]
        if group["name"].endswith("/no_decay"):
            assert group["weight_decay"] == 0.0
            assert all(".bn" in n or n.startswith("bn1") or "downsample.1" in n or n.endswith("bias") for n in members)
        else:
            assert group["weight_decay"] == 0.05
            assert all(n.endswith("weight") and resnet18_meta.get_parameter(n).dim() > 1 for n in members)
    assert {g["name"] for g in groups} == {s for s in STAGES} | {f"{s}/no_decay" for s in STAGES}


def test_no_decay_split_can_be_switched_off(resnet18_meta: nn.Module) -> None:
    groups = build_param_groups(resnet18_meta, OptimConfig(weight_decay=0.05, no_decay_norm_bias=False))
    assert [g["name"] for g in groups] == STAGES
    assert all(g["weight_decay"] == 0.05 for g in groups)


def test_models_no_weight_decay_list_is_honoured() -> None:
    import timm

    model = timm.create_model("test_vit", pretrained=False, num_classes=2)
    exempt = no_decay_parameter_names(model)
    assert {"pos_embed", "cls_token"} <= exempt
    assert "blocks.0.attn.qkv.weight" not in exempt


def test_every_parameter_is_in_exactly_one_group_including_frozen_ones(resnet18_meta: nn.Module) -> None:
    resnet18_meta.layer1.requires_grad_(False)
    try:
        groups = build_param_groups(resnet18_meta, OptimConfig())
    finally:
        resnet18_meta.layer1.requires_grad_(True)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(resnet18_meta.parameters()))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps_with_per_group_rates(name: str) -> None:
    torch.manual_seed(0)
    model = create_classifier("timm:test_resnet", 3, weights="none")
    optimizer = build_optimizer(model, OptimConfig(name=name, lr=0.01, head_lr_mult=10.0))
    rates = _lr_by_stage(optimizer.param_groups)
    assert rates["head"] == pytest.approx(10 * rates["stem"])
    before = model.fc.weight.detach().clone()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    optimizer.step()
    assert not torch.equal(model.fc.weight, before)


def test_sgd_options_reach_the_optimizer() -> None:
    model = create_classifier("timm:test_resnet", 3, weights="none")
    optimizer = build_optimizer(model, OptimConfig(name="SGD", momentum=0.8, nesterov=True))
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in optimizer.param_groups)
    adamw = build_optimizer(model, OptimConfig(name="adamw", betas=(0.8, 0.99), weight_decay=0.3))
    assert isinstance(adamw, torch.optim.AdamW)
    assert {g["weight_decay"] for g in adamw.param_groups} == {0.0, 0.3}
    assert all(g["betas"] == (0.8, 0.99) for g in adamw.param_groups)


def test_unknown_optimizer_and_nesterov_without_momentum_are_errors() -> None:
    model = create_classifier("timm:test_resnet", 3, weights="none")
    with pytest.raises(ValueError, match=r"optim.name must be one of .*'lbfgs'"):
        build_optimizer(model, OptimConfig(name="lbfgs"))
    with pytest.raises(ValueError, match="nesterov needs optim.momentum > 0"):
        build_optimizer(model, OptimConfig(name="sgd", momentum=0.0, nesterov=True))



@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_kernels_are_used_on_the_cpu_and_update_as_the_default_implementation(name: str) -> None:
    torch.manual_seed(0)
    model = create_classifier("timm:test_resnet", 3, weights="none")
    twin = create_classifier("timm:test_resnet", 3, weights="none")
    twin.load_state_dict(model.state_dict())
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.01)
    fused = build_optimizer(model, cfg)
    assert all(g["fused"] for g in fused.param_groups)
    keys = set(inspect.signature(type(fused)).parameters) - {"params", "fused"}
    plain = type(fused)(build_param_groups(twin, cfg), **{k: v for k, v in fused.defaults.items() if k in keys})
    assert not any(g["fused"] for g in plain.param_groups)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for m, opt in ((model, fused), (twin, plain)):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-4)  # Adam divides by sqrt(v): tiny grads amplify rounding


def test_parameters_without_a_fused_kernel_get_the_default_implementation() -> None:
    class NoFusedKernel(torch.optim.SGD):  # as torch answers for a device or dtype it has no fused kernel for
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError("fused=True requires all the params to be floating point Tensors")
            super().__init__(params, **kwargs)

    optimizer = _fused_if_supported(NoFusedKernel, [{"params": [nn.Parameter(torch.ones(2))]}], lr=0.1)
    assert isinstance(optimizer, NoFusedKernel) and not optimizer.defaults.get("fused")
