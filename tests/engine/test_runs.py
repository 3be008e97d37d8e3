"""Tests for RunBuilder and RunManager: grid order and names, run directories, best-metric tables on disk.

Pure Python: no models are trained; metrics are recorded by hand.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from detkit.engine.runs import RunBuilder, RunManager, run_name


def test_get_runs_is_the_product_in_order_as_named_tuples() -> None:
    runs = RunBuilder.get_runs({"lr": [0.01, 0.001], "batch_size": [32, 64, 128]})
    assert len(runs) == 6
    assert runs[0] == (0.01, 32) and runs[1] == (0.01, 64) and runs[-1] == (0.001, 128)
    assert runs[0].lr == 0.01 and runs[0].batch_size == 32
    assert runs[0]._fields == ("lr", "batch_size")
    assert runs[4]._params() == {"lr": 0.001, "batch_size": 64}


def test_dotted_keys_become_fields_but_keep_their_names() -> None:
    runs = RunBuilder.get_runs({"optim.lr": [0.1], "model.name": ["resnet18", "timm:resnet10t"]})
    assert runs[1].optim_lr == 0.1 and runs[1].model_name == "timm:resnet10t"
    assert runs[1]._params() == {"optim.lr": 0.1, "model.name": "timm:resnet10t"}
    assert run_name(runs[1]) == "optim.lr=0.1,model.name=timm_resnet10t"


def test_single_values_count_as_one_option() -> None:
    runs = RunBuilder.get_runs({"lr": 0.1, "name": "sgd"})
    assert runs == [(0.1, "sgd")]


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({}, "at least one"),
        ({"lr": []}, "'lr' has no values"),
        ({"a.b": [1], "a_b": [2]}, "collide"),
    ],
)
def test_bad_grids_are_errors(params: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        RunBuilder.get_runs(params)


def test_each_run_gets_its_own_directory(tmp_path: Path) -> None:
    manager = RunManager(tmp_path)
    runs = RunBuilder.get_runs({"lr": [0.01, 0.001], "batch_size": [32]})
    dirs = [manager.run_dir(run) for run in runs]
    assert [d.name for d in dirs] == ["lr=0.01,batch_size=32", "lr=0.001,batch_size=32"]
    assert all(d.is_dir() and d.parent == tmp_path for d in dirs)


def test_record_keeps_latest_values_and_the_best_epoch(tmp_path: Path) -> None:
    manager = RunManager(tmp_path, metric="val_acc", mode="max")
    (run,) = RunBuilder.get_runs({"lr": [0.1]})
    for epoch, acc in enumerate([0.5, 0.8, 0.7], start=1):
        manager.record(run, {"epoch": epoch, "val_acc": acc, "val_loss": 1.0 / epoch})
    (row,) = manager.results()
    assert row["best_val_acc"] == 0.8 and row["best_epoch"] == 2
    assert row["val_acc"] == 0.7 and row["epoch"] == 3 and row["records"] == 3


@pytest.mark.parametrize(("mode", "expected"), [("max", [0.9, 0.6, 0.3]), ("min", [0.3, 0.6, 0.9])])
def test_results_are_sorted_by_the_best_metric_with_failures_last(tmp_path: Path, mode: str, expected: list) -> None:
    manager = RunManager(tmp_path, metric="val_loss", mode=mode)
    runs = RunBuilder.get_runs({"lr": [1.0, 0.1, 0.01, 0.001]})
    manager.mark_failed(runs[0], "loss is NaN at batch 3")
    for run, loss in zip(runs[1:], [0.6, 0.9, 0.3]):
        manager.record(run, {"val_loss": loss})
    rows = manager.results()
    assert [r.get("best_val_loss") for r in rows[:3]] == expected
    assert rows[-1]["status"] == "failed" and rows[-1]["error"] == "loss is NaN at batch 3"
    assert manager.best()["best_val_loss"] == expected[0]


def test_save_results_writes_matching_csv_and_json_atomically(tmp_path: Path) -> None:
    manager = RunManager(tmp_path / "tune", metric="val_acc")
    runs = RunBuilder.get_runs({"lr": [0.01, 0.001], "batch_size": [32]})
    manager.record(runs[0], {"val_acc": 0.75, "lr_groups": [0.01, 0.1]})
    manager.record(runs[1], {"val_acc": 0.92})
    csv_path, json_path = manager.save_results()
    assert csv_path == tmp_path / "tune" / "results.csv" and json_path == tmp_path / "tune" / "results.json"

    document = json.loads(json_path.read_text())
    assert document["metric"] == "val_acc" and document["mode"] == "max"
    assert [r["lr"] for r in document["runs"]] == [0.001, 0.01]
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run"] for r in rows] == ["lr=0.001,batch_size=32", "lr=0.01,batch_size=32"]
    assert rows[0]["best_val_acc"] == "0.92" and rows[1]["lr_groups"] == "[0.01, 0.1]"
    assert sorted(p.name for p in (tmp_path / "tune").iterdir()) == ["results.csv", "results.json"]

    manager.record(runs[0], {"val_acc": 0.99})  # saving again replaces the tables
    manager.save_results()
    assert json.loads(json_path.read_text())["runs"][0]["lr"] == 0.01


def test_no_best_without_the_metric_and_mode_is_checked(tmp_path: Path) -> None:
    manager = RunManager(tmp_path, metric="map")
    manager.record(RunBuilder.get_runs({"lr": [0.1]})[0], {"val_loss": 0.2})
    assert manager.best() is None
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', got 'median'"):
        RunManager(tmp_path, mode="median")
