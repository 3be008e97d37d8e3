"""Reading weight files (.pth/.pt/.safetensors, torchvision/timm layouts, detkit checkpoints) into a model.

The backbone is loaded strictly; a head whose class count differs is skipped with a warning saying so.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkit.models.stages import head_prefixes, unwrap_model

logger = logging.getLogger(__name__)

#: the ``format`` entry of a detkit checkpoint (``detkit.models.checkpoint``)
CHECKPOINT_FORMAT = "detkit"

# Nested containers a state dict is commonly found under, in the order they are tried.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
# Prefixes added by DDP / DataParallel ("module."), Lightning-style wrappers ("model.") and torch.compile.
_PREFIXES = ("module.", "model.", "_orig_mod.")
# Buffers older checkpoints may lack; their absence never makes a load fail.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read the tensors of a weights file and what a detkit checkpoint says about them.

    Args:
        path: a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin``/``.ckpt`` torch file holding a state dict,
            a dict nesting one (``state_dict``, ``model_state_dict``, ``model``, ...), a whole pickled module,
            or a detkit checkpoint (``{"format": "detkit", "model": ...}``).

    Returns:
        ``(state_dict, info)``: ``{name: Tensor}`` as stored (prefixes not yet stripped), and for detkit
        checkpoints ``info`` holds ``model_meta``, ``normalization`` and ``classes`` (else it is empty).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be read or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    obj = load_file(path)
    info: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        info = {key: obj[key] for key in ("model_meta", "normalization", "classes") if key in obj}
        obj = obj["model"]
    for _ in range(4):  # unwrap a few levels of nesting at most
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping) or any(isinstance(v, Tensor) for v in obj.values()):
            break
        nested = next((key for key in _NESTED_KEYS if isinstance(obj.get(key), (Mapping, nn.Module))), None)
        if nested is None:
            break
        obj = obj[nested]
    if not isinstance(obj, Mapping):
        raise ValueError(f"weights file {path} holds a {type(obj).__name__}, expected a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise ValueError(f"weights file {path} holds no tensors; top-level keys: {sorted(map(str, obj))[:20]}")
    return state, info


def strip_prefixes(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Remove ``module.`` / ``model.`` / ``_orig_mod.`` prefixes shared by every key of ``state``.

    A prefix is only removed when doing so does not lower the number of keys matching ``model_keys`` (so a
    model whose own top-level child is called ``model`` keeps its keys).
    """
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                stripped = {k[len(prefix):]: v for k, v in state.items()}
                if len(model_keys & set(stripped)) >= len(model_keys & set(state)):
                    state, changed = stripped, True
    return state


def load_weights_file(
    model: nn.Module, path: str | os.PathLike, *, strict_head: bool = False, strict_backbone: bool = True
) -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` in place.

    Keys are matched after stripping wrapper prefixes. Head tensors (the ``head`` stage of ``param_stages``)
    whose shapes differ, e.g. a 1000-class ImageNet ``fc`` into a 5-class model, are skipped with a warning
    naming both class counts. Everything else must match.

    Args:
        model: the network to fill (wrappers such as DDP are looked through).
        path: the weights file (see ``read_state_dict`` for formats and layouts).
        strict_head: raise instead of skipping a head whose shape differs.
        strict_backbone: raise when a non-head key is missing from the file, unexpected in it, or has another
            shape (an unrelated file must not load "nothing" silently). With False these are only reported.

    Returns:
        A report: ``loaded`` (keys copied into the model), ``skipped`` (``[(key, reason)]``), ``missing``
        (model keys absent from the file), ``unexpected`` (file keys the model lacks), ``head_loaded``
        (bool), ``info`` (detkit checkpoint metadata, see ``read_state_dict``) and ``path``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on a backbone mismatch (when ``strict_backbone``) or head mismatch (when ``strict_head``);
            the message lists the offending keys.
    """
    model = unwrap_model(model)
    state, info = read_state_dict(path)
    target = model.state_dict()
    state = strip_prefixes(state, set(target))
    match = _match_keys(model, state, target)
    if match.skipped:
        message = (
            f"not loading the head from {path}: it has {_class_count(state, match.skipped)} classes and the model "
            f"has {_class_count(target, match.skipped)} ({', '.join(k for k, _ in match.skipped)}); the head keeps "
            f"its fresh initialisation"
        )
        if strict_head:
            raise ValueError(message)
        logger.warning(message)
    problems = match.backbone_problems()
    if problems:
        message = f"weights file {path} does not fit {type(model).__name__}: " + "; ".join(problems)
        if strict_backbone:
            raise ValueError(message + " (is this file for another architecture?)")
        logger.warning(message)

    model.load_state_dict(match.loadable, strict=False)
    head_keys = [k for k in target if match.is_head(k)]
    report = {
        "path": str(path),
        "loaded": sorted(match.loadable),
        "skipped": match.skipped,
        "missing": match.missing,
        "unexpected": match.unexpected,
        "head_loaded": bool(head_keys) and all(k in match.loadable for k in head_keys),
        "info": info,
    }
    logger.info("loaded %d/%d tensors from %s (head %s)", len(match.loadable), len(target), path,
                "loaded" if report["head_loaded"] else "not loaded")
    return report


@dataclass
class _KeyMatch:
    """How a file's tensors line up with a model's state: what loads, what is skipped, what does not fit."""

    heads: tuple[str, ...]
    loadable: dict[str, Tensor] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # head tensors of another shape
    bad_shapes: list[str] = field(default_factory=list)  # non-head tensors of another shape
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def is_head(self, key: str) -> bool:
        return key.startswith(self.heads) if self.heads else False

    def backbone_problems(self) -> list[str]:
        """One phrase per kind of mismatch outside the head (optional buffers never count)."""
        missing = [k for k in self.missing if not self.is_head(k) and not k.endswith(_OPTIONAL_SUFFIXES)]
        unexpected = [k for k in self.unexpected if not self.is_head(k) and not k.endswith(_OPTIONAL_SUFFIXES)]
        problems = []
        if self.bad_shapes:
            problems.append(f"{len(self.bad_shapes)} shape mismatches: {'; '.join(self.bad_shapes[:5])}")
        if missing:
            problems.append(f"{len(missing)} model keys missing from the file, e.g. {missing[:5]}")
        if unexpected:
            problems.append(f"{len(unexpected)} file keys the model lacks, e.g. {unexpected[:5]}")
        return problems


def _match_keys(model: nn.Module, state: dict[str, Tensor], target: dict[str, Tensor]) -> _KeyMatch:
    try:
        heads = head_prefixes(model)
    except ValueError:
        heads = ()  # no recognisable head: every key is held to the backbone's rules
    match = _KeyMatch(heads)
    for key, value in state.items():
        if key not in target:
            continue
        if value.shape == target[key].shape:
            match.loadable[key] = value
        elif match.is_head(key):
            match.skipped.append((key, f"shape {tuple(value.shape)} in file, {tuple(target[key].shape)} in model"))
        else:
            match.bad_shapes.append(f"{key}: {tuple(value.shape)} in file vs {tuple(target[key].shape)} in model")
    match.missing = [k for k in target if k not in state]
    match.unexpected = [k for k in state if k not in target]
    return match


def _numpy_globals() -> list[Any]:
    """The numpy reconstructors a weights-only load may use: arrays, scalars and numeric dtypes (no code runs)."""
    numeric = [np.dtype(t) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                     "float16", "float32", "float64", "complex64", "complex128")]
    return [np.ndarray, np.dtype, np.ndarray((0,)).__reduce__()[0], np.float64(0).__reduce__()[0],
            *{type(d) for d in numeric}]


_NUMPY_GLOBALS = _numpy_globals()


def load_file(path: str | os.PathLike, what: str = "weights file") -> Any:
    """The object in a torch or safetensors file, read as tensors and plain values only (never code).

    torch files go through ``torch.load(weights_only=True)`` with numpy arrays and scalars allowed (checkpoints of
    other trainers often carry numpy RNG states); any other Python object is refused with a message saying how
    to re-save a trusted file. ``what`` names the file in messages (``weights file``, ``checkpoint``).

    Raises:
        ValueError: the file cannot be read, or holds objects beyond tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{what} {path} cannot be read as safetensors: {err}") from err
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # "Unsupported global" / "GLOBAL x whose module y is blocked": the file holds Python objects beyond
        # tensors; detkit never unpickles them.
        named = re.findall(r"GLOBAL ([\w.]+)", str(err))
        if not named and "Unsupported global" not in str(err):
            raise ValueError(f"{what} {path} cannot be read: not a torch file ({_reason(err)})") from err
        advice = ("detkit's own checkpoints hold tensors and plain values only, so this one was changed or written by "
                  "another program" if what == "checkpoint" else
                  f"if you trust the file, re-save its weights: python -c \"import torch; "
                  f"c = torch.load('{path}', weights_only=False); torch.save(c.get('state_dict', c), 'clean.pt')\" "
                  f"and pass --weights clean.pt")
        raise ValueError(f"{what} {path} holds Python objects beyond tensors ({named[0] if named else 'a global'}); "
                         f"detkit loads tensors only, since unpickling such a file can run code; {advice}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{what} {path} cannot be read: {_reason(err)}") from err


def _reason(err: Exception) -> str:
    # torch's unpickling errors are many lines of advice; keep the line that says what went wrong.
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    specific = [line for line in lines if "Unsupported" in line or "invalid load key" in line]
    return (specific or lines or [type(err).__name__])[0]


def _class_count(state: Mapping[str, Tensor], skipped: list[tuple[str, str]]) -> int | str:
    # The class count is the leading dimension of the head's last weight (its output layer).
    weights = [k for k, _ in skipped if k.endswith("weight") and k in state]
    return int(state[weights[-1]].shape[0]) if weights else "?"
