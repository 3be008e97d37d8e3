"""``ModelMeta``: what a model carries about itself (architecture, classes, preprocessing), typed and checkpointable.

Every model detkit builds has one as ``model.detkit_meta``; checkpoints store it as the plain dict ``model_meta``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["ModelMeta", "normalization_from_info"]

# fields written only when set (classifiers have no category ids; older checkpoints lack both)
_OPTIONAL = ("classes", "category_ids")


@dataclass(frozen=True, eq=False)
class ModelMeta(Mapping):
    """A model's own description, the model-side half of a checkpoint (timm's ``pretrained_cfg`` idea).

    Also a read-only ``Mapping`` of its fields (``meta["mean"]``, ``dict(meta)``), which is the checkpoint's
    ``model_meta`` entry; ``classes`` and ``category_ids`` appear there only when set.

    Attributes:
        name: the registry name (``resnet18``, ``resnet18_ssd``, ``torchvision:ssd300_vgg16``, ``timm:NAME``).
        num_classes: classes the head predicts (background not counted for detectors).
        weights: the ``weights`` argument the model was built with (``imagenet``, ``auto``, ``none``, a path).
        pretrained: whether weights were loaded (a published release or a file).
        mean: per-channel RGB input mean in [0, 1] units that the weights expect, or None (then the data's).
        std: per-channel RGB input std in [0, 1] units, or None.
        input_size: the square input side in pixels the model is designed for, or None.
        classes: class names in label order (detectors trained by detkit), or None.
        category_ids: the dataset's category id of each label (detectors), or None.
    """

    name: str
    num_classes: int
    weights: str = "none"
    pretrained: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: int | None = None
    classes: list[str] | None = None
    category_ids: list[int] | None = None

    @classmethod
    def create(cls, name: str, num_classes: int, weights: str, *, pretrained: bool,
               normalization: tuple[Sequence[float], Sequence[float]] | None = None,
               input_size: int | None = None) -> ModelMeta:
        """The one way model builders describe what they built; ``normalization`` is ``(mean, std)`` or None."""
        mean, std = (None, None) if normalization is None else normalization
        return cls(name=name, num_classes=int(num_classes), weights=str(weights), pretrained=bool(pretrained),
                   mean=None if mean is None else tuple(float(v) for v in mean),
                   std=None if std is None else tuple(float(v) for v in std),
                   input_size=None if input_size is None else int(input_size))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMeta:
        """From a checkpoint's ``model_meta`` (unknown keys are ignored; missing ones keep their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(data).items() if k in names}
        for key in ("mean", "std"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        for key in _OPTIONAL:
            if values.get(key) is not None:
                values[key] = list(values[key])
        return cls(**{"name": "", "num_classes": 0, **values})

    @classmethod
    def of(cls, model: nn.Module) -> ModelMeta | None:
        """``model.detkit_meta`` as a ``ModelMeta`` (a plain dict there is converted), or None."""
        meta = getattr(model, "detkit_meta", None)
        if meta is None or isinstance(meta, ModelMeta):
            return meta
        return cls.from_dict(meta)

    def replace(self, **changes: Any) -> ModelMeta:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in checkpoints (``model_meta``)."""
        return {key: self[key] for key in self}

    # Mapping protocol
    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self)
                     if f.name not in _OPTIONAL or getattr(self, f.name) is not None)


def normalization_from_info(info: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` recorded in a detkit checkpoint's info (``read_state_dict``), or None when it has none."""
    normalization = info.get("normalization") or {}
    if not normalization.get("mean") or not normalization.get("std"):
        return None
    return tuple(float(v) for v in normalization["mean"]), tuple(float(v) for v in normalization["std"])
