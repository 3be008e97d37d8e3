"""Tests for detkit.data.detection: COCO-layout datasets, validation rules and batch collation."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import detkit.data.seeding as seeding
from detkit.data.det_transforms import build_detection_transforms, letterbox_boxes, unletterbox_boxes
from detkit.data.detection import DetectionDataset, detection_collate, load_coco_json
from detkit.data.images import DatasetError

CATS = [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}]  # non-contiguous, unsorted on purpose


def _image(path: Path, h: int, w: int, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def _ann(ann_id, image_id, cat, bbox, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def _write(split_dir: Path, images, annotations, categories=CATS, name="annotations.json") -> Path:
    split_dir.mkdir(parents=True, exist_ok=True)
    for img in images:
        if not (split_dir / img["file_name"]).exists():
            _image(split_dir / img["file_name"], img.get("height", 30), img.get("width", 40))
    path = split_dir / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
        {"id": 7, "file_name": "sub/c.png", "width": 20, "height": 10},  # negative, in a sub-folder
    ]
    anns = [
        _ann(1, 1, 9, [2, 3, 10, 5]),  # fine
        _ann(2, 1, 5, [30, 20, 20, 20]),  # reaches outside 40x30: clipped to [30, 20, 40, 30]
        _ann(3, 1, 5, [5, 5, 0, 4]),  # zero width: dropped
        _ann(4, 2, 5, [10, 10, -3, 4]),  # negative width: dropped
        _ann(5, 2, 9, [-4, -2, 8, 6], area=11.5),  # clipped to [0, 0, 4, 4], area kept
        _ann(6, 2, 5, [0, 0, 40, 30], iscrowd=1),  # crowd: ignore region
        _ann(7, 1, 9, [50, 40, 5, 5]),  # entirely outside: empty after clipping, dropped
    ]
    _write(tmp_path / "train", images, anns)
    return tmp_path


def test_dataset_keeps_category_ids_and_maps_labels_both_ways(root):
    ds = DetectionDataset(root, split="train")
    assert ds.categories == [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]
    assert ds.cat_ids == [5, 9] and ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.label_to_cat_id == {0: 5, 1: 9} and ds.cat_id_to_label == {5: 0, 9: 1}
    assert len(ds) == 3 and ds.image_ids == [1, 2, 7]


def test_validation_clips_drops_and_counts(root):
    ds = DetectionDataset(root, split="train")
    s = ds.summary
    assert (s.num_images, s.num_annotations) == (3, 7)
    assert s.num_boxes == 3 and s.num_crowd == 1
    assert s.num_clipped == 2  # anns 2 and 5; ann 7 is empty after clipping and counts as dropped
    assert s.num_degenerate == 3 and s.num_negative_images == 1 and s.skipped == []
    assert s.boxes_per_category == {"cat": 1, "dog": 2}
    rec = {r.image_id: r for r in ds.records}
    np.testing.assert_array_equal(rec[1].boxes, [[2, 3, 12, 8], [30, 20, 40, 30]])
    np.testing.assert_array_equal(rec[1].labels, [1, 0])
    np.testing.assert_array_equal(rec[2].boxes, [[0, 0, 4, 4]])
    np.testing.assert_array_equal(rec[2].crowd_boxes, [[0, 0, 40, 30]])
    assert rec[7].boxes.shape == (0, 4) and rec[7].labels.shape == (0,)
    # The cleaned COCO dict (for evaluation) has clipped boxes, the crowd region, filled-in area/iscrowd.
    anns = {a["id"]: a for a in ds.coco["annotations"]}
    assert set(anns) == {1, 2, 5, 6}
    assert anns[2]["bbox"] == [30, 20, 10, 10] and anns[2]["area"] == 100.0 and anns[2]["iscrowd"] == 0
    assert anns[5]["area"] == 11.5 and anns[6]["iscrowd"] == 1
    assert "boxes clipped" in str(s)


def test_getitem_returns_image_target_and_path(root):
    ds = DetectionDataset(root, split="train")
    image, target, path = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert torch.allclose(image, torch.full_like(image, 100 / 255))
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [30.0, 20.0, 40.0, 30.0]]))
    assert target["labels"].tolist() == [1, 0] and target["image_id"] == 1
    assert target["orig_size"].tolist() == [30, 40] and target["size"].tolist() == [30, 40]
    assert target["letterbox"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert path.endswith("a.png")
    _, negative, path = ds[2]
    assert negative["boxes"].shape == (0, 4) and negative["labels"].shape == (0,)
    assert path.endswith("sub/c.png")
    with pytest.raises(IndexError):
        ds[3]


def test_eval_transform_target_maps_back_to_the_original_boxes(root):
    ds = DetectionDataset(root, split="train", transform=build_detection_transforms(False, 32))
    image, target, _ = ds[0]
    assert image.shape == (3, 32, 32) and target["size"].tolist() == [32, 32]
    original = torch.tensor([[2.0, 3.0, 12.0, 8.0], [30.0, 20.0, 40.0, 30.0]])
    torch.testing.assert_close(target["boxes"], letterbox_boxes(original, target["letterbox"]))
    back = unletterbox_boxes(target["boxes"], target["letterbox"], clip_hw=target["orig_size"])
    torch.testing.assert_close(back, original, rtol=0, atol=1e-4)


def test_train_transform_gives_fixed_size_and_aligned_labels(root):
    ds = DetectionDataset(root, split="train", transform=build_detection_transforms(True, 32, seed=0))
    for i in range(len(ds)):
        image, target, _ = ds[i]
        assert image.shape == (3, 32, 32)
        assert len(target["boxes"]) == len(target["labels"])
        assert (target["boxes"] >= 0).all() and (target["boxes"] <= 32).all()
        assert "letterbox" not in target  # random geometry has no exact inverse


def test_collate_stacks_images_and_keeps_targets_with_any_number_of_boxes(root):
    ds = DetectionDataset(root, split="train", transform=build_detection_transforms(False, 24))
    loader = DataLoader(ds, batch_size=3, collate_fn=detection_collate)
    images, targets, paths = next(iter(loader))
    assert images.shape == (3, 3, 24, 24)
    assert [len(t["boxes"]) for t in targets] == [2, 1, 0]
    assert [t["image_id"] for t in targets] == [1, 2, 7] and len(paths) == 3


def test_collate_rejects_mixed_sizes_and_empty_batches(root):
    ds = DetectionDataset(root, split="train")  # no transform: 40x30 and 20x10 images
    with pytest.raises(ValueError, match="share one shape"):
        detection_collate([ds[0], ds[2]])
    with pytest.raises(ValueError, match="empty"):
        detection_collate([])


def test_unknown_categories_and_missing_images_are_one_error_listing_them(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}, {"id": 2, "file_name": "gone.png"}]
    split = tmp_path / "train"
    _image(split / "a.png", 30, 40)
    anns = [_ann(i, 1, 77 + i, [1, 1, 2, 2]) for i in range(1, 14)]  # 13 unknown category ids
    anns.append(_ann(100, 42, 5, [1, 1, 2, 2]))  # image 42 is not listed
    split.mkdir(parents=True, exist_ok=True)
    (split / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    with pytest.raises(DatasetError) as info:
        DetectionDataset(tmp_path, split="train")
    msg = str(info.value)
    assert "13 annotations with unknown category ids" in msg and "category_id=78" in msg
    assert "... and 3 more" in msg  # first 10 listed
    assert "1 annotations naming images that are not listed: annotation 100: image_id=42" in msg
    assert "1 image files missing" in msg and "gone.png" in msg


def test_unreadable_images_are_skipped_and_listed(root, caplog):
    (root / "train" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with caplog.at_level(logging.WARNING):
        ds = DetectionDataset(root, split="train")
    assert ds.image_ids == [1, 7]
    assert len(ds.summary.skipped) == 1 and ds.summary.skipped[0][0].endswith("b.png")
    assert [i["id"] for i in ds.coco["images"]] == [1, 7]
    assert all(a["image_id"] != 2 for a in ds.coco["annotations"])
    assert "unreadable" in caplog.text


def test_file_failing_after_the_scan_is_replaced_by_the_next_sample(root, caplog):
    ds = DetectionDataset(root, split="train")
    (root / "train" / "a.png").write_bytes(b"corrupt")
    with caplog.at_level(logging.WARNING):
        _, target, path = ds[0]
    assert target["image_id"] == 2 and path.endswith("b.png")
    assert "a.png" in caplog.text


def test_size_mismatch_between_file_and_annotations_is_an_error(root):
    ds = DetectionDataset(root, split="train")
    _image(root / "train" / "a.png", 31, 40)
    with pytest.raises(DatasetError, match=r"31x40 .* says 30x40"):
        ds[0]


def test_missing_sizes_are_read_from_the_files(tmp_path):
    _write(tmp_path / "val", [{"id": 3, "file_name": "x.png"}], [_ann(1, 3, 5, [0, 0, 100, 100])])
    _image(tmp_path / "val" / "x.png", 12, 16)
    ds = DetectionDataset(tmp_path, split="val")
    assert (ds.records[0].height, ds.records[0].width) == (12, 16)
    np.testing.assert_array_equal(ds.records[0].boxes, [[0, 0, 16, 12]])  # clipped with the real size


def test_explicit_image_dir_and_annotation_file_the_coco_2017_layout(tmp_path):
    images_dir = tmp_path / "val2017"
    image = {"id": 5, "file_name": "5.png", "width": 40, "height": 30}
    ann_file = _write(images_dir, [image], [_ann(1, 5, 9, [1, 2, 3, 4])])
    target = tmp_path / "annotations" / "instances_val2017.json"
    target.parent.mkdir()
    ann_file.rename(target)
    ds = DetectionDataset(images_dir, annotation_file=target)
    assert len(ds) == 1 and ds[0][1]["labels"].tolist() == [1]


def test_bad_arguments_and_files_are_reported(tmp_path, root):
    with pytest.raises(ValueError, match="either split"):
        DetectionDataset(root, annotation_file=root / "train" / "annotations.json", split="train")
    with pytest.raises(FileNotFoundError, match="image folder"):
        DetectionDataset(root, split="nope")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_coco_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps({"images": [], "categories": {}}))
    with pytest.raises(DatasetError, match="'categories'"):
        load_coco_json(tmp_path / "list.json")


def test_validate_false_skips_the_file_scan_but_still_cleans_boxes(root):
    (root / "train" / "b.png").write_bytes(b"corrupt")
    ds = DetectionDataset(root, split="train", validate=False)
    assert len(ds) == 3 and ds.summary.skipped == [] and ds.summary.num_degenerate == 3


def test_each_dataloader_worker_reseeds_the_augmentation(root, monkeypatch):
    ds = DetectionDataset(root, split="train", transform=build_detection_transforms(True, 32, seed=0))
    outputs = {}
    for worker_seed in (11, 12, 11):
        monkeypatch.setattr(seeding, "get_worker_info", lambda s=worker_seed: SimpleNamespace(id=0, seed=s))
        ds._transform_seed = None  # a fresh worker process
        outputs.setdefault(worker_seed, []).append(ds[0][0])
        assert ds.transform.seed == worker_seed
    torch.testing.assert_close(outputs[11][0], outputs[11][1])  # same worker seed, same augmentation
    assert not torch.equal(outputs[11][0], outputs[12][0])


def test_missing_or_repeated_annotation_ids_get_fresh_ones_for_evaluation(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    no_id = {"image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2]}
    anns = [_ann(3, 1, 5, [0, 0, 5, 5]), _ann(3, 1, 9, [5, 5, 5, 5]), no_id]
    _write(tmp_path, images, anns)
    ds = DetectionDataset(tmp_path)
    assert sorted(a["id"] for a in ds.coco["annotations"]) == [3, 4, 5]
    assert ds.summary.num_boxes == 3


def test_reseed_transform_makes_main_process_augmentation_repeatable(root):
    ds = DetectionDataset(root, split="train", transform=build_detection_transforms(True, 32))
    ds.reseed_transform(123)
    first = [ds[i][0] for i in range(3)]
    ds.reseed_transform(123)
    second = [ds[i][0] for i in range(3)]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_file_names_outside_the_image_folder_are_refused_naming_them(tmp_path):
    _image(tmp_path / "secret.png", 30, 40)  # a file beside the dataset: must never be read through it
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "../secret.png", "width": 40, "height": 30},
              {"id": 3, "file_name": str(tmp_path / "secret.png"), "width": 40, "height": 30}]
    _image(tmp_path / "ds" / "train" / "a.png", 30, 40)
    _write(tmp_path / "ds" / "train", images[:1], [])
    (tmp_path / "ds" / "train" / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": [_ann(1, 2, 5, [1, 1, 5, 5])], "categories": CATS}))
    with pytest.raises(DatasetError) as info:
        DetectionDataset(tmp_path / "ds", split="train")
    msg = str(info.value)
    assert "2 image file_name entries outside the image folder" in msg
    assert "image 2: '../secret.png'" in msg and f"image 3: '{tmp_path / 'secret.png'}'" in msg
    assert "naming images that are not listed" not in msg  # image 2's annotation is not a second complaint


def test_two_categories_with_one_name_are_an_error_naming_them(tmp_path):
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "dog"}]
    _write(tmp_path / "train", [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], [], categories=cats)
    with pytest.raises(DatasetError, match=r"category names used by more than one category .*'dog' \(ids 1, 3\)"):
        DetectionDataset(tmp_path, split="train")


def test_an_empty_annotation_list_is_a_warning(tmp_path, caplog):
    _write(tmp_path / "train", [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], [])
    with caplog.at_level(logging.WARNING):
        ds = DetectionDataset(tmp_path, split="train")
    assert len(ds) == 1 and ds.summary.num_negative_images == 1
    assert "has no annotations at all: every image is a negative" in caplog.text


def test_wrong_sizes_in_the_annotations_are_found_by_the_upfront_scan(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "b.jpg", "width": 16, "height": 12},
              {"id": 3, "file_name": "c.png", "width": 22, "height": 10}]
    _image(tmp_path / "train" / "a.png", 30, 40)
    _image(tmp_path / "train" / "b.jpg", 13, 16)  # a JPEG one pixel taller than annotated
    _image(tmp_path / "train" / "c.png", 22, 10)  # width and height swapped
    _write(tmp_path / "train", images, [])
    with pytest.raises(DatasetError) as info:
        DetectionDataset(tmp_path, split="train")  # at construction: before any epoch
    msg = str(info.value)
    assert "2 images whose width/height (HxW) differ from the file's" in msg
    assert "image 2 (b.jpg): annotated 12x16, file 13x16" in msg
    assert "image 3 (c.png): annotated 10x22, file 22x10" in msg
    assert "image 1" not in msg
    ds = DetectionDataset(tmp_path, split="train", validate=False)  # without the scan, found at load time
    assert len(ds) == 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_listed_as_an_image_is_skipped_not_read(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}, {"id": 2, "file_name": "pipe.png"}]
    _image(tmp_path / "train" / "a.png", 30, 40)
    os.mkfifo(tmp_path / "train" / "pipe.png")
    _write(tmp_path / "train", images, [])
    ds = DetectionDataset(tmp_path, split="train")
    assert ds.image_ids == [1] and ds.summary.skipped == [(str(tmp_path / "train" / "pipe.png"),
                                                           "not a regular file (a FIFO)")]
