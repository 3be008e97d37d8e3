"""Tests for detkit.engine.fused_step: fused steps on channels-last parameters run on dense views, bit for bit."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from detkit.engine.fused_step import with_dense_step
from detkit.engine.optim import OptimConfig, build_optimizer
from detkit.models import create_classifier

OPTIMISERS = [  # with the fused op each calls
    (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}, "_fused_adamw_"),
    (torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}, "_fused_adam_"),
    (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}, "_fused_sgd_"),
]


def _spy(monkeypatch, op: str) -> list:
    """Record ``(shape, contiguous)`` of the 4-d parameters that torch's fused ``op`` is given, per call."""
    seen, real = [], getattr(torch, op)

    def spy(params, *args, **kwargs):
        seen.append([(tuple(p.shape), p.is_contiguous()) for p in params if p.dim() == 4])
        return real(params, *args, **kwargs)

    monkeypatch.setattr(torch, op, spy)
    return seen


def _net() -> nn.Module:
    """3x3, 1x1 and 1x3 kernels (1x1 weights are contiguous in both layouts), a norm, a linear layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 6, (1, 3)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    ).to(memory_format=torch.channels_last)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(2, 3, 9, 9, generator=g).contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


def _assert_same(a: nn.Module, b: nn.Module, oa: torch.optim.Optimizer, ob: torch.optim.Optimizer) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.shape == q.shape and p.stride() == q.stride() and torch.equal(p, q)
        assert p.grad.stride() == q.grad.stride() and torch.equal(p.grad, q.grad)
    for sa, sb in zip(oa.state.values(), ob.state.values()):
        assert sa.keys() == sb.keys()
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                assert sa[k].shape == sb[k].shape and sa[k].stride() == sb[k].stride() and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("cls, kwargs, op", OPTIMISERS)
def test_dense_step_equals_the_fused_step_bit_for_bit_and_swaps_channels_last_weights(cls, kwargs, op, monkeypatch):
    plain_model, dense_model = _net(), _net()
    plain = cls(plain_model.parameters(), fused=True, **kwargs)
    dense = with_dense_step(cls)(dense_model.parameters(), fused=True, **kwargs)
    assert isinstance(dense, cls) and type(dense).__name__ == cls.__name__
    seen = _spy(monkeypatch, op)
    _train(plain_model, plain)
    _train(dense_model, dense)
    # torch's own class hands the kernel channels-last weights (which it copies); the dense step their
    # [O, kh, kw, I] views, contiguous; the 1x1 weight is contiguous either way
    assert seen[0] == [((8, 3, 3, 3), False), ((4, 8, 1, 1), True), ((6, 4, 1, 3), False)]
    assert seen[3] == [((8, 3, 3, 3), True), ((4, 8, 1, 1), True), ((6, 1, 3, 4), True)]
    _assert_same(plain_model, dense_model, plain, dense)
    conv = dense_model[0].weight  # back in the model's layout after every step
    assert conv.shape == (8, 3, 3, 3) and conv.is_contiguous(memory_format=torch.channels_last)


def test_state_moves_between_dense_and_plain_optimisers():
    kwargs = {"lr": 1e-2, "weight_decay": 0.1}
    a, b = _net(), _net()
    oa = with_dense_step(torch.optim.AdamW)(a.parameters(), fused=True, **kwargs)
    ob = torch.optim.AdamW(b.parameters(), fused=True, **kwargs)
    _train(a, oa)
    _train(b, ob)
    # swap the states (as a checkpoint from one and a resume into the other would) and continue
    sa, sb = copy.deepcopy(oa.state_dict()), copy.deepcopy(ob.state_dict())
    oa.load_state_dict(sb)
    ob.load_state_dict(sa)
    _train(a, oa, seed=2)
    _train(b, ob, seed=2)
    _assert_same(a, b, oa, ob)


def test_state_of_another_layout_takes_the_plain_path():
    kwargs = {"lr": 1e-2}
    a, b = _net(), _net()
    oa = with_dense_step(torch.optim.AdamW)(a.parameters(), fused=True, **kwargs)
    ob = torch.optim.AdamW(b.parameters(), fused=True, **kwargs)
    _train(a, oa, steps=1)
    _train(b, ob, steps=1)
    for opt in (oa, ob):  # moments in the default layout, as from a model that was not channels-last
        for state in opt.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.dim() == 4:
                    state[k] = v.contiguous()
    _train(a, oa, seed=3)
    _train(b, ob, seed=3)
    _assert_same(a, b, oa, ob)


def test_a_closure_runs_the_model_on_its_own_weights():
    a, b = _net(), _net()
    oa = with_dense_step(torch.optim.SGD)(a.parameters(), fused=True, lr=0.1, momentum=0.9)
    ob = torch.optim.SGD(b.parameters(), fused=True, lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    for model, opt in ((a, oa), (b, ob)):
        def closure(model=model, opt=opt):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            return loss
        for _ in range(2):
            opt.step(closure)
    _assert_same(a, b, oa, ob)


def test_build_optimizer_gives_fused_steps_on_dense_views(monkeypatch):
    torch.manual_seed(0)
    model = create_classifier("timm:test_resnet", 3, weights="none").to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults.get("fused")
    assert type(pickle.loads(pickle.dumps(optimizer))) is type(optimizer)  # a module-level class: picklable
    seen = _spy(monkeypatch, "_fused_adamw_")
    optimizer.zero_grad()
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)).sum().backward()
    optimizer.step()
    layouts = [contiguous for call in seen for _, contiguous in call]
    assert layouts and all(layouts)  # every 4-d weight reached the kernel as a contiguous view
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert weights and all(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in weights)
