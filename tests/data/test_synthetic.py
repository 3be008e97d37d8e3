"""Tests for detkit.data.synthetic: shape geometry, determinism per seed, layout, metadata and overwrite rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.data import synthetic
from detkit.data.classification import ImageFolderDataset
from detkit.data.images import read_image
from detkit.data.synthetic import (
    CLASSIFICATION_CLASSES,
    SHAPES,
    ShapeSpec,
    draw_shape,
    make_shape_image,
    make_shapes_classification,
    random_shape,
    read_meta,
    shape_polygon,
)

TINY = {"n_train": 12, "n_val": 6, "size": 32}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", SHAPES)
def test_polygon_fits_its_circumradius_and_rotates_about_the_centre(kind: str) -> None:
    pts = shape_polygon(kind, (50.0, 40.0), 20.0, angle=0.0)
    dist = np.hypot(pts[:, 0] - 50, pts[:, 1] - 40)
    assert dist.max() == pytest.approx(20.0) and dist.min() > 5.0
    turned = shape_polygon(kind, (50.0, 40.0), 20.0, angle=33.0)
    np.testing.assert_allclose(np.hypot(turned[:, 0] - 50, turned[:, 1] - 40), dist, atol=1e-9)
    assert not np.allclose(turned, pts)


def test_shapes_have_distinct_outlines() -> None:
    # Area relative to the circumscribed circle tells the shapes apart before any rotation.
    ratios = {k: cv2.contourArea(shape_polygon(k, (0, 0), 1.0).astype(np.float32)) / np.pi for k in SHAPES}
    assert ratios["circle"] > 0.99
    assert ratios["hexagon"] == pytest.approx(3 * np.sqrt(3) / (2 * np.pi), rel=1e-6)
    assert ratios["square"] == pytest.approx(2 / np.pi, rel=1e-6)
    assert ratios["triangle"] == pytest.approx(3 * np.sqrt(3) / (4 * np.pi), rel=1e-6)
    assert len({round(r, 2) for r in ratios.values()}) == len(SHAPES)


@pytest.mark.parametrize("kind", SHAPES)
def test_draw_shape_mask_and_box_match_the_polygon(kind: str) -> None:
    image = np.zeros((64, 80, 3), np.uint8)
    spec = ShapeSpec(kind=kind, center=(41.3, 30.6), radius=22.0, angle=17.0, color=(250, 120, 10))
    mask, box = draw_shape(image, spec)
    pts = shape_polygon(kind, spec.center, spec.radius, spec.angle)
    area = cv2.contourArea(pts.astype(np.float32))
    assert mask.shape == (64, 80) and mask.dtype == bool
    painted = image[..., 0].astype(np.float64).sum() / 250  # red channel = 250 x coverage: the drawn area
    assert painted == pytest.approx(area, rel=0.02)  # unbiased anti-aliasing (OpenCV LINE_AA adds ~5% here)
    assert abs(int(mask.sum()) - area) / area < 0.05  # the half-covered mask rounds its edges either way
    x1, y1, x2, y2 = box
    assert x1 == pytest.approx(pts[:, 0].min(), abs=1.0) and x2 == pytest.approx(pts[:, 0].max(), abs=1.0)
    assert y1 == pytest.approx(pts[:, 1].min(), abs=1.0) and y2 == pytest.approx(pts[:, 1].max(), abs=1.0)
    assert image[mask][:, 0].min() >= 125  # at least half the colour where the mask is set (250 * 0.5)
    assert image[~mask][:, 0].max() < 126  # less than half outside: only anti-aliased edge pixels


def test_draw_shape_clips_at_the_border_and_reports_outside_shapes() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    mask, box = draw_shape(image, ShapeSpec("square", (0.0, 10.0), 8.0, 45.0, (255, 255, 255)))
    assert box is not None and box[0] == 0.0 and box[2] <= 9.0
    mask, box = draw_shape(image, ShapeSpec("circle", (-50.0, -50.0), 5.0, 0.0, (255, 255, 255)))
    assert box is None and not mask.any()


def test_random_shape_fits_the_image_and_contrasts_with_the_background() -> None:
    rng = np.random.default_rng(0)
    background = np.full((60, 90, 3), 128, np.uint8)
    for _ in range(50):
        spec = random_shape(rng, "star", 60, 90, size_range=(0.35, 0.8), background=background)
        r = spec.radius
        assert 0.35 * 30 <= r <= 0.8 * 30
        assert r <= spec.center[0] <= 90 - r and r <= spec.center[1] <= 60 - r
        assert np.linalg.norm(np.subtract(spec.color, 128)) >= synthetic._MIN_CONTRAST
        assert abs(np.dot([0.299, 0.587, 0.114], np.subtract(spec.color, 128))) >= synthetic._MIN_LUMA_CONTRAST


def test_colour_is_independent_of_the_class() -> None:
    # Same generator state, different kinds: identical colour and placement, only the outline differs.
    specs = [random_shape(np.random.default_rng(5), k, 64, 64) for k in SHAPES]
    assert len({(s.color, s.center, s.radius) for s in specs}) == 1


def test_make_shape_image_is_deterministic_per_generator_state() -> None:
    a = make_shape_image(np.random.default_rng([1, 0, 3]), "cross", 48)
    b = make_shape_image(np.random.default_rng([1, 0, 3]), "cross", 48)
    c = make_shape_image(np.random.default_rng([1, 0, 4]), "cross", 48)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_generation_layout_and_metadata(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    meta, created = make_shapes_classification(out, **TINY, n_test=6, seed=3)
    assert created and meta["complete"] is True
    classes = sorted(CLASSIFICATION_CLASSES)
    assert (out / "classes.txt").read_text().splitlines() == classes
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == meta == read_meta(out)
    assert on_disk["seed"] == 3 and on_disk["size"] == 32 and on_disk["version"] == synthetic.GENERATOR_VERSION
    assert on_disk["splits"] == {"train": 12, "val": 6, "test": 6}
    for split, n in on_disk["splits"].items():
        files = sorted((out / split).rglob("*"))
        pngs = [p for p in files if p.is_file()]
        assert len(pngs) == n and all(p.suffix == ".png" and not p.name.startswith(".") for p in pngs)
        assert sorted(p.name for p in files if p.is_dir()) == classes
        counts = {c: len(list((out / split / c).glob("*.png"))) for c in classes}
        assert counts == on_disk["counts"][split] and max(counts.values()) - min(counts.values()) <= 1
    image = read_image(out / "train" / "circle" / "00000.png")
    assert image.shape == (32, 32, 3)
    ds = ImageFolderDataset(out, "train")
    assert ds.classes == classes and len(ds) == 12 and ds.skipped == []


def test_same_seed_gives_identical_bytes_whatever_the_thread_count(tmp_path: Path) -> None:
    make_shapes_classification(tmp_path / "a", **TINY, seed=7, workers=0)
    make_shapes_classification(tmp_path / "b", **TINY, seed=7, workers=3)
    make_shapes_classification(tmp_path / "c", **TINY, seed=8)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 18 and all(a[k] != c[k] for k in pngs)


def test_rerun_with_same_settings_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "s"
    make_shapes_classification(out, **TINY)
    stamp = (out / "train" / "circle" / "00000.png").stat().st_mtime_ns
    meta, created = make_shapes_classification(out, **TINY)
    assert not created and meta["splits"] == {"train": 12, "val": 6}
    assert (out / "train" / "circle" / "00000.png").stat().st_mtime_ns == stamp
    (out / "val" / "star" / "00004.png").unlink()  # a deleted image makes the set incomplete: regenerate
    meta, created = make_shapes_classification(out, **TINY)
    assert created and (out / "val" / "star" / "00004.png").is_file()


def test_other_settings_need_overwrite_which_removes_old_files(tmp_path: Path) -> None:
    out = tmp_path / "s"
    make_shapes_classification(out, **TINY, n_test=6)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_shapes_classification(out, **{**TINY, "n_train": 18})
    meta, created = make_shapes_classification(out, **{**TINY, "n_train": 18}, overwrite=True)
    assert created and meta["splits"] == {"train": 18, "val": 6}
    assert not (out / "test").exists() and len(list((out / "train").rglob("*.png"))) == 18


def test_refuses_to_touch_folders_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "train" / "mine").mkdir(parents=True)
    (tmp_path / "train" / "mine" / "photo.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not written by this generator"):
        make_shapes_classification(tmp_path, **TINY, overwrite=True)
    assert (tmp_path / "train" / "mine" / "photo.jpg").read_bytes() == b"precious"


def test_interrupted_generation_is_marked_incomplete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = synthetic.write_image

    def failing(path: Path, image: np.ndarray) -> Path:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(path, image)

    monkeypatch.setattr(synthetic, "write_image", failing)
    with pytest.raises(KeyboardInterrupt):
        make_shapes_classification(tmp_path, **TINY, workers=0)
    assert read_meta(tmp_path)["complete"] is False
    assert not list(tmp_path.rglob(".*.tmp"))
    monkeypatch.setattr(synthetic, "write_image", real)
    with pytest.raises(FileExistsError, match="incomplete"):  # other settings still need overwrite
        make_shapes_classification(tmp_path, **{**TINY, "seed": 1})
    meta, created = make_shapes_classification(tmp_path, **TINY)  # the same settings just finish the job
    assert created and meta["complete"] and len(list(tmp_path.rglob("*.png"))) == 18


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": -1}, "n_train"),
        ({"n_val": 2}, "at least the number of classes"),
        ({"n_test": 3}, "n_test"),
        ({"size": 16}, "size"),
        ({"seed": -5}, "seed"),
        ({"classes": ["circle", "blob"]}, "classes"),
        ({"classes": ["circle"]}, "classes"),
        ({"workers": -2}, "workers"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_shapes_classification(tmp_path, **{**TINY, **kwargs})
    assert not any(tmp_path.iterdir())


def test_class_subset_is_sorted_into_label_order(tmp_path: Path) -> None:
    meta, _ = make_shapes_classification(tmp_path, n_train=4, n_val=2, size=32, classes=["star", "circle"])
    assert meta["classes"] == ["circle", "star"]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["circle", "star"]
