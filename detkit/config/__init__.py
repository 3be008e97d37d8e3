"""Experiment configuration: plain dataclass sections, YAML recipes, dotted overrides and the key reference.

Importing it loads no torch and no detkit model or engine code (``tests/test_architecture.py`` checks this).
"""

from detkit.config.augment import ClassificationAugment, DetectionAugment
from detkit.config.core import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    flatten_keys,
    load_config,
    parse_grid,
    parse_override,
    resolve_key,
    save_config,
)
from detkit.config.reference import (
    config_reference,
    config_reference_markdown,
    field_comments,
)
from detkit.config.sections import (
    FIRST_LEVELS,
    RESIZE_MODES,
    TASKS,
    DataConfig,
    DetectConfig,
    ExperimentConfig,
    FreezeConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)
from detkit.errors import ConfigError

__all__ = [
    "FIRST_LEVELS",
    "RESIZE_MODES",
    "TASKS",
    "ClassificationAugment",
    "ConfigError",
    "DataConfig",
    "DetectConfig",
    "DetectionAugment",
    "ExperimentConfig",
    "FreezeConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_reference",
    "config_reference_markdown",
    "config_to_dict",
    "field_comments",
    "flatten_keys",
    "load_config",
    "parse_grid",
    "parse_override",
    "resolve_key",
    "save_config",
]
