"""Registry of classifier architectures: short entry functions that build a randomly initialised network.

Names are torchvision's (``resnet18`` ...); any timm model is reachable as ``timm:NAME`` without registration.
"""

from __future__ import annotations

import difflib
from typing import Callable

import torchvision.models as tvm
from torch import nn

_ENTRIES: dict[str, Callable[[], nn.Module]] = {}


def register_classifier(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator adding an entry function ``fn() -> nn.Module`` under ``name``.

    Args:
        name: the name used by ``create_classifier``; must be unique and not start with ``timm:``.
    """

    def decorator(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _ENTRIES:
            raise ValueError(f"classifier name {name!r} is already registered")
        if name.startswith("timm:"):
            raise ValueError(f"classifier name {name!r} must not start with 'timm:' (reserved for timm models)")
        _ENTRIES[name] = fn
        return fn

    return decorator


def list_classifiers() -> list[str]:
    """Sorted names of the registered architectures (timm models are available as ``timm:NAME`` besides)."""
    return sorted(_ENTRIES)


def get_entry(name: str) -> Callable[[], nn.Module]:
    """The entry function registered under ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the valid names and the closest match.
    """
    if name not in _ENTRIES:
        close = difflib.get_close_matches(name, list(_ENTRIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model name {name!r}.{hint} Valid names: {', '.join(list_classifiers())}, "
            f"or 'timm:NAME' for any timm model"
        )
    return _ENTRIES[name]


# Entry functions: the architecture only (1000-class ImageNet head, random init); weights and the head swap
# are handled by ``create_classifier``.


@register_classifier("resnet18")
def resnet18() -> nn.Module:
    """ResNet-18 (11.7M parameters, 512-d features)."""
    return tvm.resnet18(weights=None)


@register_classifier("resnet34")
def resnet34() -> nn.Module:
    """ResNet-34 (21.8M parameters, 512-d features)."""
    return tvm.resnet34(weights=None)


@register_classifier("resnet50")
def resnet50() -> nn.Module:
    """ResNet-50 (25.6M parameters, 2048-d features)."""
    return tvm.resnet50(weights=None)


@register_classifier("resnet101")
def resnet101() -> nn.Module:
    """ResNet-101 (44.5M parameters, 2048-d features)."""
    return tvm.resnet101(weights=None)


@register_classifier("resnet152")
def resnet152() -> nn.Module:
    """ResNet-152 (60.2M parameters, 2048-d features)."""
    return tvm.resnet152(weights=None)


@register_classifier("wide_resnet50_2")
def wide_resnet50_2() -> nn.Module:
    """Wide ResNet-50-2 (68.9M parameters, 2048-d features)."""
    return tvm.wide_resnet50_2(weights=None)


@register_classifier("wide_resnet101_2")
def wide_resnet101_2() -> nn.Module:
    """Wide ResNet-101-2 (126.9M parameters, 2048-d features)."""
    return tvm.wide_resnet101_2(weights=None)


@register_classifier("resnext50_32x4d")
def resnext50_32x4d() -> nn.Module:
    """ResNeXt-50 32x4d (25.0M parameters, 2048-d features)."""
    return tvm.resnext50_32x4d(weights=None)


@register_classifier("resnext101_32x8d")
def resnext101_32x8d() -> nn.Module:
    """ResNeXt-101 32x8d (88.8M parameters, 2048-d features)."""
    return tvm.resnext101_32x8d(weights=None)


@register_classifier("resnext101_64x4d")
def resnext101_64x4d() -> nn.Module:
    """ResNeXt-101 64x4d (83.5M parameters, 2048-d features)."""
    return tvm.resnext101_64x4d(weights=None)
