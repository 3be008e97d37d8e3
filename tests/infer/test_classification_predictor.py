"""Classification inference: the checkpoint's eval transform and weights, top-k CSV/JSON and the contact sheet."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from detkit.config.augment import ClassificationAugment
from detkit.data.images import read_image
from detkit.data.transforms import build_classification_transforms
from detkit.infer import ClassificationPredictor, run_classification, top_k
from detkit.models import model_from_checkpoint

from model_files import save_tiny_classifier

CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("cls") / "best.pt", CLASSES, eval_resize_ratio=0.8)


def test_predictor_uses_the_eval_transform_and_normalisation_of_the_checkpoint(checkpoint):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (50, 70, 3), dtype=np.uint8), rng.integers(0, 255, (33, 20, 3), dtype=np.uint8)]
    predictor = ClassificationPredictor.from_checkpoint(checkpoint, batch_size=1)
    assert predictor.img_size == 32 and predictor.eval_resize_ratio == 0.8
    transform = build_classification_transforms(False, 32, [0.45, 0.5, 0.55], [0.25, 0.2, 0.3],
                                                ClassificationAugment(eval_resize_ratio=0.8))
    model = model_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        want = model(torch.stack([transform(image=im)["image"] for im in images])).softmax(1)
    got = predictor.predict(images)
    assert got.shape == (2, 4) and torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(2))


def test_a_detection_checkpoint_is_refused(tmp_path):
    from model_files import save_tiny_detector

    ckpt = save_tiny_detector(tmp_path / "det.pt", ["a"], [1])
    with pytest.raises(ValueError, match="not a classification checkpoint"):
        ClassificationPredictor.from_checkpoint(ckpt)


def test_top_k_is_sorted_and_capped_at_the_class_count():
    probs = torch.tensor([[0.1, 0.6, 0.3]])
    assert [t["label"] for t in top_k(probs, ["a", "b", "c"], 5)[0]] == ["b", "c", "a"]
    assert top_k(probs, ["a", "b", "c"], 1)[0] == [{"label": "b", "class_index": 1, "probability": 0.6}]


def test_run_classification_writes_csv_json_and_contact_sheet(checkpoint, tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(1)
    for name in ("b.png", "a.jpg", "c.png"):
        cv2.imwrite(str(src / name), rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    predictor = ClassificationPredictor.from_checkpoint(checkpoint, batch_size=2)
    summary = run_classification(predictor, src, tmp_path / "out", topk=2, contact_sheet=True)
    assert summary.images == 3 and [p for p, _ in summary.skipped] == [str(src / "broken.jpg")]
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["file_name"] for r in rows] == [str(src / n) for n in ("a.jpg", "b.png", "c.png")]
    want = predictor.predict([read_image(src / n) for n in ("a.jpg", "b.png", "c.png")])
    for row, probs in zip(rows, want):
        assert [t["class_index"] for t in row["top"]] == probs.argsort(descending=True)[:2].tolist()
        assert row["top"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-6)
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["file_name", "label1", "probability1", "label2", "probability2"]
    assert [t["label1"] for t in table] == [r["top"][0]["label"] for r in rows]
    sheet = read_image(tmp_path / "out" / "contact_sheet.png")
    assert sheet.shape[0] > 160 and sheet.shape[1] >= 6 * 160
    with pytest.raises(ValueError, match="inside, the source"):
        run_classification(predictor, src, src / "out")
