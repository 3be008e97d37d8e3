"""tools/predict.py: classification on files, folders and globs, from checkpoints and their exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli_helpers import run_in_process
from model_files import save_tiny_classifier, save_tiny_detector

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("cls_ckpt") / "best.pt", CLASSES)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """``root/a.png``, ``root/b.jpg``, ``root/sub/c.png``, ``root/sub/d.png`` and a corrupt ``root/bad.jpg``."""
    root = tmp_path_factory.mktemp("pred") / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png", "sub/d.png"):
        cv2.imwrite(str(root / name), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    return root


def _run(argv, monkeypatch, capsys):
    return run_in_process("predict", argv, monkeypatch, capsys)


def _rows(folder: Path) -> list[dict]:
    return json.loads((folder / "predictions.json").read_text())


def test_predict_on_a_folder_writes_csv_json_and_reports_unreadable_files(checkpoint, images, tmp_path, monkeypatch,
                                                                          capsys):
    out = tmp_path / "out"
    rc, stdout, stderr = _run(["--checkpoint", str(checkpoint), "--source", str(images), "--output", str(out),
                               "--topk", "2", "--contact-sheet", "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0, stderr
    assert "2 images classified, 1 unreadable skipped" in stdout and "bad.jpg" in stderr
    rows = _rows(out)
    assert [Path(r["file_name"]).name for r in rows] == ["a.png", "b.jpg"]  # a folder: its own files only
    for row in rows:
        probs = [t["probability"] for t in row["top"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True)
        assert {t["label"] for t in row["top"]} <= set(CLASSES)
    with open(out / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["file_name"] for t in table] == [r["file_name"] for r in rows]
    assert [float(t["probability1"]) for t in table] == pytest.approx([r["top"][0]["probability"] for r in rows])
    assert (out / "contact_sheet.png").stat().st_size > 0


def test_predict_on_a_file_and_a_glob(checkpoint, images, tmp_path, monkeypatch, capsys):
    rc, stdout, _ = _run(["--checkpoint", str(checkpoint), "--source", str(images / "sub" / "c.png"), "--output",
                          str(tmp_path / "f"), "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0 and "1 images classified" in stdout and len(_rows(tmp_path / "f")[0]["top"]) == 3
    rc, stdout, _ = _run(["--checkpoint", str(checkpoint), "--source", str(images / "**" / "*.png"), "--output",
                          str(tmp_path / "g"), "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0 and "3 images classified" in stdout
    assert sorted(Path(r["file_name"]).name for r in _rows(tmp_path / "g")) == ["a.png", "c.png", "d.png"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predict_on_an_export_gives_the_checkpoints_probabilities(fmt, checkpoint, images, tmp_path, monkeypatch,
                                                                  capsys):
    from detkit.export import export_checkpoint

    export = export_checkpoint(checkpoint, fmt, output=tmp_path / f"model.{fmt}").path
    args = ["--source", str(images / "**" / "*.png"), "--device", "cpu", "--topk", "3"]
    assert _run(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "c"), *args], monkeypatch, capsys)[0] == 0
    rc, _, err = _run(["--checkpoint", str(export), "--output", str(tmp_path / "e"), *args], monkeypatch, capsys)
    assert rc == 0, err
    for got, want in zip(_rows(tmp_path / "e"), _rows(tmp_path / "c")):
        assert got["file_name"] == want["file_name"]
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        assert [t["probability"] for t in got["top"]] == pytest.approx([t["probability"] for t in want["top"]],
                                                                       abs=1e-5)


def test_predict_errors_are_one_line(checkpoint, images, tmp_path, monkeypatch, capsys):
    det = save_tiny_detector(tmp_path / "det.pt", ["a"], [1])
    cases = [(["--checkpoint", str(det), "--source", str(images), "--output", str(tmp_path / "o")],
              "not a classification checkpoint"),
             (["--checkpoint", str(checkpoint), "--source", str(images), "--output", str(images / "out")],
              "inside, the source"),
             (["--checkpoint", str(checkpoint), "--source", str(tmp_path / "none*.png"), "--output", str(tmp_path)],
              "matches no image files"),
             (["--checkpoint", str(checkpoint), "--source", str(images), "--output", str(tmp_path / "o"), "--topk",
               "0"], "topk")]
    for argv, message in cases:
        rc, _, err = _run([*argv, "--device", "cpu"], monkeypatch, capsys)
        assert rc == 2 and err.startswith("error:") and message in err and err.count("\n") == 1, err
