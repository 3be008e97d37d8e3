"""Experiment configuration: the top-level ``ExperimentConfig`` and its YAML load, dotted overrides and save.

Each section is a dataclass living next to the code it configures; this module nests them and does the generic work.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from detkit.data.transforms import ClassificationAugment
from detkit.engine.detection_task import DetectConfig
from detkit.engine.freeze import FreezeConfig
from detkit.engine.optim import OptimConfig
from detkit.engine.schedule import ScheduleConfig

__all__ = [
    "TASKS",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_reference",
    "config_to_dict",
    "field_comments",
    "flatten_keys",
    "load_config",
    "parse_grid",
    "parse_override",
    "resolve_key",
    "save_config",
]

TASKS = ("classify", "detect")


class ConfigError(ValueError):
    """A config file, key or value that cannot be mapped onto ``ExperimentConfig``."""


@dataclass
class DataConfig:
    root: str = "data/shapes"  # dataset root holding <train_split>/<class>/* and <val_split>/<class>/* (ImageFolder layout)
    train_split: str = "train"  # sub-folder of root used for training
    val_split: str | None = "val"  # sub-folder of root used for validation (null: no validation)
    img_size: int | None = None  # side of the square network input in pixels, train crop and eval centre crop (null: the pretrained weights' input size, else 224)
    batch_size: int = 32  # images per optimiser micro-batch and per process (DDP: per rank)
    eval_batch_size: int | None = None  # images per validation batch (null: 2 x batch_size)
    workers: int = 2  # DataLoader worker processes (0: load in the main process)
    pin_memory: bool = True  # page-locked host memory for faster copies (only used with a CUDA device)
    persistent_workers: bool = False  # keep DataLoader workers alive between epochs (needs workers > 0)
    prefetch_factor: int = 2  # batches loaded ahead by each worker (needs workers > 0)
    drop_last: bool = True  # drop the last incomplete training batch (avoids a BatchNorm batch of one)
    mean: list[float] | None = None  # per-channel normalisation mean in [0, 1] units; used only without pretrained weights (null: computed from the train set)
    std: list[float] | None = None  # per-channel normalisation std in [0, 1] units; same rule as mean
    stats_max_images: int = 500  # train images sampled to compute mean/std when they are needed
    scan: bool = True  # scan every image upfront and skip unreadable files (reported in the run summary)
    scan_workers: int | None = None  # threads for the upfront scan (null: CPU count)
    augment: ClassificationAugment = field(default_factory=ClassificationAugment)  # train-time augmentation and eval resize


@dataclass
class ModelConfig:
    name: str = "resnet18"  # architecture: resnet18/34/50/101/152, wide_resnet50_2/101_2, resnext50_32x4d/101_32x8d/101_64x4d or timm:NAME
    weights: str = "auto"  # imagenet (must be available), auto (imagenet if cached, else random init), none, or a weights file path
    dropout: float = 0.0  # dropout probability before the new classification head


@dataclass
class TrainConfig:
    epochs: int = 10  # number of training epochs
    device: str = "auto"  # auto (first CUDA device if any, else CPU), cpu, cuda or cuda:N
    amp: bool = False  # automatic mixed precision (bfloat16 autocast on CPU; float16 + GradScaler or bfloat16 on CUDA)
    amp_dtype: str = "auto"  # autocast dtype: auto (bfloat16 on CPU, float16 on CUDA), float16 or bfloat16
    channels_last: bool = False  # channels-last memory format for the model and its inputs
    grad_clip: float | None = None  # clip the global gradient L2 norm to this value (null: no clipping)
    accumulate: int = 1  # micro-batches whose gradients are summed before each optimiser step
    label_smoothing: float = 0.0  # label smoothing of the classification cross-entropy loss
    seed: int = 0  # seed for torch, numpy, random, augmentation and DataLoader order
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) and deterministic cuDNN
    output: str = "runs/exp"  # run directory: checkpoints, metrics, TensorBoard events, config.yaml
    resume: str | None = None  # checkpoint to continue from (a last.pt path, or auto = <output>/last.pt)
    eval_every: int = 1  # validate every N epochs (the last epoch is always validated)
    progress: bool = True  # tqdm progress bars (also off when stderr is not a terminal)
    tensorboard: bool = True  # write TensorBoard events to <output>/tensorboard
    log_every: int = 0  # also log train loss every N optimiser steps (0: once per epoch)


@dataclass
class ExperimentConfig:
    task: str = "classify"  # classify or detect (detection arrives with the detection issue)
    data: DataConfig = field(default_factory=DataConfig)  # dataset, loaders and augmentation
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture and initial weights
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser and per-group learning rates
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # learning-rate schedule, stepped per optimiser step
    freeze: FreezeConfig = field(default_factory=FreezeConfig)  # backbone freezing and unfreezing
    train: TrainConfig = field(default_factory=TrainConfig)  # loop, device, precision, seeds and outputs
    detect: DetectConfig = field(default_factory=DetectConfig)  # detection only (task detect): thresholds, eval geometry, loss, box augmentation

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {self.task!r}")


# ----------------------------------------------------------------------------- dict <-> dataclass


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists, so it dumps as clean YAML)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"cfg: expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_from_dict(data: dict[str, Any] | None, cls: type = ExperimentConfig, *, prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a nested dict, checking keys and value types.

    Missing keys keep their defaults. An unknown key raises ``ConfigError`` naming the closest
    valid key; a value of the wrong type raises ``ConfigError`` naming the key, value and type.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(prefix + str(key)))
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from exc


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation and convert YAML lists to tuples where declared."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return config_from_dict(value, annotation, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed, expected {_type_name(annotation)}")
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple, Sequence) or annotation in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
                if len(value) != len(args):
                    raise ConfigError(f"{key}: expected {len(args)} values ({_type_name(annotation)}), got {value!r}")
                items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
            else:
                item_type = args[0] if args else Any
                items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if (origin is tuple or annotation is tuple) else items
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            value_type = args[1] if len(args) == 2 else Any
            return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    else:
        return value
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r}")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "null")


# ----------------------------------------------------------------------------- keys and overrides


def flatten_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of config dataclass ``cls`` in declaration order (``optim.lr``, ...)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(flatten_keys(hints[f.name], prefix + f.name + "."))
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key_message(key: str) -> str:
    candidates = flatten_keys()
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in candidates}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)]
    hint = f"; did you mean {close[0]!r}?" if close else "; see configs/README.md for every key"
    return f"unknown config key {key!r}{hint}"


def resolve_key(name: str) -> str:
    """Full dotted key for ``name``: a dotted key itself, or a leaf name that matches one key only.

    ``resolve_key("lr") == "optim.lr"``; an ambiguous or unknown name raises ``ConfigError``.
    """
    keys = flatten_keys()
    if name in keys:
        return name
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"config key {name!r} is ambiguous: use one of {', '.join(matches)}")
    raise ConfigError(_unknown_key_message(name))


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"optim.lr=0.01"`` into ``("optim.lr", 0.01)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value {raw!r}: {exc}") from exc
    return key, value


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["lr=0.01,0.001", "batch_size=32,64"]`` -> ``{"lr": [0.01, 0.001], "batch_size": [32, 64]}``.

    Values are split on commas and each is parsed as YAML; keys are kept as given (see :func:`resolve_key`).
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"grid {item!r}: expected KEY=V1,V2,..., e.g. lr=0.01,0.001")
        key, raw = (part.strip() for part in item.split("=", 1))
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        if not parts:
            raise ConfigError(f"grid {item!r}: expected KEY=V1,V2,... with at least one value")
        if key in grid:
            raise ConfigError(f"grid: key {key!r} given twice")
        grid[key] = [parse_override(f"{key}={p}")[1] for p in parts]
    return grid


def apply_overrides(cfg: ExperimentConfig, overrides: Iterable[str | tuple[str, Any]]) -> ExperimentConfig:
    """New config with dotted overrides applied (``"train.epochs=3"`` or ``("train.epochs", 3)``).

    Keys may also be unique leaf names (``lr`` for ``optim.lr``); values are type-checked.
    """
    data = config_to_dict(cfg)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        parts = (key if _has_path(data, key) else resolve_key(key)).split(".")
        node = data
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return config_from_dict(data)


def _has_path(data: dict[str, Any], key: str) -> bool:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def load_config(path: str | Path | None = None, overrides: Iterable[str | tuple[str, Any]] = ()) -> ExperimentConfig:
    """Read a YAML recipe (or start from the defaults when ``path`` is None) and apply overrides."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: invalid YAML: {exc}") from exc
    return apply_overrides(config_from_dict(data), overrides)


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    from detkit.engine.checkpoint import atomic_write_text

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    return atomic_write_text(text, path)


# ----------------------------------------------------------------------------- documentation


def field_comments(cls: type) -> dict[str, str]:
    """The one-line comment of each field of dataclass ``cls`` (trailing, or the line above it)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    class_def = ast.parse(source).body[0]
    out = {}
    for node in class_def.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = comments.get(node.end_lineno) or comments.get(node.lineno - 1, "")
            out[node.target.id] = text
    return out


def config_reference(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows ``(dotted key, type, default, comment)`` for every leaf key, for configs/README.md."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    defaults = cls()
    rows = []
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            rows.extend(config_reference(annotation, prefix + f.name + "."))
            continue
        default = _plain(getattr(defaults, f.name))
        rows.append((prefix + f.name, _type_name(annotation), yaml.safe_dump(default, default_flow_style=True).strip()
                     .removesuffix("...").strip(), comments.get(f.name, "")))
    return rows


def config_reference_markdown() -> str:
    """Markdown table of every config key (what ``configs/README.md`` embeds between its markers)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, type_name, default, comment in config_reference():
        cells = [f"`{key}`", type_name.replace("|", "\\|"), f"`{default}`", comment.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
