"""A model's parameters split into named stages, input to output (stem, layer1..layer4, head).

Per-stage learning rates (``detkit.engine.optim``) and freezing (``detkit.engine.freeze``) are built on this.
"""

from __future__ import annotations

import re

from torch import nn
from torchvision.models.resnet import ResNet

Stages = dict[str, list[tuple[str, nn.Parameter]]]

# Top-level children that are the classifier in torchvision / timm / common custom models.
_HEAD_CHILD_NAMES = ("fc", "classifier", "head")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel (``.module``) or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def param_stages(model: nn.Module) -> Stages:
    """Split ``model``'s parameters into named stages ordered from input to output, ``head`` last.

    Rules, first that applies:

    - the model has a method ``detkit_stages()`` returning this structure (SSD: backbone stages, extras, heads);
    - torchvision ResNet family: ``stem`` (conv1, bn1), ``layer1`` … ``layer4``, ``head`` (fc);
    - timm models: timm's own coarse grouping (``group_matcher(coarse=True)``), named ``stem`` (if the matcher
      has one), ``stage1``, ``stage2``, …; the classifier (``get_classifier()``) is ``head``;
    - any other model: one stage per top-level child, with the child called ``fc``/``classifier``/``head`` as
      ``head``.

    DDP/DataParallel/compiled wrappers are looked through, so names have no ``module.`` prefix.

    Args:
        model: the network.

    Returns:
        Ordered ``{stage name: [(parameter name, parameter), ...]}``; every parameter appears exactly once.

    Raises:
        ValueError: if no rule finds a head, or ``detkit_stages()`` misses or repeats a parameter.
    """
    model = unwrap_model(model)
    if callable(getattr(model, "detkit_stages", None)):
        stages = dict(model.detkit_stages())
    elif _is_torchvision_resnet(model):
        stages = _stages_by_child(model, {"conv1": "stem", "bn1": "stem", "fc": "head"})
    elif _has_timm_grouping(model):
        stages = _timm_stages(model)
    else:
        head = [name for name, _ in model.named_children() if name in _HEAD_CHILD_NAMES]
        if not head:
            children = [name for name, _ in model.named_children()]
            raise ValueError(
                f"cannot find the head of {type(model).__name__}: no top-level child named one of "
                f"{_HEAD_CHILD_NAMES} (children: {children}); define a detkit_stages() method on the model"
            )
        stages = _stages_by_child(model, {head[-1]: "head"})
    _check_partition(model, stages)
    return stages


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes (``"fc."``) under which the ``head`` stage's parameters and buffers live."""
    names = [name for name, _ in param_stages(model).get("head", [])]
    return tuple(sorted({name.rsplit(".", 1)[0] + "." if "." in name else name for name in names}))


def _is_torchvision_resnet(model: nn.Module) -> bool:
    return isinstance(model, ResNet)


def _has_timm_grouping(model: nn.Module) -> bool:
    if not (callable(getattr(model, "group_matcher", None)) and callable(getattr(model, "get_classifier", None))):
        return False
    try:
        model.group_matcher(coarse=True)
    except NotImplementedError:
        return False
    return True


def _stages_by_child(model: nn.Module, rename: dict[str, str]) -> Stages:
    stages: Stages = {}
    head: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        child = name.split(".", 1)[0] if "." in name else "root"
        stage = rename.get(child, child)
        (head if stage == "head" else stages.setdefault(stage, [])).append((name, param))
    stages["head"] = head
    return stages


def _timm_stages(model: nn.Module) -> Stages:
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=True)
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    named = dict(model.named_parameters())
    stages: Stages = {}
    head: list[tuple[str, nn.Parameter]] = []
    stem_pattern = matcher.get("stem") if isinstance(matcher, dict) else None
    for group_index, names in sorted(group_parameters(model, matcher).items()):
        members = [(n, named[n]) for n in names if id(named[n]) not in head_ids]
        head += [(n, named[n]) for n in names if id(named[n]) in head_ids]
        if not members:
            continue
        if not stages and isinstance(stem_pattern, str) and re.match(stem_pattern, members[0][0]):
            stages["stem"] = members
        else:
            stages[f"stage{len(stages) + (0 if 'stem' in stages else 1)}"] = members
    stages["head"] = head
    return stages


def _check_partition(model: nn.Module, stages: Stages) -> None:
    if "head" not in stages:
        raise ValueError(f"stages of {type(model).__name__} have no 'head' entry: {list(stages)}")
    if list(stages)[-1] != "head":
        raise ValueError(f"'head' must be the last stage of {type(model).__name__}, got order {list(stages)}")
    seen: dict[int, str] = {}
    for stage, params in stages.items():
        for name, param in params:
            if id(param) in seen:
                raise ValueError(f"parameter {name!r} appears in stage {seen[id(param)]!r} and again in {stage!r}")
            seen[id(param)] = stage
    missing = [name for name, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise ValueError(f"{len(missing)} parameters of {type(model).__name__} are in no stage, e.g. {missing[:5]}")
