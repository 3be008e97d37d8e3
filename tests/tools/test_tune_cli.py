"""End-to-end test of tools/tune.py: a 2-run grid, each run in its own directory, one sorted results table."""

from __future__ import annotations

import csv
import json

from cli_helpers import TINY_FLAGS, cli_env, run_tool


def _as_overrides(flags: list[str]) -> list[str]:
    # tune.py takes dotted overrides only; translate the shared tiny flags
    keys = {"--model": "model.name", "--weights": "model.weights", "--img-size": "data.img_size",
            "--batch-size": "data.batch_size", "--epochs": "train.epochs", "--workers": "data.workers",
            "--device": "train.device"}
    out, i = [], 0
    while i < len(flags):
        if flags[i] in keys:
            out.append(f"{keys[flags[i]]}={flags[i + 1]}")
            i += 2
        else:
            out.append(flags[i])
            i += 1
    return out


def test_tune_cli_runs_the_grid_and_ranks_the_runs(tiny_data, tmp_path):
    out = tmp_path / "tune"
    proc = run_tool("tune.py", "--grid", "lr=0.05,0.001", "--output", str(out), "--set", f"data.root={tiny_data}",
                    *_as_overrides(TINY_FLAGS), env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    table = json.loads((out / "results.json").read_text())
    assert table["metric"] == "val_acc" and table["mode"] == "max"
    runs = table["runs"]
    assert sorted(r["lr"] for r in runs) == [0.001, 0.05]
    values = [r["best_val_acc"] for r in runs]
    assert values == sorted(values, reverse=True)
    for run in runs:
        run_dir = out / run["run"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["best"]["value"] == run["best_val_acc"]
        assert metrics["epochs"][0]["lr/stem"] <= run["lr"]  # each run really used its own lr
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [r["run"] for r in runs]
    assert f"results: {out / 'results.csv'}" in proc.stdout
    printed = [line for line in proc.stdout.splitlines() if ": best " in line]
    assert [line.rsplit("(", 1)[1].rstrip(")") for line in printed] == [str(out / r["run"]) for r in runs]
    for line, run in zip(printed, runs):  # the console list is sorted like results.csv and names each value
        assert f"best val_acc {run['best_val_acc']:.4f}" in line
    again = run_tool("tune.py", "--grid", "lr=0.05", "--output", str(out), "--set", f"data.root={tiny_data}",
                     *_as_overrides(TINY_FLAGS), env=cli_env(tmp_path))
    assert again.returncode == 2 and "already holds a grid's results" in again.stderr
