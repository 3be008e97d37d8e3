"""End-to-end tests of tools/eval.py: a classifier written by tools/finetune.py, a detector on COCO-layout data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detkit.data.det_synthetic import DET_CLASSES, make_shapes_detection
from detkit.data.images import read_image
from detkit.infer import Predictor

from cli_helpers import cli_env, load_tool, run_in_process, run_tool, save_tiny_detector

DET_CATEGORY_IDS = (3, 7, 11, 20)  # non-contiguous: eval must map labels back to the dataset's ids


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
    # on a GPU both runs use TF32 convolutions, whose rounding depends on the batch's algorithm choice
    assert abs(report["val_loss"] - best["val_loss"]) < (1e-4 if torch.cuda.is_available() else 1e-6)
    assert f"acc@1 {best['val_acc']:.4f}" in proc.stdout and "confusion matrix" in proc.stdout
    cm = torch.load(tmp_path / "eval" / "confusion_matrix.pt", weights_only=True)
    assert cm.tolist() == report["confusion_matrix"] and int(cm.sum()) == 6
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0


def test_eval_cli_missing_checkpoint_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["eval.py", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tiny_data)])
    assert load_tool("eval")._run_cli() == 2
    assert capsys.readouterr().err == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist\n"


def _shapes_detection(root: Path, min_size: int = 64, max_size: int = 80) -> Path:
    """Three val images (plus one train image) of the synthetic shapes detection set, COCO layout."""
    make_shapes_detection(root, n_train=1, n_val=3, min_size=min_size, max_size=max_size, seed=1, max_shapes=2,
                          empty_prob=0.0, ext=".png", category_ids=DET_CATEGORY_IDS, workers=1)
    return root


def _assert_report_shows(stdout: str, report: dict) -> None:
    """The printed report shows the numbers eval_metrics.json holds, with a row for every class."""
    assert (f"mAP@[.5:.95] {report['val_map']:.4f}  mAP50 {report['val_map50']:.4f}  "
            f"mAP75 {report['val_map75']:.4f}  AR@100 {report['val_ar100']:.4f}") in stdout
    lines = stdout.splitlines()
    for name in DET_CLASSES:
        row = [line.split()[1:] for line in lines if line.split()[:1] == [name]]
        want = report["val_per_class_ap"][name]
        assert row == [[f"{v:.4f}" if v >= 0 else "n/a" for v in (want["ap"], want["ap50"])]], (name, stdout)


def test_eval_cli_reports_coco_metrics_of_a_detection_checkpoint(tmp_path, monkeypatch, capsys):
    data = _shapes_detection(tmp_path / "shapes")
    ckpt = save_tiny_detector(tmp_path / "run" / "best.pt", DET_CLASSES, DET_CATEGORY_IDS)
    rc, stdout, stderr = run_in_process("eval", ["--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu"],
                                        monkeypatch, capsys)
    assert rc == 0, stderr
    out = tmp_path / "run" / "eval_val"  # the default: <checkpoint dir>/eval_<split>
    report = json.loads((out / "eval_metrics.json").read_text())
    assert report["task"] == "detect" and report["images"] == report["val_images"] == 3
    assert report["classes"] == list(DET_CLASSES) and "confusion_matrix" not in report
    for key in ("val_map", "val_map50", "val_map75", "val_ar100"):
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 1.0, key
    assert set(report["val_per_class_ap"]) == set(DET_CLASSES)
    assert all(set(v) == {"ap", "ap50"} for v in report["val_per_class_ap"].values())
    assert "split 'val': 3 images" in stdout and f"results written to {out}" in stdout
    _assert_report_shows(stdout, report)
    for name in ("pr_curves.png", "val_predictions.png"):  # the plots training writes, from the same task hook
        assert read_image(out / name).shape[2] == 3, name


def test_eval_cli_scores_a_detectors_own_predictions_as_perfect(tmp_path, monkeypatch, capsys):
    """Ground truth = what tools/detect.py's Predictor finds above a score threshold: eval must give mAP 1."""
    data = _shapes_detection(tmp_path / "shapes", min_size=64, max_size=64)  # the input size: no resampling
    ckpt = save_tiny_detector(tmp_path / "probe.pt", DET_CLASSES, DET_CATEGORY_IDS)
    annotations = data / "val" / "annotations.json"
    coco = json.loads(annotations.read_text())
    predictor = Predictor.from_checkpoint(ckpt, conf=0.0, iou=0.45, max_det=100)  # the eval NMS (detect.nms_thresh)
    found = predictor.predict([read_image(data / "val" / im["file_name"]) for im in coco["images"]])
    # a threshold in the widest gap between the top scores, so float noise cannot move a box across it
    scores = sorted(torch.cat([f["scores"] for f in found]).tolist(), reverse=True)[:40]
    gap, cut = max((scores[i - 1] - scores[i], i) for i in range(1, len(scores)))
    assert gap > 1e-4, scores
    thresh = (scores[cut - 1] + scores[cut]) / 2
    coco["annotations"] = []
    for im, f in zip(coco["images"], found):
        for (x1, y1, x2, y2), score, cat in zip(f["boxes"].tolist(), f["scores"].tolist(), f["category_ids"].tolist()):
            if score > thresh:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": im["id"],
                                            "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    annotations.write_text(json.dumps(coco))
    with_gt = {DET_CLASSES[DET_CATEGORY_IDS.index(a["category_id"])] for a in coco["annotations"]}

    # the same weights (seed 0), with the threshold as the checkpoint's detect.score_thresh
    ckpt = save_tiny_detector(tmp_path / "run" / "best.pt", DET_CLASSES, DET_CATEGORY_IDS, score_thresh=thresh)
    out = tmp_path / "eval"
    rc, stdout, stderr = run_in_process("eval", ["--checkpoint", str(ckpt), "--data", str(data), "--output", str(out),
                                                 "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0, stderr
    report = json.loads((out / "eval_metrics.json").read_text())
    assert report["val_detections"] == len(coco["annotations"]) == cut
    for key in ("val_map", "val_map50", "val_map75", "val_ar100"):
        assert report[key] == pytest.approx(1.0), key
    for name, ap in report["val_per_class_ap"].items():
        assert ap == ({"ap": pytest.approx(1.0), "ap50": pytest.approx(1.0)} if name in with_gt
                      else {"ap": -1.0, "ap50": -1.0}), name
    assert "mAP@[.5:.95] 1.0000  mAP50 1.0000  mAP75 1.0000  AR@100 1.0000" in stdout
    _assert_report_shows(stdout, report)


def test_console_report_keeps_long_class_names_whole():
    tool = load_tool("eval")
    classes = ["golden_retriever", "cat", "left_turn_sign"]
    metrics = {"classes": classes, "val_acc": 0.5, "val_acc5": 1.0, "val_loss": 0.7,
               "val_per_class": {c: {"precision": 0.5, "recall": 0.5} for c in classes},
               "confusion_matrix": torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 12345]])}
    lines = tool._classification_lines(metrics)
    header = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix"))
    assert all(c in lines[header + 1] for c in classes)  # column headers in full
    rows = lines[header + 2: header + 5]
    assert [r.split()[0] for r in rows] == classes and rows[2].split()[-1] == "12345"
    assert len({len(r) for r in rows} | {len(lines[header + 1])}) == 1  # columns line up
