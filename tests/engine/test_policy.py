"""Tests for detkit.engine.policy: the policy follows the start that actually happened; explicit keys always win."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from detkit.config import ExperimentConfig, apply_overrides, load_config
from detkit.config.augment import CLASSIFICATION_PRESETS, DETECTION_PRESETS
from detkit.engine.experiment import build_experiment
from detkit.engine.optim import build_optimizer, concrete_optim
from detkit.engine.policy import choose_policy, fill_from, resolve_policy, scratch_augment_preset
from detkit.errors import ConfigError
from detkit.models.classifier import create_classifier
from image_folders import make_image_folder


pytestmark = pytest.mark.usefixtures("single_thread")


def test_policy_follows_what_was_loaded_not_what_was_asked():
    assert choose_policy("auto", pretrained=True, weights="imagenet")[0] == "finetune"
    assert choose_policy("auto", pretrained=True, weights="/w/model.pt") == ("finetune",
                                                                             "pretrained weights were loaded: a weights file")
    name, reason = choose_policy("auto", pretrained=False, weights="auto")  # auto fell back to random init
    assert name == "scratch" and "no pretrained weights available" in reason
    assert choose_policy("scratch", pretrained=True, weights="imagenet")[0] == "scratch"  # explicit key wins
    with pytest.raises(ConfigError, match="train.policy"):
        choose_policy("fine-tune", pretrained=True, weights="imagenet")


def test_scratch_and_finetune_fill_the_null_keys_differently():
    cfg = ExperimentConfig()
    scratch, policy = resolve_policy(cfg, pretrained=False, img_size=32)
    assert (scratch.optim.name, scratch.optim.head_lr_mult, scratch.optim.weight_decay) == ("adamw", 1.0, 0.05)
    assert scratch.optim.lr == pytest.approx(2e-3)
    assert scratch.data.augment.preset == "light" and scratch.data.augment.hflip_p == 0.0
    assert policy.name == "scratch" and policy.filled["optim.name"] == "adamw" and scratch.train.policy == "scratch"
    finetune, policy = resolve_policy(cfg, pretrained=True, img_size=224)
    assert (finetune.optim.name, finetune.optim.lr, finetune.optim.head_lr_mult) == ("sgd", 0.01, 10.0)
    assert finetune.optim.weight_decay == pytest.approx(1e-4)
    assert finetune.data.augment == dataclasses.replace(finetune.data.augment, **CLASSIFICATION_PRESETS["standard"])
    assert "fine-tuning (pretrained weights were loaded" in policy.describe()


def test_explicit_keys_win_over_the_policy():
    cfg = apply_overrides(ExperimentConfig(), ["optim.name=sgd", "optim.head_lr_mult=3", "data.augment.hflip_p=0.5",
                                               "schedule.name=onecycle"])
    out, policy = resolve_policy(cfg, pretrained=False, img_size=32)
    assert (out.optim.name, out.optim.head_lr_mult, out.schedule.name) == ("sgd", 3.0, "onecycle")
    assert out.optim.lr == pytest.approx(0.05)  # null: the scratch lr for the optimiser that was asked for
    assert out.data.augment.hflip_p == 0.5 and out.data.augment.preset == "light"  # the rest of light
    assert out.data.augment.affine_p == CLASSIFICATION_PRESETS["light"]["affine_p"]
    assert "optim.name" not in policy.filled and "optim.head_lr_mult" not in policy.filled
    fixed = apply_overrides(ExperimentConfig(), ["data.augment.preset=none", "optim.lr=0.5"])
    out, policy = resolve_policy(fixed, pretrained=True, img_size=224)
    assert out.optim.lr == 0.5 and out.data.augment.scale == (1.0, 1.0) and out.data.augment.hflip_p == 0.0
    assert "data.augment.preset" not in policy.filled


def test_detection_fills_its_own_augment_section():
    cfg = apply_overrides(ExperimentConfig(), ["task=detect"])
    out, policy = resolve_policy(cfg, pretrained=False, img_size=128)
    assert out.detect.augment.preset == "light" and policy.filled["detect.augment.preset"] == "light"
    assert out.detect.augment.crop_p == DETECTION_PRESETS["light"]["crop_p"] == 0.0
    assert out.data.augment.preset == "auto"  # the classification section is not this task's


def test_scratch_preset_grows_with_image_size_and_epochs():
    assert scratch_augment_preset(32, 10) == "light" and scratch_augment_preset(224, 10) == "light"
    assert scratch_augment_preset(224, 30) == "standard" and scratch_augment_preset(64, 200) == "light"
    assert scratch_augment_preset(224, 100) == "strong"


def test_unresolved_optim_config_builds_with_the_finetuning_values():
    model = torch.nn.Sequential()
    model.add_module("fc", torch.nn.Linear(2, 2))
    cfg = concrete_optim(ExperimentConfig().optim)
    assert (cfg.name, cfg.lr, cfg.head_lr_mult, cfg.weight_decay) == ("sgd", 0.01, 10.0, 1e-4)
    assert isinstance(build_optimizer(model, ExperimentConfig().optim), torch.optim.SGD)
    with pytest.raises(ValueError, match="LR finder"):
        build_optimizer(model, apply_overrides(ExperimentConfig(), ["optim.lr=auto"]).optim)
    with pytest.raises(ConfigError, match="optim.lr"):
        apply_overrides(ExperimentConfig(), ["optim.lr=fast"])


def test_resume_keeps_the_values_the_run_started_with():
    saved, _ = resolve_policy(apply_overrides(ExperimentConfig(), ["optim.lr=0.0031"]), pretrained=False,
                              img_size=32)
    resumed = fill_from(apply_overrides(ExperimentConfig(), ["optim.lr=auto", "optim.head_lr_mult=2"]), saved)
    assert resumed.optim.lr == 0.0031 and resumed.optim.name == "adamw"  # auto and null: from the saved run
    assert resumed.optim.head_lr_mult == 2.0  # set now: kept
    assert resumed.data.augment == saved.data.augment


def _tiny(tmp_path, *overrides):
    root = make_image_folder(tmp_path / "data")
    base = [f"data.root={root}", "data.img_size=32", "data.batch_size=4", "data.workers=0", "data.scan_workers=1",
            "model.name=timm:test_resnet", "train.epochs=1", "train.device=cpu", f"train.output={tmp_path / 'run'}",
            "train.progress=false", "train.tensorboard=false"]
    return load_config(None, [*base, *overrides])


@pytest.mark.parametrize(("weights", "expected"), [("none", "scratch"), ("file", "finetune")])
def test_experiment_resolves_the_policy_per_start(tmp_path, weights, expected, caplog):
    if weights == "file":  # a local weights file is a pretrained start
        path = tmp_path / "w.pt"
        torch.save(create_classifier("timm:test_resnet", 3, weights="none").state_dict(), path)
        weights = str(path)
    caplog.set_level("INFO", logger="detkit")
    experiment = build_experiment(_tiny(tmp_path, f"model.weights={weights}"))
    assert experiment.policy.name == expected and experiment.summary["policy"] == expected
    assert experiment.cfg.optim.head_lr_mult == (10.0 if expected == "finetune" else 1.0)
    lrs = {g["name"]: g["initial_lr"] for g in experiment.trainer.optimizer.param_groups}
    assert lrs["head"] == pytest.approx(lrs["stem"] * experiment.cfg.optim.head_lr_mult)
    assert sum("training policy" in r.message for r in caplog.records) == 1  # logged once, in words
    assert any(r.message.startswith("train augmentation (data.augment.preset:") for r in caplog.records)
