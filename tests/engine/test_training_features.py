"""Tests for the trainer's training features: every group's lr logged, model EMA (update, evaluation; its exact resume
is in test_trainer.py), early stopping, class weights and balanced sampling wired from the config, K-fold runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from detkit.config import load_config
from detkit.engine.checkpoint import load_checkpoint
from detkit.engine.ema import ModelEma
from detkit.engine.experiment import build_experiment, run_experiment
from detkit.engine.kfold import format_kfold_table, run_kfold
from detkit.engine.loaders import build_loader
from detkit.data.sampling import BalancedSampler
from image_folders import make_image_folder


def tiny(root, output, *overrides):
    base = [f"data.root={root}", "data.img_size=32", "data.batch_size=4", "data.workers=0", "data.scan_workers=1",
            "data.stats_max_images=30", "model.name=timm:test_resnet", "model.weights=none", "train.epochs=2",
            "train.device=cpu", f"train.output={output}", "train.progress=false", "train.tensorboard=false",
            "optim.lr=0.05", "schedule.warmup_epochs=0.5"]
    return load_config(None, [*base, *overrides])


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("features") / "data")


def test_every_groups_lr_is_logged_in_console_metrics_and_tensorboard(root, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    caplog.set_level("INFO", logger="detkit")
    out = tmp_path / "run"
    run_experiment(tiny(root, out, "train.epochs=1", "optim.head_lr_mult=10", "train.tensorboard=true"))
    row = json.loads((out / "metrics.json").read_text())["epochs"][0]
    stages = ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert [k for k in row if k.startswith("lr")] == [f"lr/{s}" for s in stages]  # no single "lr" column
    assert row["lr/head"] == pytest.approx(10 * row["lr/stem"])
    epoch_line = next(r.message for r in caplog.records if r.message.startswith("epoch 1/1:"))
    assert f"lr stem..stage4 {row['lr/stem']:.2e}, head {row['lr/head']:.2e}" in epoch_line
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {f"lr/{s}" for s in stages} <= set(events.Tags()["scalars"])
    assert events.Scalars("lr/head")[0].value == pytest.approx(row["lr/head"], rel=1e-6)


def test_ema_update_follows_the_warmed_up_decay():
    model = nn.Linear(2, 1, bias=False)
    nn.init.constant_(model.weight, 0.0)
    ema = ModelEma(model, decay=0.9, warmup=True)
    assert ema.decay_at(1) == 0.0 and ema.decay_at(8) == pytest.approx(1 - 8 ** (-2 / 3))
    assert ema.decay_at(10_000) == 0.9
    expected = 0.0
    for step in range(1, 6):
        nn.init.constant_(model.weight, float(step))
        ema.update(model)
        d = ema.decay_at(step)
        expected = d * expected + (1 - d) * step
        torch.testing.assert_close(ema.module.weight, torch.full((1, 2), expected))
    assert not ema.module.weight.requires_grad and ema.updates == 5
    plain = ModelEma(model, decay=0.5, warmup=False)
    nn.init.constant_(model.weight, 8.0)
    plain.update(model)
    torch.testing.assert_close(plain.module.weight, torch.full((1, 2), 6.5))  # 0.5 * 5 + 0.5 * 8


def test_ema_model_is_what_evaluation_sees(root, tmp_path):
    experiment = build_experiment(tiny(root, tmp_path / "run", "train.ema=true", "train.epochs=1"))
    trainer = experiment.trainer
    trainer.fit()
    with torch.no_grad():
        for p in trainer.ema.module.parameters():
            p.zero_()  # an average of zeros predicts one constant: every image gets the same class
    counts = trainer.evaluate()["confusion_matrix"].sum(dim=0)
    assert int((counts > 0).sum()) == 1


def test_early_stop_after_patience_epochs_without_improvement_is_recorded(root, tmp_path, caplog):
    caplog.set_level("INFO", logger="detkit")
    out = tmp_path / "run"
    # lr 0 and a frozen backbone (BatchNorm statistics too): the model never changes, nor does the metric
    result = run_experiment(tiny(root, out, "train.epochs=6", "optim.lr=0", "train.patience=2",
                                 "freeze.backbone_epochs=6"))
    assert [r["epoch"] for r in result["epochs"]] == [1, 2, 3]
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["early_stop"]["epoch"] == 3 and summary["early_stop"]["best_epoch"] == 1
    assert "train.patience 2" in summary["early_stop"]["reason"]
    assert any(r.message.startswith("early stop after epoch 3") for r in caplog.records)
    with pytest.raises(ValueError, match="train.patience"):
        build_experiment(tiny(root, tmp_path / "bad", "train.patience=0"))


def test_class_weights_and_balanced_sampler_come_from_the_config(root, tmp_path):
    (root / "train" / "red" / "0.png").rename(root / "train" / "red_extra.png")  # 4 blue, 4 green, 3 red
    try:
        experiment = build_experiment(tiny(root, tmp_path / "run", "train.class_weights=auto",
                                           "data.sampler=balanced"))
    finally:
        (root / "train" / "red_extra.png").rename(root / "train" / "red" / "0.png")
    weights = experiment.task.class_weights
    torch.testing.assert_close(weights, torch.tensor([11 / 12, 11 / 12, 11 / 9]))
    sampler = experiment.trainer.train_loader.sampler
    assert isinstance(sampler, BalancedSampler) and len(sampler) == 11
    with pytest.raises(ValueError, match="data.sampler"):
        build_loader(experiment.train_set, experiment.task, tiny(root, tmp_path, "data.sampler=weighted").data,
                     train=True, device=torch.device("cpu"))


def test_kfold_runs_one_directory_per_fold_and_tabulates_them(root, tmp_path):
    out = tmp_path / "cv"
    result = run_kfold(tiny(root, out, "train.epochs=1"), folds=2)
    assert [r["fold"] for r in result["folds"]] == [0, 1] and result["metric"] == "val_acc"
    for fold in (0, 1):
        saved = load_config(out / f"fold_{fold}" / "config.yaml")
        assert (saved.data.kfold, saved.data.fold) == (2, fold)
        summary = json.loads((out / f"fold_{fold}" / "metrics.json").read_text())["summary"]
        assert summary["train_images"] + summary["val_images"] == 12 and summary["val_images"] == 6
    values = [r["value"] for r in result["folds"]]
    assert result["mean"] == pytest.approx(sum(values) / 2)
    assert result["std"] == pytest.approx(math.sqrt(sum((v - result["mean"]) ** 2 for v in values)))
    assert json.loads((out / "kfold.json").read_text())["mean"] == pytest.approx(result["mean"])
    assert (out / "kfold.csv").read_text().splitlines()[0].startswith("fold,value,epoch,run")
    assert "mean val_acc" in format_kfold_table(result)
