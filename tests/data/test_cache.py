"""The in-memory image cache (``data.cache: ram``): same batches as reading the files, the memory cap, the wiring."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from data_testutils import random_rgb, save_rgb
from PIL import Image

import detkit.data.cache as cache_module
from detkit.config import DataConfig, DetectConfig, load_config
from detkit.data.cache import ImageCache, attach_image_cache, read_image_sizes
from detkit.data.det_synthetic import make_shapes_detection
from detkit.data.det_transforms import DetectionAugment
from detkit.data.images import read_image
from detkit.data.seeding import reseed_transforms
from detkit.engine.experiment import build_experiment
from detkit.engine.loaders import build_loader
from detkit.engine.tasks import ClassificationTask, DetectionTask

NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def shapes_det(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache") / "shapes_det"
    make_shapes_detection(root, n_train=8, n_val=3, min_size=40, max_size=72, seed=3, max_shapes=2, ext=".png",
                          workers=1)
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    """A private copy of a dataset (its images are deleted by the tests)."""
    return Path(shutil.copytree(root, tmp_path / root.name))


def _delete_images(root: Path) -> None:
    """Remove every image file under root: what is read after this comes from memory."""
    for path in root.rglob("*"):
        if path.suffix in (".png", ".jpg", ".bmp"):
            path.unlink()


def _batches(loader) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """``(images, [boxes, labels per image] or [labels])`` of every batch, copied."""
    out = []
    for images, targets, _ in loader:
        parts = [v for t in targets for v in (t["boxes"], t["labels"])] if isinstance(targets, list) else [targets]
        out.append((images.clone(), [v.clone() for v in parts]))
    return out


def _assert_same(expected, got) -> None:
    assert len(expected) == len(got) > 0
    for (images_a, targets_a), (images_b, targets_b) in zip(expected, got):
        assert torch.equal(images_a, images_b)
        assert len(targets_a) == len(targets_b) and all(torch.equal(a, b) for a, b in zip(targets_a, targets_b))


def _detection_batches(root: Path, cfg: DataConfig, cached: bool) -> list:
    """Two epochs of augmented training batches; with ``cached`` the images are deleted after caching."""
    train = DetectionTask.load_split(cfg, "train")
    task = DetectionTask(train.classes, detect=DetectConfig(augment=DetectionAugment(hflip_p=0.5, color_p=0.5)))
    train.transform = task.build_transform(cfg, 64, NORM, train=True)
    if cached:
        cache = attach_image_cache(cfg, [train, None])
        assert isinstance(cache, ImageCache) and len(cache) == len(train)
        _delete_images(root)
    loader = build_loader(train, task, cfg, train=True, device=torch.device("cpu"), seed=5)
    batches = []
    for epoch in range(2):
        loader.generator.manual_seed(5 + epoch)
        if cfg.workers == 0:
            train.reseed_transform(5 + epoch)
        batches += _batches(loader)
    return batches


@pytest.mark.parametrize("workers", [0, 2])
def test_cached_detection_batches_equal_the_uncached_ones_for_a_seed(shapes_det, tmp_path, workers):
    """Same seed, same augmented batches (images and boxes), with the files gone once cached; also in workers."""
    root = _copy(shapes_det, tmp_path)
    cfg = DataConfig(root=str(root), batch_size=3, workers=workers, scan_workers=1, cache="ram")
    expected = _detection_batches(root, cfg, cached=False)
    _assert_same(expected, _detection_batches(root, cfg, cached=True))


def test_cached_classification_batches_equal_the_uncached_ones_for_a_seed(folder_dataset):
    root = folder_dataset  # a fresh copy per test
    cfg = DataConfig(root=str(root), batch_size=2, workers=0, scan_workers=2, cache="ram")

    def batches(cached: bool) -> list:
        train = ClassificationTask.load_split(cfg, "train")
        train.transform = ClassificationTask(train.classes).build_transform(cfg, 8, NORM, train=True)
        if cached:
            assert len(attach_image_cache(cfg, [train])) == len(train)
            _delete_images(root)
        train.reseed_transform(9)
        return _batches(build_loader(train, ClassificationTask(train.classes), cfg, train=True,
                                     device=torch.device("cpu"), seed=9))

    expected = batches(cached=False)
    _assert_same(expected, batches(cached=True))


def test_cap_refuses_a_set_too_large_before_decoding_and_names_the_figure(shapes_det, monkeypatch):
    cfg = DataConfig(root=str(shapes_det), scan_workers=1, cache="ram", cache_max_gb=1e-6)
    train = DetectionTask.load_split(cfg, "train")
    val = DetectionTask.load_split(cfg, "val", train.classes)
    monkeypatch.setattr(cache_module, "read_image", lambda path: pytest.fail(f"decoded {path} before the cap check"))
    sizes = [cv2.imread(str(r.path)).shape[:2] for r in [*train.records, *val.records]]
    need_gb = sum(h * w * 3 for h, w in sizes) / 1e9
    with pytest.raises(ValueError) as err:
        attach_image_cache(cfg, [train, val])
    message = str(err.value)
    assert f"needs {need_gb:.3g} GB" in message
    advised = float(re.search(r"to at least ([0-9.e-]+) ", message).group(1))
    assert need_gb <= advised <= need_gb * 1.01  # the cap it advises admits the set, and barely
    assert f"{len(sizes)} images decoded" in message and "data.cache_max_gb = 1e-06" in message
    assert "\n" not in message
    assert getattr(train, "image_cache", None) is None


def test_cap_counts_train_and_val_and_admits_a_set_that_fits(shapes_det):
    cfg = DataConfig(root=str(shapes_det), scan_workers=1, cache="ram")
    train = DetectionTask.load_split(cfg, "train")
    val = DetectionTask.load_split(cfg, "val", train.classes)
    need = sum(r.height * r.width * 3 for r in [*train.records, *val.records])
    exact = DataConfig(root=str(shapes_det), scan_workers=1, cache="ram", cache_max_gb=need / 1e9)
    cache = attach_image_cache(exact, [train, val])
    assert cache.nbytes == need and train.image_cache is cache and val.image_cache is cache
    with pytest.raises(ValueError, match="data.cache_max_gb"):
        attach_image_cache(DataConfig(root=str(shapes_det), cache="ram", cache_max_gb=(need - 1) / 1e9), [train, val])


def test_cache_none_attaches_nothing(shapes_det):
    cfg = DataConfig(root=str(shapes_det), scan_workers=1)
    train = DetectionTask.load_split(cfg, "train")
    assert attach_image_cache(cfg, [train]) is None and getattr(train, "image_cache", None) is None


def test_image_cache_reads_what_read_image_reads_as_fresh_copies(tmp_path):
    paths = [save_rgb(tmp_path / f"{i}.png", random_rgb(i, 5 + i, 7)) for i in range(3)]
    gray = cv2.cvtColor(random_rgb(9, 6, 4), cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    paths.append(tmp_path / "gray.png")
    cache = ImageCache([*paths, paths[0]], read_image_sizes([*paths, paths[0]], workers=2))
    assert cache.fill(workers=2) == [] and len(cache) == 4  # the repeated path is stored once
    assert cache.nbytes == sum(read_image(p).nbytes for p in paths)
    for path in paths:
        image = cache.read(path)
        assert image.dtype == np.uint8 and image.flags.c_contiguous and np.array_equal(image, read_image(path))
        image[:] = 0  # a transform writing to its input does not change the cache
        assert np.array_equal(cache.read(path), read_image(path))
    outside = save_rgb(tmp_path / "other.png", random_rgb(20))
    assert outside not in cache and np.array_equal(cache.read(outside), read_image(outside))


def test_image_cache_leaves_out_what_does_not_decode_to_its_size(tmp_path):
    good = save_rgb(tmp_path / "good.png", random_rgb(1, 8, 8))
    resized = save_rgb(tmp_path / "resized.png", random_rgb(2, 8, 8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    cache = ImageCache([good, resized, broken], [(8, 8), (8, 9), (4, 4)])
    left_out = dict(cache.fill(workers=1))
    assert set(left_out) == {resized, broken} and "8x8 px" in left_out[resized] and "cannot read image" in left_out[broken]
    assert good in cache and resized not in cache
    assert np.array_equal(cache.read(resized), read_image(resized))  # read from disk, as without a cache


def test_header_sizes_count_the_pixels_of_exif_rotated_jpegs(tmp_path):
    """EXIF orientation swaps the decoded sides, never the number of pixels: such a JPEG is cached as decoded."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(random_rgb(3, 10, 16)).save(path, exif=exif.tobytes())
    assert read_image_sizes([path]) == [(10, 16)] and read_image(path).shape == (16, 10, 3)
    cache = ImageCache([path], read_image_sizes([path]))
    assert cache.fill(workers=1) == [] and np.array_equal(cache.read(path), read_image(path))
    assert read_image_sizes([tmp_path / "missing.png"]) == [None]


def test_config_keys_are_checked():
    with pytest.raises(ValueError, match="data.cache: expected one of none, ram"):
        DataConfig(cache="disk")
    with pytest.raises(ValueError, match="data.cache_max_gb"):
        DataConfig(cache_max_gb=0)


def test_build_experiment_caches_both_splits_and_trains_on_the_same_batches(shapes_det, tmp_path, monkeypatch):
    """``data.cache: ram`` through build_experiment: one cache for train and val, the trainer's batches unchanged."""
    monkeypatch.setenv("DETKIT_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def first_batches(cache: str) -> tuple[list, object]:
        cfg = load_config(None, [
            "task=detect", f"data.root={shapes_det}", "data.img_size=64", "data.batch_size=4", "data.workers=0",
            "data.scan_workers=1", "model.name=tiny_ssd", "model.weights=none", "train.device=cpu",
            f"train.output={tmp_path / cache}", "train.progress=false", "train.tensorboard=false",
            f"data.cache={cache}",
        ])
        experiment = build_experiment(cfg)
        reseed_transforms(experiment.train_set, 1)  # what the trainer does at each epoch start
        return _batches(experiment.trainer.train_loader), experiment

    try:
        expected, _ = first_batches("none")
        got, experiment = first_batches("ram")
    finally:
        torch.set_num_threads(threads)
    _assert_same(expected, got)
    cache = experiment.train_set.image_cache
    assert cache is experiment.val_set.image_cache
    annotations = [json.loads((shapes_det / s / "annotations.json").read_text()) for s in ("train", "val")]
    assert len(cache) == sum(len(a["images"]) for a in annotations)
