"""End-to-end test of tools/eval.py on a checkpoint written by tools/finetune.py."""

from __future__ import annotations

import json

import torch

from conftest import cli_env, load_tool, run_tool


def test_eval_cli_reproduces_the_training_validation(trained_run, tiny_data, tmp_path):
    out, train = trained_run
    assert train.returncode == 0, train.stderr
    proc = run_tool("eval.py", "--checkpoint", str(out / "best.pt"), "--data", str(tiny_data),
                    "--output", str(tmp_path / "eval"), env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    best = json.loads((out / "metrics.json").read_text())["best"]
    # same weights, same eval transforms and normalisation (from the checkpoint): same numbers
    assert report["val_acc"] == best["val_acc"] and report["val_count"] == 6
    assert abs(report["val_loss"] - best["val_loss"]) < 1e-6
    assert f"acc@1 {best['val_acc']:.4f}" in proc.stdout and "confusion matrix" in proc.stdout
    cm = torch.load(tmp_path / "eval" / "confusion_matrix.pt", weights_only=True)
    assert cm.tolist() == report["confusion_matrix"] and int(cm.sum()) == 6
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0


def test_eval_cli_missing_checkpoint_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["eval.py", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tiny_data)])
    assert load_tool("eval")._run_cli() == 2
    assert capsys.readouterr().err == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist\n"
