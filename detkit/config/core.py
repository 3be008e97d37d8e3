"""Generic config machinery: dict <-> dataclass with type checks, dotted overrides, YAML load and save.

Works on any config dataclass; ``ExperimentConfig`` (``detkit.config.sections``) is the default root.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from detkit.config.sections import ExperimentConfig
from detkit.errors import ConfigError
from detkit.io import atomic_write_text

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "flatten_keys",
    "load_config",
    "parse_grid",
    "parse_override",
    "plain",
    "resolve_key",
    "save_config",
    "type_name",
]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists, so it dumps as clean YAML)."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"cfg: expected a dataclass instance, got {type(cfg).__name__}")
    return plain(dataclasses.asdict(cfg))


def plain(value: Any) -> Any:
    """``value`` with tuples as lists and keys as strings, recursively (what YAML and JSON write cleanly)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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
            raise ConfigError(f"{key}: null is not allowed, expected {type_name(annotation)}")
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {type_name(annotation)}, got {value!r}")
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
                    raise ConfigError(f"{key}: expected {len(args)} values ({type_name(annotation)}), got {value!r}")
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
    raise ConfigError(f"{key}: expected {type_name(annotation)}, got {type(value).__name__} {value!r}")


def type_name(annotation: Any) -> str:
    """A field annotation as users read it (``int | null``, ``list[float]``)."""
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

    Keys may also be unique leaf names (``lr`` for ``optim.lr``); each value is type-checked as it is applied,
    so an invalid one is reported even when a later override (a CLI flag) sets the same key.
    """
    data = config_to_dict(cfg)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        parts = (key if _has_path(data, key) else resolve_key(key)).split(".")
        _coerce(value, _annotation(parts), ".".join(parts))
        node = data
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return config_from_dict(data)


def _annotation(parts: list[str], cls: type = ExperimentConfig) -> Any:
    """The declared type of the dotted key ``parts`` (a leaf or a whole section)."""
    for part in parts:
        cls = typing.get_type_hints(cls)[part]
    return cls


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


def save_config(cfg: ExperimentConfig, path: str | Path, header: str | None = None) -> Path:
    """Write the resolved config as YAML (atomically) and return its path; ``header`` lines become comments."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return atomic_write_text(path, text)
