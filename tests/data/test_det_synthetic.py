"""Tests for detkit.data.det_synthetic: determinism, tight boxes under occlusion, layout, category ids."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from detkit.data.det_synthetic import (
    DET_CLASSES,
    draw_detection_image,
    make_shapes_detection,
    paint_shapes,
    shape_categories,
)
from detkit.data.detection import DetectionDataset
from detkit.data.synthetic import ShapeSpec, draw_shape

SMALL = dict(n_train=6, n_val=3, min_size=48, max_size=80)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "meta.json"
    }


def test_same_seed_gives_identical_bytes_whatever_the_thread_count(tmp_path):
    make_shapes_detection(tmp_path / "a", seed=3, workers=1, **SMALL)
    make_shapes_detection(tmp_path / "b", seed=3, workers=4, **SMALL)
    make_shapes_detection(tmp_path / "c", seed=4, workers=1, **SMALL)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(a) == 6 + 3 + 2 and a == b
    assert a["train/annotations.json"] != c["train/annotations.json"]


def test_layout_loads_as_a_clean_detection_dataset_with_varied_sizes(tmp_path):
    meta, created = make_shapes_detection(tmp_path, n_train=12, n_val=4, min_size=40, max_size=90, seed=1, ext=".png")
    assert created and meta["complete"] and set(meta["annotations"]) == {"train", "val"}
    train = DetectionDataset(tmp_path, split="train")
    val = DetectionDataset(tmp_path, split="val")
    assert train.classes == list(DET_CLASSES) and train.cat_ids == [1, 2, 3, 4]
    assert train.summary.num_clipped == 0 and train.summary.num_degenerate == 0 and train.summary.skipped == []
    assert train.image_ids == list(range(1, 13)) and val.image_ids == list(range(13, 17))  # unique across splits
    sizes = [(r.height, r.width) for r in train.records]
    assert all(40 <= h <= 90 and 40 <= w <= 90 for h, w in sizes)
    assert any(h != w for h, w in sizes) and len(set(sizes)) > 1
    assert train.summary.num_boxes > 12  # several shapes per image


def test_non_contiguous_category_ids_are_written_and_kept(tmp_path):
    make_shapes_detection(tmp_path, category_ids=(3, 7, 11, 20), **SMALL)
    coco = json.loads((tmp_path / "train" / "annotations.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [3, 7, 11, 20]
    assert {a["category_id"] for a in coco["annotations"]} <= {3, 7, 11, 20}
    ds = DetectionDataset(tmp_path, split="train")
    assert ds.label_to_cat_id == {0: 3, 1: 7, 2: 11, 3: 20}
    with pytest.raises(ValueError, match="category_ids"):
        shape_categories(DET_CLASSES, (1, 1, 2, 3))


def test_rerun_is_a_no_op_and_other_settings_need_overwrite(tmp_path):
    _, created = make_shapes_detection(tmp_path, seed=0, **SMALL)
    before = _digest(tmp_path)
    _, again = make_shapes_detection(tmp_path, seed=0, **SMALL)
    assert created and not again and _digest(tmp_path) == before
    with pytest.raises(FileExistsError, match="overwrite"):
        make_shapes_detection(tmp_path, seed=1, **SMALL)
    _, created = make_shapes_detection(tmp_path, seed=1, overwrite=True, **SMALL)
    assert created and _digest(tmp_path) != before
    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    (foreign / "train" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by"):
        make_shapes_detection(foreign, overwrite=True, **SMALL)
    assert (foreign / "train" / "mine.txt").read_text() == "keep me"


def _reference_visible_box(specs, k, shape=(60, 80)):
    """The visible part of ``specs[k]`` the slow way: its own mask minus the masks of every later shape."""
    canvas = np.zeros((*shape, 3), np.uint8)
    masks = [draw_shape(canvas, s)[0] for s in specs]
    visible = masks[k].copy()
    for later in masks[k + 1 :]:
        visible &= ~later
    ys, xs = np.nonzero(visible)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], visible.sum() / masks[k].sum()


def test_boxes_are_tight_to_the_visible_part_and_hidden_shapes_are_dropped():
    big = ShapeSpec("square", (30.0, 30.0), 20.0, 0.0, (200, 0, 0))  # axis-aligned square, ~28 px side
    over = ShapeSpec("square", (52.0, 30.0), 20.0, 0.0, (0, 200, 0))  # covers the right fifth of `big`
    tiny = ShapeSpec("circle", (70.0, 50.0), 4.0, 0.0, (0, 0, 200))
    cover = ShapeSpec("circle", (70.0, 50.0), 9.0, 0.0, (200, 200, 0))  # hides `tiny` completely
    specs = [big, over, tiny, cover]
    image = np.zeros((60, 80, 3), np.uint8)
    boxes, index, areas = paint_shapes(image, specs)
    assert index.tolist() == [0, 1, 3]  # tiny is hidden
    expected_big, frac = _reference_visible_box(specs, 0)
    assert 0.5 < frac < 0.95  # partly occluded, so its box is smaller than the square
    np.testing.assert_array_equal(boxes[0], expected_big)
    assert boxes[0][2] < draw_shape(np.zeros((60, 80, 3), np.uint8), big)[1][2]
    np.testing.assert_array_equal(boxes[1], draw_shape(np.zeros((60, 80, 3), np.uint8), over)[1])
    assert areas[0] == round(frac * np.count_nonzero(draw_shape(np.zeros((60, 80, 3), np.uint8), big)[0]))


def test_image_draws_have_one_to_six_shapes_and_about_five_percent_negatives():
    counts = []
    for i in range(200):
        sample = draw_detection_image(np.random.default_rng([9, i]), 40, 48)
        assert sample.image.shape == (40, 48, 3) and sample.image.dtype == np.uint8
        assert len(sample.boxes) == len(sample.labels) == len(sample.areas)
        assert ((sample.boxes[:, 2:] > sample.boxes[:, :2]).all()) and (sample.boxes[:, 2] <= 48).all()
        assert set(sample.labels.tolist()) <= {0, 1, 2, 3}
        counts.append(len(sample.boxes) + sample.num_hidden)
    counts = np.array(counts)
    assert counts.max() <= 6 and 0.01 <= (counts == 0).mean() <= 0.12
    assert (counts >= 3).mean() > 0.3  # several shapes per image is common


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_train=0), "n_train"),
        (dict(min_size=100, max_size=50), "min_size"),
        (dict(ext=".gif"), "ext"),
        (dict(max_shapes=0), "max_shapes"),
        (dict(empty_prob=1.5), "empty_prob"),
        (dict(classes=("circle", "blob")), "classes"),
    ],
)
def test_bad_settings_are_rejected_before_anything_is_written(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_shapes_detection(tmp_path / "out", **{**SMALL, **kw})
    assert not (tmp_path / "out").exists()
