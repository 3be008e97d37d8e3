"""Nothing lost on faults, one clear error on bad runs: checkpoint pairs after a crash, stale temp files, output
folders that hold a run, non-finite weights, resumes of another model, changed schedules, standard batches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from detkit.config import TrainConfig, load_config
from detkit.engine.experiment import build_experiment, run_experiment
from detkit.engine.schedule import build_scheduler
from detkit.engine.tasks import ClassificationTask
from detkit.engine.trainer import Trainer
from detkit.errors import ConfigError, NonFiniteLossError
from detkit.models.checkpoint import load_checkpoint
from image_folders import make_image_folder


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/engine/conftest.py


def _data(n: int = 12) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _trainer(out: Path, epochs: int = 3, model: nn.Module | None = None, **train) -> Trainer:
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_data(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(epochs=epochs, device="cpu", output=str(out), progress=False, tensorboard=False, **train)
    # the validation metric is the training set's accuracy: deterministic, and it changes between epochs
    val = DataLoader(_data(), batch_size=6)
    return Trainer(model, ClassificationTask(["a", "b", "c"]), optimizer, loader, val, cfg=cfg)


def test_standard_image_label_batches_are_accepted(tmp_path):
    result = _trainer(tmp_path / "run", epochs=1).fit()  # TensorDataset yields (images, labels): no file names
    assert result["epochs"][0]["train_loss"] > 0 and 0 <= result["epochs"][0]["val_acc"] <= 1


def test_a_crash_between_best_and_last_keeps_the_pair_consistent(tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = _trainer(out)
    original = Trainer.save_checkpoint
    saved = []

    def crash_on_second_last(self, path, epoch, metrics):
        if Path(path).name == "last.pt" and epoch == 2:
            raise KeyboardInterrupt("killed while writing last.pt")  # best.pt of epoch 2 may already be written
        saved.append((Path(path).name, epoch))
        return original(self, path, epoch, metrics)

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_on_second_last)
    trainer.best_value = -1.0  # every epoch improves on it: epoch 2 writes best.pt before last.pt
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    assert ("best.pt", 2) in saved and load_checkpoint(out / "last.pt")["epoch"] == 1

    resumed = _trainer(out)
    resumed.resume(out / "last.pt")
    best = load_checkpoint(out / "best.pt")
    assert resumed.best_value == best["best_metric"] and resumed.best_row["epoch"] == best["epoch"] == 2
    result = resumed.fit()
    best = load_checkpoint(out / "best.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["epoch"] == best["epoch"] == result["best"]["epoch"]
    assert metrics["best"]["value"] == best["best_metric"]


def test_a_stale_best_checkpoint_is_rebuilt_from_last_on_resume(tmp_path):
    out = tmp_path / "run"
    trainer = _trainer(out, epochs=2)
    trainer.best_value = -1.0  # both epochs improve: last.pt (epoch 2) records epoch 2 as the best
    trainer.fit()
    last = load_checkpoint(out / "last.pt")
    assert last["trainer"]["best_row"]["epoch"] == 2
    # what the former write order (last.pt first) left after a crash: best.pt one epoch behind
    torch.save(dict(last, epoch=1, model={k: torch.zeros_like(v) for k, v in last["model"].items()}), out / "best.pt")
    _trainer(out, epochs=2).resume(out / "last.pt")
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == 2
    assert all(torch.equal(best["model"][k], v) for k, v in last["model"].items())


def test_stale_temporary_files_are_removed_when_a_run_starts(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".last.pt.k2j4h1.tmp", out / ".metrics.json.x9y8z7.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 64)
    keep = out / ".hidden_notes"
    keep.write_text("mine")
    _trainer(out, epochs=1).fit()
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


class _DivergingNorm(nn.Module):
    """A finite loss (training normalises with batch statistics) while the BatchNorm running variance diverges."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(48, 3)

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.bn.running_var.fill_(float("inf"))
        return self.fc(self.bn(x).flatten(1))


def test_non_finite_weights_stop_the_run_before_a_checkpoint_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights after epoch 1: bn\.running_var"):
        _trainer(out, epochs=2, model=_DivergingNorm()).fit()
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


def test_resume_warns_when_the_schedule_length_changed(tmp_path, caplog):
    out = tmp_path / "run"
    first = _trainer(out, epochs=1)
    first.scheduler = build_scheduler(first.optimizer, load_config().schedule, epochs=1, steps_per_epoch=3)
    first.fit()
    longer = _trainer(out, epochs=3)
    longer.scheduler = build_scheduler(longer.optimizer, load_config().schedule, epochs=3, steps_per_epoch=3)
    with caplog.at_level(logging.WARNING):
        longer.resume(out / "last.pt")
    assert "planned for 3 optimiser steps, this run has 9" in caplog.text


def _cfg(root: Path, out: Path, *overrides: str):
    base = [f"data.root={root}", "data.img_size=32", "data.batch_size=4", "data.workers=0", "model.weights=none",
            "model.name=timm:test_resnet", "train.epochs=1", "train.device=cpu", f"train.output={out}",
            "train.progress=false", "train.tensorboard=false", "data.stats_max_images=20"]
    return load_config(None, [*base, *overrides])


def test_an_output_folder_holding_a_run_is_refused_unless_resumed_or_exist_ok(tmp_path):
    root = make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    run_experiment(_cfg(root, out))
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a run \(last\.pt, best\.pt, metrics\.json\).*--exist-ok"):
        run_experiment(_cfg(root, out))
    assert (out / "metrics.json").read_bytes() == before  # nothing replaced
    run_experiment(_cfg(root, out, "train.exist_ok=true"))
    assert (out / "metrics.json").read_bytes() != before


def test_resuming_a_checkpoint_of_another_model_is_one_clear_error(tmp_path):
    root = make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    run_experiment(_cfg(root, out))
    with pytest.raises(ValueError, match="is a classify checkpoint of timm:test_resnet, but this run trains classify "
                                         "with resnet18"):
        build_experiment(_cfg(root, out, "model.name=resnet18", "train.resume=auto"))


def test_invalid_values_are_reported_when_the_config_is_read():
    with pytest.raises(ConfigError, match=r"train\.accumulate: expected an integer >= 1, got 0"):
        load_config(None, ["train.accumulate=0"])
    with pytest.raises(ConfigError, match=r"data\.img_size: expected a positive number of pixels"):
        load_config(None, ["data.img_size=0"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got str 'many'"):
        load_config(None, ["train.epochs=many", ("train.epochs", 3)])  # a flag does not hide the bad override


def test_a_detection_input_too_small_for_the_architecture_is_one_clear_error(tmp_path):
    from detkit.data.det_synthetic import make_shapes_detection

    root = tmp_path / "det"
    make_shapes_detection(root, n_train=2, n_val=0, min_size=64, max_size=64, workers=1)
    cfg = load_config(None, [f"data.root={root}", "data.val_split=null", "task=detect", "model.name=tiny_ssd",
                             "model.weights=none", "data.img_size=7", "data.workers=0", "train.device=cpu",
                             f"train.output={tmp_path / 'run'}", "data.batch_size=2", "data.stats_max_images=2"])
    with pytest.raises(ValueError, match="data.img_size: tiny_ssd needs inputs of at least 64 px, got 7"):
        build_experiment(cfg)
