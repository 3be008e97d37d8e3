"""Tests for detkit.engine.trainer / experiment: run outputs, exact resume, freezing, accumulation, clipping, AMP, errors.

Tiny ImageFolder sets (32 px PNGs written to tmp_path) and timm's 0.4M-parameter ``test_resnet`` keep this fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detkit.config import ExperimentConfig, TrainConfig, apply_overrides, load_config
from detkit.engine.checkpoint import load_checkpoint
from detkit.engine.experiment import build_experiment, build_task, run_experiment
from detkit.engine.optim import stage_learning_rates
from detkit.engine.schedule import ScheduleFactor
from detkit.engine.tasks import ClassificationTask
from detkit.engine.trainer import NonFiniteLossError, StopTraining, Trainer
from image_folders import make_image_folder

def tiny_config(root: Path, output: Path, *overrides: str) -> ExperimentConfig:
    base = [
        f"data.root={root}", "data.img_size=32", "data.batch_size=4", "data.workers=0", "data.scan_workers=2",
        "data.stats_max_images=50", "model.name=timm:test_resnet", "model.weights=none", "train.epochs=2",
        "train.device=cpu", f"train.output={output}", "train.progress=false", "train.tensorboard=false",
        "optim.lr=0.05", "schedule.warmup_epochs=0.5",
    ]
    return load_config(None, [*base, *overrides])


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/engine/conftest.py


def test_fit_writes_the_run_directory(tmp_path):
    root = make_image_folder(tmp_path / "data")
    (root / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    gray = cv2.cvtColor(cv2.imread(str(root / "train" / "green" / "0.png")), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(root / "train" / "green" / "gray.png"), gray)  # single channel: converted to RGB
    rgba = cv2.cvtColor(cv2.imread(str(root / "train" / "blue" / "0.png")), cv2.COLOR_BGR2BGRA)
    cv2.imwrite(str(root / "train" / "blue" / "rgba.png"), rgba)
    out = tmp_path / "run"
    cfg = tiny_config(root, out, "train.tensorboard=true")
    result = run_experiment(cfg)

    files = {p.name for p in out.iterdir()}
    assert {"metrics.json", "metrics.csv", "config.yaml", "confusion_matrix.png", "confusion_matrix.pt",
            "best.pt", "last.pt", "train.log", "tensorboard"} <= files
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # config.yaml holds the resolved config: what the from-scratch policy filled, and it resolves to itself
    saved = load_config(out / "config.yaml")
    assert (saved.optim.name, saved.optim.head_lr_mult, saved.optim.lr) == ("adamw", 1.0, 0.05)
    assert saved.data.augment.preset == "light" and saved.data.augment.hflip_p == 0.0
    assert saved.train.policy == "scratch" and saved.data.root == cfg.data.root and saved.train.epochs == cfg.train.epochs
    assert (out / "config.yaml").read_text().startswith("# training policy from scratch (random init: weights none)")

    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    for row in metrics["epochs"]:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_acc5", "lr/stem", "lr/head"):
            assert math.isfinite(row[key]), key
        assert 0.0 <= row["train_acc"] <= 1.0 and 0.0 <= row["val_acc"] <= 1.0
        assert row["val_count"] == 6
        assert set(row["val_per_class"]) == {"blue", "green", "red"}
    summary = metrics["summary"]
    assert summary["skipped_images"] == 1 and summary["skipped_files"][0].endswith("broken.png")
    assert summary["train_images"] == 14  # 12 + grayscale + RGBA, the corrupt file skipped
    assert summary["pretrained"] is False and summary["normalization"]["source"] == "dataset"
    best = metrics["best"]
    assert best["metric"] == "val_acc" and best["value"] == max(r["val_acc"] for r in metrics["epochs"])
    assert result["best"]["value"] == best["value"]

    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc,val_acc5")
    assert len(csv_lines) == 3

    cm = torch.load(out / "confusion_matrix.pt", weights_only=True)
    assert cm.shape == (3, 3) and cm.dtype == torch.int64 and int(cm.sum()) == 6
    assert int(cm.diag().sum()) == round(metrics["epochs"][-1]["val_acc"] * 6)

    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and last["classes"] == ["blue", "green", "red"]
    assert last["normalization"]["mean"] == summary["normalization"]["mean"]
    assert last["config"]["model"]["name"] == "timm:test_resnet"
    assert last["model_meta"]["num_classes"] == 3
    assert load_checkpoint(out / "best.pt")["epoch"] == best["epoch"]


def test_per_stage_learning_rates_follow_the_schedule_during_training(tmp_path):
    root = make_image_folder(tmp_path / "data")
    cfg = tiny_config(root, tmp_path / "run", "train.epochs=3", "optim.head_lr_mult=10", "schedule.name=cosine")
    exp = build_experiment(cfg)
    result = exp.trainer.fit()
    steps_per_epoch = len(exp.trainer.train_loader)
    factor = ScheduleFactor(cfg.schedule, cfg.train.epochs * steps_per_epoch, steps_per_epoch)
    stages = [g["name"] for g in exp.trainer.optimizer.param_groups if "/" not in g["name"]]
    rates = stage_learning_rates(stages, cfg.optim)
    assert rates["head"] == pytest.approx(10 * rates["stem"])
    for row in result["epochs"]:
        step = row["epoch"] * steps_per_epoch  # the scheduler has been stepped once per optimiser step
        for stage in stages:
            assert row[f"lr/{stage}"] == pytest.approx(rates[stage] * factor(step), rel=1e-9), (stage, step)


@pytest.mark.parametrize("ema", [False, True])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, ema):
    root = make_image_folder(tmp_path / "data")
    common = ("train.deterministic=true", "train.epochs=2") + (("train.ema=true", "train.ema_decay=0.9") if ema else ())
    full = run_experiment(tiny_config(root, tmp_path / "full", *common))

    def stop_after_first_epoch(trainer, row):
        if row["epoch"] == 1:
            raise StopTraining

    interrupted_out = tmp_path / "interrupted"
    run_experiment(tiny_config(root, interrupted_out, *common), hooks=[stop_after_first_epoch])
    assert load_checkpoint(interrupted_out / "last.pt")["epoch"] == 1
    resumed = run_experiment(tiny_config(root, interrupted_out, *common, "train.resume=auto"))

    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(interrupted_out / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"
    if ema:  # "model" is the average; the trained weights and the update count resume exactly too
        trained_a, trained_b = a["ema"]["training_model"], b["ema"]["training_model"]
        assert all(torch.equal(trained_a[k], trained_b[k]) for k in trained_a)
        assert a["ema"]["updates"] == b["ema"]["updates"] > 0
        assert any(not torch.equal(a["model"][k], trained_a[k]) for k in a["model"] if a["model"][k].is_floating_point())
    assert [r["train_loss"] for r in resumed["epochs"]] == [r["train_loss"] for r in full["epochs"]]
    history = json.loads((interrupted_out / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2]


def test_frozen_backbone_is_bit_identical_and_gets_no_optimizer_state(tmp_path):
    root = make_image_folder(tmp_path / "data")
    cfg = tiny_config(root, tmp_path / "run", "freeze.backbone_epochs=1", "freeze.freeze_bn=true")
    exp = build_experiment(cfg)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    head_keys = {k for k in before if k.startswith(("fc.", "head."))}
    assert head_keys, "test_resnet's head should be found"
    seen = {}

    def check(trainer, row):
        state = trainer.model.state_dict()
        if row["epoch"] == 1:
            changed = [k for k in before if k not in head_keys and not torch.equal(before[k], state[k])]
            seen["backbone_changed_while_frozen"] = changed
            seen["head_changed"] = any(not torch.equal(before[k], state[k]) for k in head_keys)
            head_params = {id(p) for n, p in trainer.model.named_parameters() if n in head_keys}
            seen["optimizer_state_outside_head"] = [
                p for p in trainer.optimizer.state if id(p) not in head_params and trainer.optimizer.state[p]]
        else:
            seen["backbone_changed_later"] = any(
                not torch.equal(before[k], state[k]) for k in before if k not in head_keys)

    exp.trainer.hooks.append(check)
    exp.trainer.fit()
    assert seen["backbone_changed_while_frozen"] == []  # weights and BatchNorm statistics alike
    assert seen["head_changed"]
    assert seen["optimizer_state_outside_head"] == []
    assert seen["backbone_changed_later"]


def test_non_finite_loss_stops_with_the_batch_file_names(tmp_path):
    root = make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    exp = build_experiment(tiny_config(root, out))
    with torch.no_grad():
        next(exp.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at epoch 1, batch 0") as info:
        exp.trainer.fit()
    named = [p for p in (root / "train").rglob("*.png") if str(p) in str(info.value)]
    assert len(named) == 4  # the whole first batch
    assert not (out / "last.pt").exists()


def test_detect_task_is_the_detection_task_on_the_same_trainer():
    from detkit.engine.tasks import DetectionTask

    task = build_task(apply_overrides(ExperimentConfig(), ["task=detect"]), ["a", "b"])
    assert isinstance(task, DetectionTask)
    assert (task.best_metric, task.best_mode) == ("val_map", "max")


# --------------------------------------------------------------------------- Trainer on toy models


class _TensorSet(Dataset):
    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 4, 4, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i]), f"img{i}.png"


class _Probe(nn.Module):
    """A linear classifier that records the autocast state and memory format it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 3)
        self.calls = []

    def forward(self, x):
        self.calls.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                           x.is_contiguous(memory_format=torch.channels_last)))
        return self.fc(x.flatten(1))


def _toy_trainer(tmp_path, batch_size: int, **train) -> Trainer:
    torch.manual_seed(0)
    model = _Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=train.pop("lr", 0.1))
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(_TensorSet(), batch_size=batch_size, shuffle=True, generator=generator)
    cfg = TrainConfig(**{"epochs": 1, "device": "cpu", "output": str(tmp_path / "toy"), "progress": False,
                         "tensorboard": False, **train})
    return Trainer(model, ClassificationTask(["a", "b", "c"]), optimizer, loader, None, cfg=cfg)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    big = _toy_trainer(tmp_path / "a", batch_size=8)
    big.fit()
    accumulated = _toy_trainer(tmp_path / "b", batch_size=4, accumulate=2)
    accumulated.fit()
    assert big.global_step == accumulated.global_step == 2  # 12 samples: 8 + 4, and (4 + 4) + 4
    for p, q in zip(big.model.parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_the_update(tmp_path):
    def update_norm(**train) -> float:
        trainer = _toy_trainer(tmp_path / str(len(train)), batch_size=12, lr=1.0, **train)
        before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
        trainer.fit()
        return float((torch.cat([p.detach().flatten() for p in trainer.model.parameters()]) - before).norm())

    assert update_norm() > 0.05
    assert 0 < update_norm(grad_clip=0.01) <= 0.01 * (1 + 1e-4)


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path):
    trainer = _toy_trainer(tmp_path, batch_size=4, amp=True, channels_last=True)
    result = trainer.fit()
    assert math.isfinite(result["epochs"][0]["train_loss"])
    assert set(trainer.model.calls) == {(True, torch.bfloat16, True)}
    assert trainer.model.fc.weight.dtype == torch.float32  # autocast leaves the master weights alone


def test_invalid_train_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="train.accumulate: expected an integer >= 1, got 0"):
        _toy_trainer(tmp_path, batch_size=4, accumulate=0)
    with pytest.raises(ValueError, match="train.amp_dtype: float16 autocast needs a CUDA device"):
        _toy_trainer(tmp_path, batch_size=4, amp=True, amp_dtype="float16")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_autocast_with_grad_scaler_on_cuda(tmp_path):
    class _CudaProbe(_Probe):
        def forward(self, x):
            self.calls.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), x.is_cuda))
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    model = _CudaProbe()
    loader = DataLoader(_TensorSet(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(epochs=1, device="cuda", amp=True, output=str(tmp_path / "cuda"), progress=False,
                      tensorboard=False, grad_clip=1.0)
    trainer = Trainer(model, ClassificationTask(["a", "b", "c"]), torch.optim.SGD(model.parameters(), lr=0.1),
                      loader, None, cfg=cfg, device="cuda")
    result = trainer.fit()
    assert trainer.scaler.is_enabled() and math.isfinite(result["epochs"][0]["train_loss"])
    assert set(model.calls) == {(True, torch.float16, True)}
    assert model.fc.weight.dtype == torch.float32 and model.fc.weight.is_cuda
