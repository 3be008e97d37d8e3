"""Optimisers over per-stage parameter groups: head multiplier, layer-wise decay or explicit per-stage rates.

Norm and bias parameters get no weight decay (switchable); every parameter, frozen or not, is in one group.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detkit.config.sections import OptimConfig
from detkit.engine.fused_step import with_dense_step
from detkit.engine.policy import fill_optim
from detkit.models.stages import param_stages, unwrap_model

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta")

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def concrete_optim(cfg: OptimConfig) -> OptimConfig:
    """``cfg`` with null keys filled by the fine-tuning policy (:func:`detkit.engine.policy.fill_optim`): what a
    config resolved by an experiment already is, and the rule when these builders are called directly.

    Raises:
        ValueError: for ``lr: auto`` (the LR finder, :mod:`detkit.engine.lr_finder`, must replace it first).
    """
    if cfg.lr == "auto":
        raise ValueError("optim.lr: auto must be replaced by the LR finder's suggestion before building an optimiser "
                         "(build_experiment does it; or run tools/lr_find.py and set optim.lr)")
    return fill_optim(cfg, "finetune")[0]


def stage_learning_rates(stage_names: list[str], cfg: OptimConfig) -> dict[str, float]:
    """The learning rate of each stage under ``cfg``, by this precedence:

    1. ``cfg.group_lrs[stage]`` when given for that stage;
    2. else with ``cfg.layer_decay``: ``cfg.lr * layer_decay ** d``, d = distance from the head (head: d = 0);
    3. else ``cfg.lr * cfg.head_lr_mult`` for ``head`` and ``cfg.lr`` for every other stage.

    Args:
        stage_names: stage names ordered input → output, ``head`` last (as from ``param_stages``).
        cfg: the optimiser config (null keys: see :func:`concrete_optim`).

    Raises:
        ValueError: if ``group_lrs`` names a stage not in ``stage_names``, or a rate is negative.
    """
    cfg = concrete_optim(cfg)
    group_lrs = dict(cfg.group_lrs or {})
    unknown = sorted(set(group_lrs) - set(stage_names))
    if unknown:
        raise ValueError(f"optim.group_lrs names unknown stages {unknown}; the model's stages are {stage_names}")
    if cfg.lr < 0 or any(v < 0 for v in group_lrs.values()):
        raise ValueError(f"learning rates must be >= 0, got lr={cfg.lr} and group_lrs={group_lrs}")
    if cfg.layer_decay is not None and not 0.0 < cfg.layer_decay <= 1.0:
        raise ValueError(f"optim.layer_decay must be in (0, 1], got {cfg.layer_decay}")
    rates = {}
    last = len(stage_names) - 1
    for index, stage in enumerate(stage_names):
        if stage in group_lrs:
            rates[stage] = float(group_lrs[stage])
        elif cfg.layer_decay is not None:
            rates[stage] = cfg.lr * cfg.layer_decay ** (last - index)
        else:
            rates[stage] = cfg.lr * (cfg.head_lr_mult if stage == "head" else 1.0)
    return rates


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of parameters exempt from weight decay: normalisation-layer parameters, biases, and whatever
    the model lists in a timm-style ``no_weight_decay()`` (e.g. position embeddings)."""
    model = unwrap_model(model)
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, _NORM_TYPES) or param_name == "bias":
                names.add(full)
    if callable(getattr(model, "no_weight_decay", None)):
        listed = set(model.no_weight_decay())
        names |= {name for name, _ in model.named_parameters() if name in listed}
    return names


def build_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim``: one per stage, split into ``stage`` and ``stage/no_decay``.

    Frozen parameters (``requires_grad=False``) are included: unfreezing later then needs no new groups, and
    since their ``.grad`` stays None the optimiser skips them entirely (no step, no decay, no momentum).

    Args:
        model: the network (stages from ``detkit.models.param_stages``).
        cfg: learning rates and weight decay (see ``stage_learning_rates`` for the lr precedence).

    Returns:
        Groups ``{"name", "params", "lr", "weight_decay"}`` ordered input → output; empty groups are left out.
    """
    cfg = concrete_optim(cfg)
    stages = param_stages(model)
    rates = stage_learning_rates(list(stages), cfg)
    no_decay = no_decay_parameter_names(model) if cfg.no_decay_norm_bias else set()
    groups = []
    for stage, named in stages.items():
        decay = [p for n, p in named if n not in no_decay]
        exempt = [p for n, p in named if n in no_decay]
        if decay:
            groups.append({"name": stage, "params": decay, "lr": rates[stage], "weight_decay": cfg.weight_decay})
        if exempt:
            groups.append({"name": f"{stage}/no_decay", "params": exempt, "lr": rates[stage], "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg.name`` over ``build_param_groups(model, cfg)``.

    Each group's ``lr`` is its own; schedulers from ``detkit.engine.schedule`` scale all groups by one
    factor, so the ratios set here hold through training.

    Raises:
        ValueError: for an unknown ``cfg.name`` or ``nesterov`` without momentum.
    """
    cfg = concrete_optim(cfg)
    name = cfg.name.lower()
    groups = build_param_groups(model, cfg)
    if name == "sgd":
        if cfg.nesterov and cfg.momentum <= 0:
            raise ValueError(f"optim.nesterov needs optim.momentum > 0, got momentum={cfg.momentum}")
        return _fused_if_supported(torch.optim.SGD, groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if name == "adam":
        return _fused_if_supported(torch.optim.Adam, groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if name == "adamw":
        return _fused_if_supported(torch.optim.AdamW, groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps)
    if name == "adadelta":
        return torch.optim.Adadelta(groups, lr=cfg.lr, eps=cfg.eps)
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {cfg.name!r}")


def _fused_if_supported(cls: type[torch.optim.Optimizer], groups: list[dict[str, Any]],
                        **kwargs: Any) -> torch.optim.Optimizer:
    """``cls(groups, fused=True, **kwargs)`` where torch has a fused kernel for these parameters (CPU and CUDA
    float tensors: one kernel per step instead of a loop of small ops, about 4x faster for a resnet18's AdamW step
    on the CPU, docs/benchmarks.md); the default implementation elsewhere. Same update rule either way. The fused
    class steps channels-last parameters on the CPU without copies (:mod:`detkit.engine.fused_step`)."""
    try:
        return with_dense_step(cls)(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # device or dtype without a fused kernel
        return cls(groups, **kwargs)
