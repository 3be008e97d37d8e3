"""Start-aware defaults: the training policy that fills every key a config leaves null, chosen by how the model starts.

Fine-tuning (pretrained weights were loaded) and training from scratch (random init) need different optimisers, head
multipliers and augmentation; explicit keys always win, and the filled values are written to the run's config.yaml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from detkit.config.core import config_from_dict, config_to_dict, flatten_keys
from detkit.config.sections import ExperimentConfig, OptimConfig
from detkit.errors import ConfigError

__all__ = [
    "POLICIES",
    "StartPolicy",
    "choose_policy",
    "default_lr",
    "default_weight_decay",
    "fill_from",
    "fill_optim",
    "policy_keys",
    "resolve_policy",
    "scratch_augment_preset",
]

#: ``train.policy`` values besides ``auto``
POLICIES = ("finetune", "scratch")

# Base learning rates and weight decays per optimiser. Fine-tuning keeps the classic SGD 0.01 (the head at 10x);
# from scratch AdamW at 2e-3 with decoupled decay 0.05 converges without tuning on small sets (docs/benchmarks.md).
_LR = {"finetune": {"sgd": 0.01, "adam": 1e-4, "adamw": 1e-4, "rmsprop": 1e-3, "adagrad": 0.01, "adadelta": 1.0},
       "scratch": {"sgd": 0.05, "adam": 1e-3, "adamw": 2e-3, "rmsprop": 1e-3, "adagrad": 0.01, "adadelta": 1.0}}
_WEIGHT_DECAY = {"adamw": 0.05}
_OPTIMIZER = {"finetune": "sgd", "scratch": "adamw"}
_HEAD_LR_MULT = {"finetune": 10.0, "scratch": 1.0}


@dataclass(frozen=True)
class StartPolicy:
    """The policy a run trains under and why.

    Attributes:
        name: ``finetune`` or ``scratch``.
        reason: in words, what decided it (the weights that were loaded, or ``train.policy``).
        filled: the dotted keys the policy set, with their values (keys the config set are not listed).
    """

    name: str
    reason: str
    filled: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        """One line in plain words, e.g. ``from scratch (random init: weights none): optim.name=adamw, ...``."""
        title = "fine-tuning" if self.name == "finetune" else "from scratch"
        keys = ", ".join(f"{k}={_short(v)}" for k, v in self.filled.items()) or "nothing (every key was set)"
        return f"training policy {title} ({self.reason}); it set {keys}; set any of these keys to override"


def choose_policy(policy: str, pretrained: bool, weights: str) -> tuple[str, str]:
    """``(policy name, reason)`` for ``train.policy`` given whether pretrained weights were actually loaded.

    ``auto`` follows what happened, not what was asked: ``weights: auto`` that fell back to random init offline
    trains from scratch.

    Raises:
        ConfigError: for a ``train.policy`` that is not ``auto``, ``finetune`` or ``scratch``.
    """
    if policy in POLICIES:
        return policy, f"train.policy: {policy}"
    if policy != "auto":
        raise ConfigError(f"train.policy: expected auto, finetune or scratch, got {policy!r}")
    if pretrained:
        source = "a weights file" if weights not in ("imagenet", "auto", "coco") else f"{weights} weights"
        return "finetune", f"pretrained weights were loaded: {source}"
    return "scratch", f"random init: weights {weights}" + (" (no pretrained weights available)" if weights == "auto"
                                                            else "")


def default_lr(policy: str, optimizer: str) -> float:
    """The base learning rate the policy gives ``optimizer`` (``optim.lr: null``)."""
    return _LR[policy].get(optimizer.lower(), 0.01)


def default_weight_decay(optimizer: str) -> float:
    """The weight decay given to ``optimizer`` when ``optim.weight_decay`` is null (0.05 for AdamW, else 1e-4)."""
    return _WEIGHT_DECAY.get(optimizer.lower(), 1e-4)


def fill_optim(cfg: OptimConfig, policy: str = "finetune") -> tuple[OptimConfig, dict[str, Any]]:
    """``cfg`` with its null keys set by ``policy``, and those keys (``optim.``-prefixed) with their values.

    ``optim.lr: auto`` stays ``auto`` (the LR finder replaces it). Used by :func:`resolve_policy`, and by
    :func:`detkit.engine.optim.build_optimizer` with the fine-tuning policy when called on an unresolved config.
    """
    filled: dict[str, Any] = {}
    name = cfg.name if cfg.name is not None else _OPTIMIZER[policy]
    if cfg.name is None:
        filled["optim.name"] = name
    if cfg.lr is None:
        filled["optim.lr"] = default_lr(policy, name)
    if cfg.weight_decay is None:
        filled["optim.weight_decay"] = default_weight_decay(name)
    if cfg.head_lr_mult is None:
        filled["optim.head_lr_mult"] = _HEAD_LR_MULT[policy]
    return dataclasses.replace(cfg, **{k.split(".", 1)[1]: v for k, v in filled.items()}), filled


def scratch_augment_preset(img_size: int, epochs: int) -> str:
    """The augmentation preset for training from scratch: ``light`` for short runs or small inputs, where a
    random network cannot yet absorb crops and mirrors, ``standard`` from 30 epochs at 96 px, ``strong`` from 100."""
    if epochs >= 100 and img_size >= 96:
        return "strong"
    if epochs >= 30 and img_size >= 96:
        return "standard"
    return "light"


def resolve_policy(cfg: ExperimentConfig, *, pretrained: bool, img_size: int) -> tuple[ExperimentConfig, StartPolicy]:
    """Fill every null policy key of ``cfg`` for how the model starts.

    Keys: ``optim.name``, ``optim.lr``, ``optim.weight_decay``, ``optim.head_lr_mult`` (see :func:`fill_optim`) and
    the augmentation preset of the task's section (``data.augment.preset`` / ``detect.augment.preset``: ``standard``
    fine-tuning, :func:`scratch_augment_preset` from scratch), whose values then fill that section's null keys.

    Args:
        cfg: the experiment config (``train.policy`` picks the policy, ``auto`` by ``pretrained``).
        pretrained: whether pretrained weights were loaded (``ModelMeta.pretrained``).
        img_size: the input side in pixels the run trains at.

    Returns:
        ``(resolved config, policy)``; the config has no null policy key left (``optim.lr`` may be ``auto``) and
        ``train.policy`` names the policy that ran.
    """
    name, reason = choose_policy(cfg.train.policy, pretrained, cfg.model.weights)
    optim, filled = fill_optim(cfg.optim, name)
    section = "detect.augment" if cfg.task == "detect" else "data.augment"
    aug = cfg.detect.augment if cfg.task == "detect" else cfg.data.augment
    preset = aug.preset
    if preset == "auto":
        preset = "standard" if name == "finetune" else scratch_augment_preset(img_size, cfg.train.epochs)
        filled[f"{section}.preset"] = preset
    aug = aug.resolved(preset)
    if cfg.task == "detect":
        cfg = dataclasses.replace(cfg, detect=dataclasses.replace(cfg.detect, augment=aug))
    else:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment=aug))
    train = dataclasses.replace(cfg.train, policy=name)  # config.yaml records which policy ran
    return dataclasses.replace(cfg, optim=optim, train=train), StartPolicy(name, reason, filled)


def policy_keys() -> list[str]:
    """The dotted keys a policy or the train set may fill (null or ``auto`` until resolved)."""
    fixed = ["optim.name", "optim.lr", "optim.weight_decay", "optim.head_lr_mult", "detect.first_level",
             "detect.anchor_scales", "detect.anchor_ratios"]
    return fixed + [k for k in flatten_keys() if k.startswith(("data.augment.", "detect.augment."))]


def fill_from(cfg: ExperimentConfig, saved: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with each unresolved policy key (null or ``auto``) taken from ``saved``, a resumed run's config, so
    that resuming continues with the values the run started with (an LR finder's lr, fitted default boxes)."""
    data, old = config_to_dict(cfg), config_to_dict(saved)
    for key in policy_keys():
        parts = key.split(".")
        node, source = data, old
        for part in parts[:-1]:
            node, source = node[part], source.get(part, {})
        if node[parts[-1]] in (None, "auto") and source.get(parts[-1]) not in (None, "auto"):
            node[parts[-1]] = source[parts[-1]]
    return config_from_dict(data)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
