"""The model registry: each model module registers its builder here, next to its code (timm's ``register_model``).

Classifiers register an entry function building the bare architecture; detectors register a builder and the
function that maps the ``detect`` config section onto the builder's keywords. This module imports no model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from detkit.config.sections import DetectConfig

__all__ = [
    "DetectorEntry",
    "detector_entry",
    "get_entry",
    "is_detector",
    "list_classifiers",
    "list_detectors",
    "no_config_kwargs",
    "register_classifier",
    "register_detector",
]

_CLASSIFIERS: dict[str, Callable[[], nn.Module]] = {}
_DETECTORS: dict[str, DetectorEntry] = {}


# ----------------------------------------------------------------------------- classifiers


def register_classifier(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator adding an entry function ``fn() -> nn.Module`` (architecture only, random init) under ``name``.

    Args:
        name: the name used by ``create_classifier``; must be unique and not start with ``timm:``.
    """

    def decorator(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _CLASSIFIERS or name in _DETECTORS:
            raise ValueError(f"model name {name!r} is already registered")
        if name.startswith("timm:"):
            raise ValueError(f"classifier name {name!r} must not start with 'timm:' (reserved for timm models)")
        _CLASSIFIERS[name] = fn
        return fn

    return decorator


def list_classifiers() -> list[str]:
    """Sorted names of the registered architectures (timm models are available as ``timm:NAME`` besides)."""
    return sorted(_CLASSIFIERS)


def get_entry(name: str) -> Callable[[], nn.Module]:
    """The classifier entry function registered under ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the valid names and the closest match.
    """
    if name not in _CLASSIFIERS:
        raise ValueError(_unknown("model name", name, list(_CLASSIFIERS), ", or 'timm:NAME' for any timm model"))
    return _CLASSIFIERS[name]


# ----------------------------------------------------------------------------- detectors


def no_config_kwargs(detect: DetectConfig) -> dict[str, Any]:
    """``config_kwargs`` of a detector that takes no keyword from the ``detect`` section."""
    return {}


@dataclass(frozen=True)
class DetectorEntry:
    """A registered detector.

    Attributes:
        name: the registry name.
        build: ``build(*, num_classes, weights, **kwargs) -> Detector``.
        config_kwargs: ``config_kwargs(detect) -> kwargs``: the architecture and loss keywords this detector
            takes from a :class:`~detkit.config.DetectConfig` (raising ``ValueError`` naming ``detect.KEY``
            for a value it cannot honour). Post-processing thresholds are not among them: every detector
            takes those through :meth:`~detkit.models.detector.Detector.set_postprocess`.
    """

    name: str
    build: Callable[..., nn.Module]
    config_kwargs: Callable[[DetectConfig], dict[str, Any]] = no_config_kwargs


def register_detector(
    name: str, config_kwargs: Callable[[DetectConfig], dict[str, Any]] = no_config_kwargs
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``fn(*, num_classes, weights, **kwargs) -> Detector`` under ``name``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _DETECTORS or name in _CLASSIFIERS:
            raise ValueError(f"model name {name!r} is already registered")
        _DETECTORS[name] = DetectorEntry(name, fn, config_kwargs)
        return fn

    return decorator


def list_detectors() -> list[str]:
    """Sorted names accepted by :func:`detkit.models.create_detector`."""
    return sorted(_DETECTORS)


def is_detector(name: str) -> bool:
    """Whether ``name`` is a registered detector."""
    return name in _DETECTORS


def detector_entry(name: str) -> DetectorEntry:
    """The :class:`DetectorEntry` of ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    if name not in _DETECTORS:
        raise ValueError(_unknown("detector name", name, list(_DETECTORS)))
    return _DETECTORS[name]


def _unknown(what: str, name: str, valid: list[str], tail: str = "") -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Valid names: {', '.join(sorted(valid))}{tail}"
