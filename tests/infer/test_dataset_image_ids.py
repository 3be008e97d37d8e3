"""Dataset image ids for inference results, matched by file name."""

from __future__ import annotations

import json
import logging

import pytest

from detkit.errors import DatasetError
from detkit.infer import dataset_image_ids, match_image_ids, split_annotations


def _coco(images):
    return {"images": [{"id": i, "file_name": f} for i, f in images], "annotations": [], "categories": []}


def test_file_names_match_by_the_longest_path_suffix(tmp_path):
    files = [tmp_path / "val" / "a.jpg", tmp_path / "other" / "a.jpg", tmp_path / "val" / "b.jpg"]
    ids = match_image_ids(files, _coco([(7, "val/a.jpg"), (8, "other/a.jpg"), (9, "b.jpg"), (10, "c.jpg")]))
    assert ids == {files[0]: 7, files[1]: 8, files[2]: 9}


def test_ambiguous_names_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="appears twice"):
        match_image_ids([], _coco([(1, "a.jpg"), (2, "a.jpg")]))
    with pytest.raises(DatasetError, match="both match image id 1"):
        match_image_ids([tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.jpg"], _coco([(1, "a.jpg")]))


def test_a_split_folder_with_annotations_gives_its_ids_or_warns(tmp_path, caplog):
    split = tmp_path / "val"
    split.mkdir()
    files = [split / "a.png", split / "b.png"]
    (split / "annotations.json").write_text(json.dumps(_coco([(3, "a.png"), (5, "b.png")])))
    assert split_annotations(split) == split / "annotations.json"
    ids, used = dataset_image_ids(files, split, None)
    assert ids == {files[0]: 3, files[1]: 5} and used == split / "annotations.json"
    with caplog.at_level(logging.WARNING):
        ids, used = dataset_image_ids(files + [split / "c.png"], split, None)
    assert ids is None and used is None and "does not list 1 of the source images" in caplog.text
    assert dataset_image_ids(files, tmp_path / "elsewhere.png", None) == (None, None)


def test_given_annotations_must_list_every_source_image(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(_coco([(3, "a.png")])))
    with pytest.raises(DatasetError, match=r"1 source images are not in the annotations .*b\.png"):
        dataset_image_ids([tmp_path / "a.png", tmp_path / "b.png"], tmp_path, ann)
    with pytest.raises(FileNotFoundError):
        dataset_image_ids([tmp_path / "a.png"], tmp_path, tmp_path / "missing.json")
