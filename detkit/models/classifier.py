"""``create_classifier``: a torchvision ResNet or any timm model with its head swapped for ``num_classes``.

The model carries ``detkit_meta`` (weights, whether pretrained, mean/std, input size) for training and inference.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn

from detkit.models.meta import ModelMeta, normalization_from_info
from detkit.models.pretrained import (
    PretrainedWeights,
    WeightsUnavailableError,
    hash_prefix,
    locate_pretrained,
    timm_pretrained,
    torchvision_pretrained,
    torchvision_weight_tags,
)
from detkit.models.registry import get_entry, register_classifier
from detkit.models.weights import load_weights_file, read_state_dict, strip_prefixes

logger = logging.getLogger(__name__)

WEIGHT_MODES = ("imagenet", "auto", "none")


class LinearHead(nn.Linear):
    """A linear classifier with dropout on its input: ``y = W · dropout(x) + b``.

    A subclass of ``nn.Linear`` (not ``Sequential(Dropout, Linear)``) so the state-dict keys stay ``fc.weight``
    / ``fc.bias`` whatever the dropout, matching torchvision files and detkit checkpoints alike.

    Args:
        in_features: feature size D.
        out_features: number of classes C.
        dropout: probability of zeroing an input feature during training, in [0, 1).

    Shapes:
        input Tensor[N, D] → output Tensor[N, C] (logits).
    """

    def __init__(self, in_features: int, out_features: int, *, dropout: float = 0.0) -> None:
        super().__init__(in_features, out_features)
        self.dropout = float(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.dropout(x, self.dropout, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.dropout}"


def create_classifier(
    name: str, num_classes: int, weights: str | os.PathLike | None = "auto", dropout: float = 0.0,
    img_size: int | None = None,
) -> nn.Module:
    """Build a classifier: backbone ``name`` with a fresh head of ``num_classes`` outputs.

    Args:
        name: a registered torchvision name (``resnet18/34/50/101/152``, ``wide_resnet50_2/101_2``,
            ``resnext50_32x4d/101_32x8d/101_64x4d``) or ``timm:NAME`` for any timm model.
        num_classes: number of output classes C (≥ 1).
        weights: ``"imagenet"`` (required; raises ``WeightsUnavailableError`` when neither cached nor
            downloadable), ``"auto"`` (ImageNet when cached or downloadable, else a WARNING and random init),
            ``"none"`` or None (random init) or the path of a weights file (``.pth``/``.pt``/``.safetensors``,
            torchvision/timm layouts, detkit checkpoints; a head with another class count is skipped).
        dropout: dropout probability before the final linear layer, in [0, 1).
        img_size: the input side the model will be trained at, for timm models built for one fixed input size
            (vision transformers: timm sizes the patch grid for it and resamples pretrained position
            embeddings); other models take any size and ignore it.

    Returns:
        The model, mapping Tensor[N, 3, H, W] float images (normalised with ``detkit_meta["mean"/"std"]``) to
        Tensor[N, C] logits. ``model.detkit_meta`` is a :class:`~detkit.models.meta.ModelMeta`: name,
        num_classes, weights (as given), pretrained (were pretrained weights loaded), mean, std (3 floats in
        [0, 1] units, or None when unknown), input_size (int pixels or None).

    Raises:
        ValueError: for an unknown ``name``, ``num_classes`` < 1, ``dropout`` outside [0, 1), or a weights file
            that does not fit the backbone.
        FileNotFoundError: if ``weights`` is neither a mode nor an existing file.
        WeightsUnavailableError: for ``weights="imagenet"`` when the weights cannot be had offline.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if weights is None:
        weights = "none"
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be 'imagenet', 'auto', 'none' or a file path, got {type(weights).__name__}")
    weights = str(weights)
    is_file = weights not in WEIGHT_MODES
    if is_file and not Path(weights).is_file():
        raise FileNotFoundError(f"weights must be one of {WEIGHT_MODES} or an existing file, got {weights!r}")

    if name.startswith("timm:"):
        model, release = _create_timm(name[len("timm:"):], num_classes, weights, float(dropout), img_size)
    else:
        model, release = _create_torchvision(name, num_classes, weights, float(dropout))
    published = _release_preprocessing(release)
    if is_file:
        report = load_weights_file(model, weights)
        published = _file_release(name, weights, report["info"])
    model.detkit_meta = ModelMeta.create(name, num_classes, weights, pretrained=is_file or published is not None,
                                         normalization=published[0] if published else None,
                                         input_size=published[1] if published else None)
    return model


# (mean, std) and input size a model's weights expect
_Preprocessing = tuple[tuple[tuple[float, ...], tuple[float, ...]] | None, int | None]


def _release_preprocessing(published: PretrainedWeights | None) -> _Preprocessing | None:
    return None if published is None else ((published.mean, published.std), published.input_size)


def _file_release(name: str, path: str, info: dict[str, Any]) -> _Preprocessing | None:
    """What a weights file says of its preprocessing: a detkit checkpoint records its normalisation; a published
    release (by its file name, or by its bytes: torchvision's file names carry a SHA-256 prefix, so a renamed copy
    is recognised too) carries that release's, the same rule as for the file in the torch cache; otherwise None
    (unknown: the data's statistics are used)."""
    normalization = normalization_from_info(info)
    if normalization is not None:
        return normalization, (info.get("model_meta") or {}).get("input_size")
    candidates: list[PretrainedWeights] = []
    if name.startswith("timm:"):
        try:
            candidates.append(timm_pretrained(name[len("timm:"):]))
        except ValueError:
            pass
    else:
        candidates += [torchvision_pretrained(name, tag) for tag in torchvision_weight_tags(name)]
    candidates = [c for c in candidates if c.url]
    filename = os.path.basename(path)
    match = next((c for c in candidates if os.path.basename(c.url) == filename), None)
    if match is None and any(hash_prefix(os.path.basename(c.url)) for c in candidates):
        digest = _sha256(path)
        match = next((c for c in candidates if (h := hash_prefix(os.path.basename(c.url))) and digest.startswith(h)),
                     None)
    return _release_preprocessing(match)


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _create_torchvision(
    name: str, num_classes: int, weights: str, dropout: float
) -> tuple[nn.Module, PretrainedWeights | None]:
    model = get_entry(name)()
    loaded: PretrainedWeights | None = None
    if weights in ("imagenet", "auto"):
        published = torchvision_pretrained(name)
        path = locate_pretrained(published, weights)
        if path is not None:
            state, _ = read_state_dict(path)
            try:
                model.load_state_dict(strip_prefixes(state, set(model.state_dict())))
            except RuntimeError as err:
                raise ValueError(f"cached ImageNet weights {path} do not fit {name} (delete the file?): {err}") from err
            loaded = published
            logger.info("loaded ImageNet weights for %s from %s", name, path)
    old_head = model.fc
    model.fc = LinearHead(old_head.in_features, num_classes, dropout=dropout)
    if loaded is not None and old_head.out_features == num_classes:
        # Same class count as the pretrained classifier: keep it rather than throw it away.
        with torch.no_grad():
            model.fc.weight.copy_(old_head.weight)
            model.fc.bias.copy_(old_head.bias)
    return model, loaded


def _create_timm(
    name: str, num_classes: int, weights: str, dropout: float, img_size: int | None = None
) -> tuple[nn.Module, PretrainedWeights | None]:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ValueError(f"unknown timm model {name!r}" + (f"; did you mean {close}?" if close else ""))
    path = None
    published = None
    if weights in ("imagenet", "auto"):
        try:
            published = timm_pretrained(name)
        except ValueError as err:
            if weights == "imagenet":
                raise WeightsUnavailableError(f"{err}; use --weights PATH or --weights none") from err
            logger.warning("weights=auto: %s; timm:%s starts from RANDOM INITIALISATION", err, name)
        else:
            path = locate_pretrained(published, weights)
    cfg = timm.models.get_pretrained_cfg(name)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": dropout, **_timm_size_kwargs(cfg, img_size)}
    if path is not None:
        try:
            model = _timm_model(timm.create_model, name, cfg, pretrained=True,
                                pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except (RuntimeError, OSError, ValueError, KeyError) as err:
            raise ValueError(f"cached ImageNet weights {path} cannot be loaded into timm:{name}: {err}") from err
        logger.info("loaded ImageNet weights for timm:%s from %s", name, path)
        return model, published
    return _timm_model(timm.create_model, name, cfg, pretrained=False, **kwargs), None


def _timm_size_kwargs(cfg: Any, img_size: int | None) -> dict[str, Any]:
    """``{"img_size": img_size}`` for a timm model built for one fixed input size (a ViT) of another size, else ``{}``
    (``cfg``: the model's timm pretrained config, or None)."""
    if img_size is None or cfg is None or not cfg.fixed_input_size or tuple(cfg.input_size[1:]) == (img_size,) * 2:
        return {}
    return {"img_size": img_size}


def _timm_model(create_model: Any, name: str, cfg: Any, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` (passed as ``create_model``); a fixed-size model that cannot take ``img_size`` is one
    error saying what to set (``cfg``: the model's timm pretrained config)."""
    try:
        return create_model(name, **kwargs)
    except TypeError as err:
        if "img_size" not in kwargs:
            raise
        size = cfg.input_size
        raise ValueError(f"model.name: timm:{name} takes {size[1]}x{size[2]} inputs and cannot be built for "
                         f"{kwargs['img_size']} px ({err}); set --img-size {size[1]} (data.img_size)") from err


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
