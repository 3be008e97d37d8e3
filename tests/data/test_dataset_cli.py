"""Bad datasets through tools/finetune.py: one ``error:`` line, exit 2, before any training (nothing written)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from layout_builders import coco_beside, yolo_roboflow

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--task", "detect", "--model", "tiny_ssd", "--weights", "none", "--img-size", "64", "--epochs", "1",
         "--workers", "0", "--device", "cpu", "train.tensorboard=false", "data.scan_workers=1"]


def _finetune(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    spec = importlib.util.spec_from_file_location("detkit_tool_finetune_data", REPO / "tools" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["finetune.py", *argv])
    rc = module._run_cli()
    return rc, capsys.readouterr().err


def _wrong_sizes(root: Path) -> None:
    path = root / "val" / "annotations.json"
    coco = json.loads(path.read_text())
    coco["images"][0]["width"] += 5
    path.write_text(json.dumps(coco))


def _bad_yaml(root: Path) -> None:
    (root / "data.yaml").write_text("names: [dog, cat\n")


def _no_val(root: Path) -> None:
    (root / "valid").rename(root / "holdout")


@pytest.mark.parametrize(("build", "spoil", "expected"), [
    (coco_beside, _wrong_sizes, "1 images whose width/height (HxW) differ from the file's"),
    (yolo_roboflow, _bad_yaml, "cannot read YOLO dataset file"),
    (yolo_roboflow, _no_val, "data.val_split: null to train without validation"),
])
def test_bad_datasets_are_one_line_and_exit_2_before_training(build, spoil, expected, tmp_path, monkeypatch, capsys):
    root = build(tmp_path / "ds")
    spoil(root)
    out = tmp_path / "run"
    rc, err = _finetune(["--data", str(root), "--output", str(out), *FLAGS], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0]
    assert not (out / "last.pt").exists()
