"""End-to-end tests of tools/lr_find.py, tools/kfold.py and tools/finetune.py --lr auto: tiny runs, real outputs."""

from __future__ import annotations

import json

import yaml

from cli_helpers import TINY_FLAGS, cli_env, run_tool


def test_lr_find_cli_writes_plot_and_json_and_prints_the_suggestion(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    proc = run_tool("lr_find.py", "--data", str(tiny_data), "--model", "timm:test_resnet", "--weights", "none",
                    "--img-size", "32", "--batch-size", "4", "--device", "cpu", "--steps", "12", "--output", str(out),
                    "data.workers=0", "data.scan_workers=2", "train.tensorboard=false",
                    f"train.output={tmp_path / 'run'}", env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "lr_find.json").read_text())
    assert len(data["lrs"]) <= 12 and data["suggestion"] > 0
    assert f"suggested optim.lr {data['suggestion']:.3g}" in proc.stdout
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_finetune_lr_auto_trains_at_the_finders_suggestion(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = run_tool("finetune.py", "--data", str(tiny_data), "--output", str(out), "--lr", "auto", *TINY_FLAGS,
                    env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    found = json.loads((out / "lr_find" / "lr_find.json").read_text())["suggestion"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["optim"]["lr"] == found  # the resolved config repeats the run without a new sweep
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["lr_find"]["suggestion"] == found


def test_kfold_cli_prints_the_table_and_writes_one_run_per_fold(tiny_data, tmp_path):
    out = tmp_path / "cv"
    proc = run_tool("kfold.py", "--data", str(tiny_data), "--folds", "2", "--model", "timm:test_resnet",
                    "--weights", "none", "--epochs", "1", "--output", str(out), "data.img_size=32",
                    "data.batch_size=4", "data.workers=0", "train.device=cpu", "train.tensorboard=false",
                    "data.scan_workers=2", env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    table = json.loads((out / "kfold.json").read_text())
    assert [row["fold"] for row in table["folds"]] == [0, 1]
    assert f"mean val_acc {table['mean']:.4f} +- {table['std']:.4f}" in proc.stdout
    assert (out / "fold_0" / "best.pt").is_file() and (out / "fold_1" / "best.pt").is_file()
    bad = run_tool("kfold.py", "--data", str(tiny_data), "--folds", "1", "--output", str(tmp_path / "bad"),
                   env=cli_env(tmp_path))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: folds")
