"""End-to-end tests of tools/finetune.py: a real run from flags and overrides, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import TINY_FLAGS, load_tool

from detkit.engine.checkpoint import load_checkpoint


def test_finetune_cli_trains_and_writes_the_run_directory(trained_run, tiny_data):
    out, proc = trained_run
    assert proc.returncode == 0, proc.stderr
    assert f"run directory: {out}" in proc.stdout and "best val_acc" in proc.stdout
    config = yaml.safe_load((out / "config.yaml").read_text())
    # flags and dotted overrides both landed in the resolved config
    assert config["optim"]["lr"] == 0.02 and config["optim"]["head_lr_mult"] == 5.0
    assert config["data"]["root"] == str(tiny_data) and config["model"]["name"] == "timm:test_resnet"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and metrics["summary"]["pretrained"] is False
    assert metrics["epochs"][0]["lr/head"] == pytest.approx(5 * metrics["epochs"][0]["lr/stem"])
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["classes"] == ["blue", "green", "red"] and ckpt["epoch"] == 1
    assert {"confusion_matrix.png", "metrics.csv", "last.pt", "train.log"} <= {p.name for p in out.iterdir()}


def _run_in_process(capsys, monkeypatch, *argv: str) -> tuple[int, str]:
    tool = load_tool("finetune")
    monkeypatch.setattr("sys.argv", ["finetune.py", *argv])
    code = tool._run_cli()
    return code, capsys.readouterr().err


def test_unknown_config_key_is_one_line_with_a_suggestion(capsys, monkeypatch, tiny_data, tmp_path):
    # the override sits between flags: the CLI parses flags and KEY=VALUE pairs intermixed
    code, err = _run_in_process(capsys, monkeypatch, "--data", str(tiny_data), "optim.momentun=0.8",
                                "--output", str(tmp_path / "r"))
    assert code == 2
    assert err.strip() == "error: unknown config key 'optim.momentun'; did you mean 'optim.momentum'?"


def test_detect_task_on_a_classification_folder_is_one_line_naming_the_missing_annotations(
        capsys, monkeypatch, tiny_data, tmp_path):
    code, err = _run_in_process(capsys, monkeypatch, "--task", "detect", "--data", str(tiny_data),
                                "--output", str(tmp_path / "r"), *TINY_FLAGS)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "annotations" in lines[0]


def test_offline_imagenet_weights_fail_at_once_naming_the_cache_file(capsys, monkeypatch, tiny_data, tmp_path):
    torch_home = tmp_path / "empty_torch_home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("DETKIT_OFFLINE", "1")
    code, err = _run_in_process(capsys, monkeypatch, "--data", str(tiny_data), "--output", str(tmp_path / "r"),
                                "--model", "resnet18", "--weights", "imagenet", "--epochs", "1", "--workers", "0",
                                "train.tensorboard=false")
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-") in lines[0]
    assert "--weights PATH" in lines[0]
