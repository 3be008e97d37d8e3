"""Tests for detkit.eval.coco: COCOeval wrapper values on hand-computed cases, per-class AP, PR curves."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.eval.coco import CocoEvaluator, plot_pr_curves, predictions_to_coco_results

CATS = [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}]


def _gt(boxes_by_image: dict[int, list[tuple[int, list[float]]]], size=(100, 100), **ann_extra) -> dict:
    """COCO dict from ``{image_id: [(category_id, [x1, y1, x2, y2]), ...]}``."""
    images = [{"id": i, "file_name": f"{i}.png", "width": size[1], "height": size[0]} for i in boxes_by_image]
    anns = []
    for image_id, objs in boxes_by_image.items():
        for cat, (x1, y1, x2, y2) in objs:
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, **ann_extra,
            })  # fmt: skip
    return {"images": images, "annotations": anns, "categories": CATS}


def _ap101(tp_flags: list[bool], num_gt: int) -> float:
    """COCO's 101-point interpolated AP for detections sorted by score (True = true positive), the slow way."""
    tp = np.cumsum(tp_flags)
    fp = np.cumsum([not f for f in tp_flags])
    recall = tp / num_gt
    precision = tp / (tp + fp)
    total = 0.0
    for r in np.linspace(0, 1, 101):
        reachable = precision[recall >= r - 1e-12]
        total += reachable.max() if reachable.size else 0.0
    return total / 101


def test_perfect_predictions_give_ap_one():
    objs = {1: [(3, [10, 10, 50, 60]), (8, [60, 5, 90, 40])], 2: [(8, [0, 0, 100, 100])]}
    ev = CocoEvaluator(_gt(objs))
    for image_id, items in objs.items():
        ev.add(image_id, torch.tensor([b for _, b in items]), torch.ones(len(items)), torch.tensor([c for c, _ in items]))
    m = ev.compute()
    assert m.map == pytest.approx(1.0) and m.map50 == pytest.approx(1.0) and m.map75 == pytest.approx(1.0)
    assert m.ar100 == pytest.approx(1.0)
    assert m.per_class_ap == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    np.testing.assert_allclose(m.pr_curves["dog"], np.ones(101))
    assert m.num_predictions == 3 and m.num_images == 2


def test_one_of_two_objects_found_gives_the_hand_computed_ap():
    # cat: two objects, one found with an exact box -> recall 0.5 at precision 1:
    #   the 101-point AP is 1.0 at recall points 0.00..0.50 (51 points) and 0 after: 51 / 101.
    # dog: one object, found -> AP 1. mAP is their mean.
    ev = CocoEvaluator(_gt({1: [(3, [10, 10, 50, 60]), (3, [60, 60, 90, 95]), (8, [60, 5, 90, 40])]}))
    ev.add(1, torch.tensor([[10.0, 10, 50, 60], [60, 5, 90, 40]]), torch.tensor([0.9, 0.8]), torch.tensor([3, 8]))
    m = ev.compute()
    assert m.per_class_ap["cat"] == pytest.approx(51 / 101)
    assert m.per_class_ap["dog"] == pytest.approx(1.0)
    assert m.map == pytest.approx((51 / 101 + 1) / 2)
    assert m.ar100 == pytest.approx((0.5 + 1.0) / 2)
    assert m.per_class_ap["cat"] == pytest.approx(_ap101([True], 2))


def test_false_positive_ranked_above_a_true_positive_gives_the_exact_interpolated_ap():
    # Three cats; detections by score: TP (0.9), FP (0.8, far from everything), TP (0.7); one cat missed.
    # recall    1/3, 1/3, 2/3     precision 1, 1/2, 2/3     -> interpolated (max to the right) 1, 2/3, 2/3
    # recall points 0.00..0.33 (34 points) have precision 1, 0.34..0.66 (33 points) 2/3, 0.67..1.00 none (0):
    # AP = (34 * 1 + 33 * 2/3) / 101 = 56 / 101 at every IoU threshold (the TP boxes are exact).
    gt = _gt({1: [(3, [0, 0, 20, 20]), (3, [30, 30, 50, 50]), (3, [60, 60, 80, 80])]})
    ev = CocoEvaluator(gt)
    boxes = torch.tensor([[0.0, 0, 20, 20], [85, 0, 99, 10], [30, 30, 50, 50]])
    ev.add(1, boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([3, 3, 3]))
    m = ev.compute()
    assert m.per_class_ap["cat"] == pytest.approx(56 / 101, abs=1e-12)
    assert m.per_class_ap["cat"] == pytest.approx(_ap101([True, False, True], 3), abs=1e-12)
    assert m.map == pytest.approx(56 / 101, abs=1e-12)  # dog has no ground truth: left out of the mean
    assert m.per_class_ap["dog"] == -1
    np.testing.assert_allclose(m.pr_curves["cat"][:34], 1.0)
    np.testing.assert_allclose(m.pr_curves["cat"][34:67], 2 / 3)
    assert (m.pr_curves["cat"][67:] == 0).all()


def test_no_predictions_give_zero_map_without_crashing(tmp_path):
    ev = CocoEvaluator(_gt({1: [(3, [0, 0, 20, 20])], 2: []}))
    m = ev.compute()
    assert m.map == 0.0 and m.map50 == 0.0 and m.ar100 == 0.0 and m.num_predictions == 0
    assert m.per_class_ap == {"cat": 0.0, "dog": -1.0}
    assert ev.plot_pr_curves(tmp_path / "pr.png").stat().st_size > 0


def test_agrees_with_pycocotools_called_directly_on_random_detections():
    rng = np.random.default_rng(0)
    objs = {}
    for image_id in range(1, 6):
        xy = rng.uniform(0, 60, size=(4, 2))
        wh = rng.uniform(5, 40, size=(4, 2))
        objs[image_id] = [(int(rng.choice([3, 8])), [*p, *(p + s)]) for p, s in zip(xy.tolist(), wh)]
    gt = _gt(objs)
    ev = CocoEvaluator(gt)
    results = []
    for image_id, items in objs.items():
        boxes = torch.tensor([b for _, b in items]) + torch.as_tensor(rng.normal(0, 3, size=(len(items), 4)))
        boxes = torch.cat([boxes, torch.tensor([[1.0, 1, 30, 30]])])
        scores = torch.as_tensor(rng.uniform(0, 1, size=len(boxes)))
        cats = torch.tensor([c for c, _ in items] + [3])
        ev.add(image_id, boxes, scores, cats)
        results += predictions_to_coco_results(image_id, boxes, scores, cats)
    m = ev.compute()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ref = COCOeval(coco, coco.loadRes(results), "bbox")
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    np.testing.assert_allclose(list(m.scalars().values()), ref.stats, atol=1e-12)
    assert 0 < m.map < 1


def test_crowd_regions_are_ignored_not_counted_as_misses_or_false_positives():
    gt = _gt({1: [(3, [0, 0, 20, 20])]})
    gt["annotations"].append(
        {"id": 99, "image_id": 1, "category_id": 3, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 1}
    )
    ev = CocoEvaluator(gt)
    ev.add(1, torch.tensor([[0.0, 0, 20, 20], [55, 55, 85, 85]]), torch.tensor([0.5, 0.9]), torch.tensor([3, 3]))
    assert ev.compute().per_class_ap["cat"] == pytest.approx(1.0)


def test_update_maps_contiguous_labels_through_label_to_cat_id_and_add_results_merges():
    objs = {1: [(3, [10, 10, 50, 60]), (8, [60, 5, 90, 40])]}
    ev = CocoEvaluator(_gt(objs), label_to_cat_id={0: 3, 1: 8})
    ev.update({1: {"boxes": torch.tensor([[10.0, 10, 50, 60]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}})
    other = CocoEvaluator(_gt(objs))
    other.add(1, torch.tensor([[60.0, 5, 90, 40]]), torch.tensor([0.8]), torch.tensor([8]))
    ev.add_results(other.results)  # e.g. gathered from another rank
    assert ev.compute().map == pytest.approx(1.0)
    with pytest.raises(ValueError, match="label_to_cat_id"):
        ev.update({1: {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([5])}})


def test_unknown_image_or_category_ids_are_rejected():
    ev = CocoEvaluator(_gt({1: [(3, [0, 0, 10, 10])]}))
    with pytest.raises(ValueError, match="image_id 5"):
        ev.add(5, torch.zeros(1, 4), torch.ones(1), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"category ids \[4\]"):
        ev.add(1, torch.zeros(1, 4), torch.ones(1), torch.tensor([4]))
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\]"):
        ev.add(1, torch.zeros(4), torch.ones(1), torch.tensor([3]))
    with pytest.raises(ValueError, match="iou_type"):
        CocoEvaluator(_gt({1: []}), iou_type="segm")


def test_predictions_to_coco_results_converts_xyxy_to_xywh():
    out = predictions_to_coco_results(4, torch.tensor([[1.0, 2.0, 11.0, 7.0]]), torch.tensor([0.5]), torch.tensor([8]))
    assert out == [{"image_id": 4, "category_id": 8, "bbox": [1.0, 2.0, 10.0, 5.0], "score": 0.5}]
    assert predictions_to_coco_results(4, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)) == []


def test_gt_from_a_json_path_and_quiet_pycocotools(tmp_path, capsys):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt({1: [(3, [0, 0, 10, 10])]})))
    ev = CocoEvaluator(path)
    ev.add(1, torch.tensor([[0.0, 0, 10, 10]]), torch.ones(1), torch.tensor([3]))
    m = ev.compute()
    assert capsys.readouterr().out == ""
    assert "Average Precision" in m.summary


def test_plot_pr_curves_writes_a_png_atomically(tmp_path):
    ev = CocoEvaluator(_gt({1: [(3, [0, 0, 20, 20]), (8, [30, 30, 60, 60])]}))
    ev.add(1, torch.tensor([[0.0, 0, 20, 20]]), torch.ones(1), torch.tensor([3]))
    path = ev.plot_pr_curves(tmp_path / "plots" / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["pr.png"]  # no temporary file left behind
    assert plot_pr_curves(ev.metrics, tmp_path / "again.png").exists()
    name = next(iter(ev.metrics.pr_curves))
    one = plot_pr_curves(ev.metrics, tmp_path / "one.png", class_name=name)
    assert one.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and one.read_bytes() != path.read_bytes()
    with pytest.raises(ValueError, match="class_name"):
        plot_pr_curves(ev.metrics, tmp_path / "none.png", class_name="no such class")
