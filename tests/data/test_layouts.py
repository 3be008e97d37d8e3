"""Tests for detkit.data.layouts through the tasks' load_split: every dataset layout trains as it is, the explicit
keys win, split aliases, kept category ids, and one error listing what was tried when nothing is recognised."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from layout_builders import COCO_IDS, LAYOUTS, NAMES, SPLITS, coco_beside, yolo_folders, yolo_roboflow

from detkit.config import DataConfig, DetectConfig, ExperimentConfig, ModelConfig, TrainConfig
from detkit.config.augment import DetectionAugment
from detkit.data.formats import convert_dataset
from detkit.data.layouts import find_detection_split
from detkit.engine.experiment import build_experiment
from detkit.engine.tasks import ClassificationTask, DetectionTask
from detkit.errors import ConfigError, DatasetError


def _data(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), batch_size=2, workers=0, scan_workers=1, img_size=64,
                      mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], **kw)


def _objects(dataset) -> dict[str, list[tuple]]:
    """``{image stem: sorted [(class name, x1, y1, x2, y2)]}`` of a loaded split, boxes rounded to 1/100 pixel."""
    names = {c["id"]: c["name"] for c in dataset.categories}
    stems = {img["id"]: Path(img["file_name"]).stem for img in dataset.coco["images"]}
    out: dict[str, list[tuple]] = {s: [] for s in stems.values()}
    for a in dataset.coco["annotations"]:
        x, y, w, h = a["bbox"]
        out[stems[a["image_id"]]].append((names[a["category_id"]], *np.round([x, y, x + w, y + h], 2).tolist()))
    return {k: sorted(v) for k, v in out.items()}


def _truth(split: str) -> dict[str, list[tuple]]:
    return {stem: sorted((n, float(x1), float(y1), float(x2), float(y2)) for n, x1, y1, x2, y2 in boxes)
            for stem, _, _, boxes in SPLITS[split]}


@pytest.fixture(scope="module")
def coco_reference(tmp_path_factory) -> dict[str, DetectionTask]:
    """The dataset in detkit's own COCO layout: what every other layout must read the same as."""
    root = coco_beside(tmp_path_factory.mktemp("reference"))
    return {split: DetectionTask.load_split(_data(root), split) for split in SPLITS}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_reads_like_its_coco_version_and_trains_one_step(layout, tmp_path, coco_reference):
    data_root = LAYOUTS[layout](tmp_path / layout)
    cfg = ExperimentConfig(task="detect", data=_data(data_root), model=ModelConfig(name="tiny_ssd", weights="none"),
                           train=TrainConfig(device="cpu", epochs=1, output=str(tmp_path / "run"), tensorboard=False,
                                             progress=False),
                           detect=DetectConfig(augment=DetectionAugment(crop_p=0, scale_p=0)))
    torch.set_num_threads(1)
    experiment = build_experiment(cfg)
    for split, dataset in (("train", experiment.train_set), ("val", experiment.val_set)):
        reference = coco_reference[split].summary
        assert _objects(dataset) == _truth(split), (layout, split)
        for key in ("num_images", "num_boxes", "num_negative_images", "num_clipped", "num_degenerate"):
            assert getattr(dataset.summary, key) == getattr(reference, key), (layout, split, key)
        assert dataset.summary.boxes_per_category == reference.boxes_per_category
        assert dataset.summary.skipped == []
    train = experiment.trainer.train_one_epoch(1)
    assert np.isfinite(train["train_loss"])
    metrics = experiment.trainer.evaluate()
    assert metrics["val_images"] == coco_reference["val"].summary.num_images == 2


def test_category_ids_are_kept_as_each_format_has_them(tmp_path):
    coco = DetectionTask.load_split(_data(coco_beside(tmp_path / "coco")), "train")
    assert list(zip(coco.cat_ids, coco.classes)) == [(COCO_IDS[n], n) for n in NAMES]
    yolo = DetectionTask.load_split(_data(yolo_roboflow(tmp_path / "yolo")), "train")
    assert list(zip(yolo.cat_ids, yolo.classes)) == list(enumerate(NAMES))  # YOLO class k <-> names[k]
    task = DetectionTask.from_config(ExperimentConfig(task="detect"), yolo.classes, train_set=yolo)
    meta = task.build_model("tiny_ssd", weights="none").detkit_meta
    assert meta["category_ids"] == [0, 1] and meta["classes"] == NAMES  # what predictions.json will say


def test_the_val_split_is_found_as_valid_and_the_log_says_so(tmp_path, caplog):
    root = yolo_roboflow(tmp_path / "rf")
    with caplog.at_level(logging.INFO, logger="detkit"):
        found = find_detection_split(_data(root), "val")
    assert found.split == "val" and found.layout == "YOLO data.yaml"  # the yaml's key is val
    shutil.move(root / "data.yaml", tmp_path / "elsewhere.yaml")  # without the yaml: folders valid/images
    (root / "classes.txt").write_text("dog\ncat\n")
    with caplog.at_level(logging.INFO, logger="detkit"):
        found = find_detection_split(_data(root), "val")
    assert found.split == "valid" and found.layout == "YOLO folders"
    assert "split 'val': no such split, using 'valid'" in caplog.text


def test_explicit_keys_win_over_the_layout_found(tmp_path):
    root = coco_beside(tmp_path / "ds")
    # the val annotations name the train images: the explicit keys, not val/annotations.json, are read
    data = _data(root, val_images="train", val_annotations="train/annotations.json")
    val = DetectionTask.load_split(data, "val", ["dog", "cat"])
    assert _objects(val) == _truth("train") and val.annotation_file == root / "train" / "annotations.json"
    yolo = yolo_folders(tmp_path / "yolo")
    (yolo / "labels" / "train").rename(yolo / "my_labels")
    data = _data(yolo, format="yolo", train_images="images/train", train_annotations="my_labels")
    assert _objects(DetectionTask.load_split(data, "train")) == _truth("train")
    with pytest.raises(FileNotFoundError, match="data.train_annotations: .*nope.json does not exist"):
        DetectionTask.load_split(_data(root, train_annotations="nope.json"), "train")
    with pytest.raises(ConfigError, match="data.format: detection reads auto, coco, yolo, voc; got 'folder'"):
        DetectionTask.load_split(_data(root, format="folder"), "train")


def test_converted_yolo_counts_match_the_yolo_read_in_place(tmp_path):
    yolo = yolo_folders(tmp_path / "yolo")
    convert_dataset(yolo, tmp_path / "coco", "yolo", "coco")
    for split in SPLITS:
        direct = DetectionTask.load_split(_data(yolo), split)
        converted = DetectionTask.load_split(_data(tmp_path / "coco"), split)
        assert _objects(direct) == _objects(converted) == _truth(split)
        assert direct.classes == converted.classes == NAMES


def test_nothing_recognised_is_one_error_listing_every_layout_and_path_tried(tmp_path):
    root = tmp_path / "photos"
    (root / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as info:
        DetectionTask.load_split(_data(root), "val")
    msg = str(info.value)
    assert msg.startswith(f"data.root: no 'val' split of a detection dataset (COCO, YOLO or Pascal VOC) in {root}")
    for tried in ("YOLO data.yaml: data.yaml, dataset.yaml", "COCO: {val,valid,validation}/annotations.json",
                  "{val,valid,validation}/_annotations.coco.json", "annotations/instances_{val,valid,validation}.json",
                  "YOLO folders: images/{val,valid,validation}, {val,valid,validation}/images",
                  "Pascal VOC: ImageSets/Main/{val,valid,validation}.txt", "{val,valid,validation}/Annotations",
                  "data.val_split: null"):
        assert tried in msg, tried
    with pytest.raises(FileNotFoundError, match="data.root: dataset .*missing does not exist"):
        DetectionTask.load_split(_data(tmp_path / "missing"), "train")


def test_a_yaml_split_that_does_not_exist_and_an_empty_split_are_clear_errors(tmp_path):
    root = yolo_roboflow(tmp_path / "rf")
    with pytest.raises(FileNotFoundError, match=r"has no usable 'test' split.*test: \.\./test/images"):
        DetectionTask.load_split(_data(root / "data.yaml"), "test")
    (root / "valid" / "images").rename(tmp_path / "gone")
    (root / "valid" / "images").mkdir()
    with pytest.raises(DatasetError, match="no usable images in .*data.yaml"):
        DetectionTask.load_split(_data(root), "val")
    (root / "data.yaml").write_text("names: [a\ntrain: [")
    with pytest.raises(DatasetError, match="cannot read YOLO dataset file .*data.yaml"):
        DetectionTask.load_split(_data(root), "train")


def test_classification_reads_path_label_lists_and_the_valid_split_name(tmp_path):
    from data_testutils import random_rgb, save_rgb

    root = tmp_path / "cls"
    for k, (name, label) in enumerate([("x1.png", "ant"), ("x2.png", "bee"), ("x3.png", "bee"), ("v1.png", "ant")]):
        save_rgb(root / "pics" / name, random_rgb(k))
    (root / "train.csv").write_text("filename,class\npics/x1.png,ant\npics/x2.png,bee\n\npics/x3.png,bee\n")
    (root / "valid.json").write_text('[{"path": "pics/v1.png", "label": "ant"}]')
    train = ClassificationTask.load_split(_data(root), "train")
    assert train.classes == ["ant", "bee"] and train.targets == [0, 1, 1]
    val = ClassificationTask.load_split(_data(root), "val", train.classes)
    assert [p.name for p, _ in val.samples] == ["v1.png"] and val.targets == [0]
    # the list as data.root: it is the train split, the val list is found beside it
    assert ClassificationTask.load_split(_data(root / "train.csv"), "val", train.classes).targets == [0]
    (root / "valid.json").write_text('[["../x.png", "ant"], ["pics/v1.png", "wasp"]]')
    with pytest.raises(DatasetError, match=r"paths of .*valid.json point outside .*'\.\./x\.png'"):
        ClassificationTask.load_split(_data(root), "val", train.classes)
    (root / "valid.json").write_text('{"pics/v1.png": "wasp"}')
    with pytest.raises(DatasetError, match=r"label\(s\) \['wasp'\] that are not among the given classes"):
        ClassificationTask.load_split(_data(root), "val", train.classes)
    with pytest.raises(ConfigError, match="data.format: classification reads auto, folder, list; got 'coco'"):
        ClassificationTask.load_split(_data(root, format="coco"), "train")
