"""Tests for detkit.config: YAML recipes, dotted overrides, type checks, nearest-key errors and the key reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from detkit.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_reference,
    config_reference_markdown,
    config_to_dict,
    field_comments,
    flatten_keys,
    load_config,
    parse_grid,
    parse_override,
    resolve_key,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = ExperimentConfig()
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg
    # tuples are written as plain YAML lists, not python-specific tags
    assert "!!python" not in path.read_text()


def test_yaml_values_map_onto_dataclasses_and_tuples(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  img_size: 64\n  augment:\n    scale: [0.5, 1]\noptim:\n  lr: 1\n  group_lrs: {head: 0.1}\n")
    cfg = load_config(path)
    assert cfg.data.img_size == 64
    assert cfg.data.augment.scale == (0.5, 1.0) and isinstance(cfg.data.augment.scale, tuple)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # an int where a float is declared
    assert cfg.optim.group_lrs == {"head": 0.1}
    assert cfg.model == ExperimentConfig().model  # untouched sections keep their defaults


def test_overrides_are_parsed_as_yaml_and_type_checked():
    cfg = apply_overrides(ExperimentConfig(), ["optim.lr=0.02", "train.epochs=3", "data.mean=[0.5,0.5,0.5]",
                                               "train.grad_clip=null", "train.amp=true", ("model.name", "resnet34")])
    assert (cfg.optim.lr, cfg.train.epochs, cfg.data.mean) == (0.02, 3, [0.5, 0.5, 0.5])
    assert cfg.train.grad_clip is None and cfg.train.amp is True and cfg.model.name == "resnet34"
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got str 'three'"):
        apply_overrides(ExperimentConfig(), ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"train\.amp: expected bool"):
        apply_overrides(ExperimentConfig(), ["train.amp=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("optim.lr")


def test_unknown_key_suggests_the_nearest_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'; did you mean 'optim\.lr'\?"):
        apply_overrides(ExperimentConfig(), ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'; did you mean 'train\.epochs'\?"):
        config_from_dict({"train": {"epoch": 3}})
    path = tmp_path / "typo.yaml"
    path.write_text("data:\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"did you mean 'data\.batch_size'"):
        load_config(path)


def test_leaf_names_resolve_when_unique():
    assert resolve_key("lr") == "optim.lr"
    assert resolve_key("batch_size") == "data.batch_size"
    assert resolve_key("optim.lr") == "optim.lr"
    with pytest.raises(ConfigError, match="ambiguous"):
        resolve_key("name")  # model.name, optim.name, schedule.name
    assert apply_overrides(ExperimentConfig(), ["lr=0.5"]).optim.lr == 0.5


def test_bad_task_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="task: expected one of classify, detect, got 'segment'"):
        config_from_dict({"task": "segment"})
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="data: expected a mapping"):
        config_from_dict({"data": [1, 2]})


def test_parse_grid_splits_values_and_parses_each():
    assert parse_grid(["lr=0.01,0.001", "optim.name=sgd,adamw"]) == {"lr": [0.01, 0.001], "optim.name": ["sgd", "adamw"]}
    with pytest.raises(ConfigError):
        parse_grid(["lr="])


def test_every_field_has_a_default_and_a_comment():
    rows = config_reference()
    assert [r[0] for r in rows] == flatten_keys()
    missing = [key for key, _, _, comment in rows if not comment]
    assert not missing, f"config fields without a one-line comment: {missing}"
    assert field_comments(ExperimentConfig)["train"].startswith("loop, device")


def test_configs_readme_documents_every_key():
    readme = (REPO / "configs" / "README.md").read_text()
    begin, end = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
    assert begin in readme and end in readme
    table = readme.split(begin, 1)[1].split(end, 1)[0].strip() + "\n"
    assert table == config_reference_markdown(), (
        "configs/README.md is out of date; regenerate the table with: .venv/bin/python -c "
        "\"import detkit.config as c; print(c.config_reference_markdown())\"")
    documented = set(re.findall(r"^\| `([\w.]+)` \|", table, flags=re.M))
    assert documented == set(flatten_keys())


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(recipe):
    cfg = load_config(recipe)
    raw = yaml.safe_load(recipe.read_text())
    assert cfg.model.name == raw["model"]["name"]
    assert config_to_dict(cfg)["data"]["root"] == raw["data"]["root"]
