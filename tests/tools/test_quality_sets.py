"""The real-image benchmark sets of `tools/bench.py quality`: layouts, counts, boxes inside images, determinism."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skimage")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from benchmarks import quality_sets  # noqa: E402
from benchmarks.quality import RECIPE, _over_seeds, _verdict, help_offers_lr_auto, recipe_lr_at  # noqa: E402
from detkit.config import load_config  # noqa: E402
from detkit.data.classification import ImageFolderDataset  # noqa: E402
from detkit.data.detection import load_coco_json, validate_coco  # noqa: E402
from detkit.data.images import read_image  # noqa: E402

REAL_CLASSIFY = ("digits", "fonts", "textures")
REAL_DETECT = ("digits_det", "glyphs_det", "objects_det")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", REAL_CLASSIFY)
def test_classification_set_has_imagefolder_layout_and_counts(tmp_path, name):
    root = quality_sets.build_set(name, tmp_path, n_train=20, n_val=10, seed=1)
    train, val = ImageFolderDataset(root, "train"), ImageFolderDataset(root, "val")
    assert (len(train), len(val)) == (20, 10)
    assert train.classes == val.classes and len(train.classes) >= 8
    assert len({label for _, label in train.samples}) == len(train.classes)  # every class in a 20-image train split
    image = read_image(train.samples[0][0])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("name", REAL_DETECT)
def test_detection_set_is_valid_coco_with_boxes_inside_images(tmp_path, name):
    root = quality_sets.build_set(name, tmp_path, n_train=6, n_val=3, seed=1)
    classes = None
    for split, n in (("train", 6), ("val", 3)):
        coco = load_coco_json(root / split / "annotations.json")
        records, categories, _, summary = validate_coco(coco, root / split, source=split)
        assert len(records) == n and summary.num_boxes >= n  # 1-5 objects per image
        assert summary.num_clipped == 0 and summary.num_degenerate == 0 and not summary.skipped
        names = [c["name"] for c in categories]
        assert classes in (None, names)
        classes = names
        for record in records:
            assert read_image(record.path).shape[:2] == (record.height, record.width)
            assert 160 <= record.height <= 256 and 160 <= record.width <= 256
            boxes = record.boxes
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= record.width).all()
            assert (boxes[:, 3] <= record.height).all() and (boxes[:, 2:] - boxes[:, :2] >= 4).all()


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a = _files(quality_sets.build_set("glyphs_det", tmp_path / "a", n_train=3, n_val=2, seed=3))
    b = _files(quality_sets.build_set("glyphs_det", tmp_path / "b", n_train=3, n_val=2, seed=3))
    c = _files(quality_sets.build_set("glyphs_det", tmp_path / "c", n_train=3, n_val=2, seed=4))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_finished_set_is_reused_and_other_settings_rewrite_it(tmp_path):
    root = quality_sets.build_set("textures", tmp_path, n_train=8, n_val=8)
    stamp = (root / "quality_meta.json").stat().st_mtime_ns
    assert quality_sets.build_set("textures", tmp_path, n_train=8, n_val=8) == root
    assert (root / "quality_meta.json").stat().st_mtime_ns == stamp
    quality_sets.build_set("textures", tmp_path, n_train=16, n_val=8)
    assert len(list((root / "train").rglob("*.png"))) == 16


def test_build_set_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by"):
        quality_sets.build_set("digits", tmp_path, n_train=4, n_val=4)
    with pytest.raises(ValueError, match="unknown quality set"):
        quality_sets.build_set("mnist", tmp_path)


def test_val_font_faces_are_never_used_in_training():
    faces = quality_sets._font_faces()
    assert faces["train"] and faces["val"] and not set(faces["train"]) & set(faces["val"])


def test_render_glyph_is_cropped_to_its_ink():
    face = quality_sets._font_faces()["train"][0]
    ink = quality_sets.render_glyph("A", face, 40, angle=10.0)
    assert ink.dtype == np.float32 and 0.0 <= ink.min() and ink.max() <= 1.0
    for edge in (ink[0], ink[-1], ink[:, 0], ink[:, -1]):
        assert edge.max() > 0.05


def test_lr_auto_is_read_from_the_lr_entry_of_the_help_text():
    today = "  --lr LR               base learning rate (optim.lr)\n  --resume RESUME  checkpoint, or auto for last.pt\n"
    later = "  --lr LR               base learning rate, or auto: run the LR finder\n  --output OUTPUT  run dir\n"
    assert not help_offers_lr_auto(today)
    assert help_offers_lr_auto(later)


def test_verdict_allows_the_tolerance_and_reports_failed_runs():
    assert _verdict({"value": 0.71}, {"value": 0.73}, "within", 0.03)["met"]
    assert not _verdict({"value": 0.69}, {"value": 0.73}, "within", 0.03)["met"]
    assert _verdict({"value": None}, {"value": 0.73}, "within", 0.03)["met"] is None


def test_rows_over_seeds_are_the_mean_with_each_seed_kept():
    rows = [{"impl": "detkit flags --lr auto", "value": 0.5, "wall_s": 10.0, "best_epoch": 3, "suggestion": 1e-3},
            {"impl": "detkit flags --lr auto", "value": 0.7, "wall_s": 12.0, "best_epoch": 9, "suggestion": 3e-3}]
    merged = _over_seeds(rows, [0, 1])
    assert merged["value"] == pytest.approx(0.6) and merged["per_seed"] == [0.5, 0.7]
    assert merged["wall_s"] == 22.0 and merged["suggestion"] == [1e-3, 3e-3] and "best_epoch" not in merged
    assert _over_seeds([rows[0], {**rows[1], "value": None}], [0, 1])["value"] is None  # a failed seed: no mean
    assert _over_seeds(rows[:1], [0]) is rows[0]  # one seed: the row itself


def test_recipe_lr_scales_linearly_with_the_budget_batch():
    recipe = load_config(RECIPE)
    assert recipe_lr_at(recipe.data.batch_size) == pytest.approx(recipe.optim.lr)
    assert recipe_lr_at(recipe.data.batch_size // 2) == pytest.approx(recipe.optim.lr / 2)
    assert recipe_lr_at(8) == pytest.approx(recipe.optim.lr * 8 / recipe.data.batch_size)
