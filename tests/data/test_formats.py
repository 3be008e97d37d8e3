"""Tests for detkit.data.formats and tools/convert_dataset.py: YOLO / VOC / COCO readers, writers, round trips."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detkit.data.detection import DetectionDataset
from detkit.data.formats import convert_dataset, read_dataset, read_voc, read_yolo, write_coco, write_voc, write_yolo
from detkit.data.images import DatasetError

ROOT = Path(__file__).resolve().parents[2]
CATS = [{"id": 4, "name": "cat"}, {"id": 11, "name": "dog"}]  # non-contiguous ids must survive every format


def _png(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def _coco_set(directory: Path, prefix: str = "") -> dict:
    """A COCO split with fractional and integral boxes, a negative image and a crowd region; images written."""
    images = [
        {"id": 1, "file_name": f"{prefix}a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": f"{prefix}b.png", "width": 33, "height": 70},
        {"id": 3, "file_name": f"{prefix}empty.png", "width": 20, "height": 20},
    ]
    for img in images:
        _png(directory / img["file_name"], img["height"], img["width"])
    anns = [
        {"id": 1, "image_id": 1, "category_id": 4, "bbox": [3.25, 4.5, 20.125, 30.75], "area": 1.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 11, "bbox": [40, 0, 24, 48], "area": 1.0, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 11, "bbox": [0.3, 10.7, 32.7, 59.3], "area": 1.0, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 4, "bbox": [5, 5, 10, 10], "area": 100.0, "iscrowd": 1},
    ]
    return {"images": images, "annotations": anns, "categories": CATS}


def _by_file(coco: dict, with_crowd: bool = True) -> dict[str, list[tuple]]:
    """``{file_name: sorted [(category_id, iscrowd, x1, y1, x2, y2)]}`` for comparing datasets across formats."""
    names = {img["id"]: Path(img["file_name"]).name for img in coco["images"]}
    out: dict[str, list[tuple]] = {n: [] for n in names.values()}
    for a in coco["annotations"]:
        if a.get("iscrowd", 0) and not with_crowd:
            continue
        x, y, w, h = a["bbox"]
        out[names[a["image_id"]]].append((a["category_id"], a.get("iscrowd", 0), x, y, x + w, y + h))
    return {k: sorted(v) for k, v in out.items()}


def _assert_same_objects(a: dict, b: dict, atol: float, with_crowd: bool = True) -> None:
    ea, eb = _by_file(a, with_crowd), _by_file(b, with_crowd)
    assert ea.keys() == eb.keys()
    for name in ea:
        assert len(ea[name]) == len(eb[name]), name
        for oa, ob in zip(ea[name], eb[name]):
            assert oa[:2] == ob[:2], name
            np.testing.assert_allclose(oa[2:], ob[2:], atol=atol, rtol=0, err_msg=name)


def _sizes(coco: dict) -> dict[str, tuple[int, int]]:
    return {Path(i["file_name"]).name: (i["width"], i["height"]) for i in coco["images"]}


def test_coco_to_yolo_to_coco_round_trip_keeps_boxes_categories_and_sizes(tmp_path):
    coco = _coco_set(tmp_path / "src")
    labels = write_yolo(coco, tmp_path / "src", tmp_path / "yolo")
    assert (labels / "a.txt").read_text().splitlines()[0].startswith("0 ")  # cat = class 0
    assert (labels / "empty.txt").read_text() == ""  # negatives get an empty label file
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "cat\ndog\n"
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "cat", 1: "dog"} and data["nc"] == 2
    back, images_dir = read_yolo(tmp_path / "yolo")
    assert back["categories"] == CATS
    assert _sizes(back) == _sizes(coco)
    _assert_same_objects(coco, back, atol=1e-3, with_crowd=False)  # YOLO has no crowd regions
    assert (images_dir / "a.png").is_file()


def test_coco_to_voc_to_coco_round_trip_is_exact_and_keeps_crowd_as_difficult(tmp_path):
    coco = _coco_set(tmp_path / "src")
    write_voc(coco, tmp_path / "src", tmp_path / "voc")
    xml = (tmp_path / "voc" / "Annotations" / "a.xml").read_text()
    # pixel-edge box [40, 0, 64, 48] is VOC's 1-based inclusive xmin=41 ymin=1 xmax=64 ymax=48
    assert "<xmin>41</xmin>" in xml and "<ymin>1</ymin>" in xml and "<xmax>64</xmax>" in xml
    back, images_dir = read_voc(tmp_path / "voc")
    assert back["categories"] == CATS
    assert _sizes(back) == _sizes(coco)
    _assert_same_objects(coco, back, atol=1e-9)
    assert (images_dir / "b.png").is_file()


def test_voc_reader_uses_the_one_based_convention_and_reads_missing_sizes(tmp_path):
    voc = tmp_path / "voc"
    _png(voc / "JPEGImages" / "x.png", 40, 50)
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations" / "x.xml").write_text(
        "<annotation><filename>x.png</filename>"
        "<object><name>bird</name><difficult>0</difficult>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>ant</name><bndbox><xmin>5.5</xmin><ymin>6</ymin><xmax>7</xmax><ymax>8</ymax></bndbox></object>"
        "</annotation>"
    )
    coco, _ = read_voc(voc)
    assert coco["images"] == [{"id": 1, "file_name": "x.png", "width": 50, "height": 40}]
    assert coco["categories"] == [{"id": 1, "name": "ant"}, {"id": 2, "name": "bird"}]  # sorted names
    bird = next(a for a in coco["annotations"] if a["category_id"] == 2)
    assert bird["bbox"] == [0.0, 1.0, 10.0, 19.0] and bird["iscrowd"] == 0
    with pytest.raises(DatasetError, match="bird"):
        read_voc(voc, categories=[{"id": 1, "name": "ant"}])


def test_yolo_reader_handles_classes_txt_negatives_segments_and_bad_lines(tmp_path):
    y = tmp_path / "yolo"
    _png(y / "images" / "p.png", 50, 100)
    _png(y / "images" / "q.png", 10, 10)  # no label file: a negative
    (y / "labels").mkdir(parents=True)
    (y / "labels" / "p.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.3 0.2 0.2 0.6\n")
    (y / "classes.txt").write_text("ant\nbee\n")
    coco, _ = read_yolo(y)
    assert coco["categories"] == [{"id": 1, "name": "ant"}, {"id": 2, "name": "bee"}]
    assert [i["file_name"] for i in coco["images"]] == ["p.png", "q.png"]
    bee, ant = coco["annotations"]
    np.testing.assert_allclose(bee["bbox"], [40.0, 15.0, 20.0, 20.0])
    np.testing.assert_allclose(ant["bbox"], [10.0, 10.0, 20.0, 20.0])  # segment -> its bounding box
    (y / "labels" / "q.txt").write_text("2 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    with pytest.raises(DatasetError) as info:
        read_yolo(y)
    assert "q.txt:1: class 2 but only 2 names" in str(info.value) and "q.txt:2" in str(info.value)


def test_yolo_data_yaml_names_mapping_is_read(tmp_path):
    y = tmp_path / "yolo"
    _png(y / "images" / "val" / "p.png", 8, 8)
    (y / "data.yaml").write_text("names:\n  0: zebra\n  1: yak\n")
    coco, images_dir = read_yolo(y, split="val")
    assert coco["categories"] == [{"id": 1, "name": "zebra"}, {"id": 2, "name": "yak"}]
    assert images_dir == y / "images" / "val" and coco["annotations"] == []


def test_convert_dataset_keeps_splits_and_the_result_loads_as_a_detection_dataset(tmp_path):
    src = tmp_path / "coco"
    for split, prefix in (("train", "t_"), ("val", "v_")):
        coco = _coco_set(src / split, prefix)
        (src / split / "annotations.json").write_text(json.dumps(coco))
    written = convert_dataset(src, tmp_path / "yolo", "coco", "yolo")
    assert set(written) == {"train", "val"} and (tmp_path / "yolo" / "labels" / "val" / "v_a.txt").is_file()
    convert_dataset(tmp_path / "yolo", tmp_path / "voc", "yolo", "voc")
    assert (tmp_path / "voc" / "ImageSets" / "Main" / "val.txt").read_text().split() == ["v_a", "v_b", "v_empty"]
    convert_dataset(tmp_path / "voc", tmp_path / "back", "voc", "coco")
    for split in ("train", "val"):
        ds = DetectionDataset(tmp_path / "back", split=split)
        assert ds.cat_ids == [4, 11] and len(ds) == 3
        original = json.loads((src / split / "annotations.json").read_text())
        _assert_same_objects(original, ds.coco, atol=1e-3, with_crowd=False)


def test_voc_writer_rejects_image_names_repeated_across_splits(tmp_path):
    coco = _coco_set(tmp_path / "src")
    write_voc(coco, tmp_path / "src", tmp_path / "voc", split="train")
    with pytest.raises(DatasetError, match="unique image names"):
        write_voc(coco, tmp_path / "src", tmp_path / "voc", split="val")


def test_coco_writer_copies_images_and_read_dataset_finds_the_file(tmp_path):
    coco = _coco_set(tmp_path / "src")
    path = write_coco(coco, tmp_path / "src", tmp_path / "out", split="train")
    assert path == tmp_path / "out" / "train" / "annotations.json" and (tmp_path / "out" / "train" / "a.png").is_file()
    [(split, read, images_dir)] = read_dataset(path, "coco")
    assert split is None and images_dir == path.parent and read["annotations"] == coco["annotations"]


def _load_cli():
    spec = importlib.util.spec_from_file_location("convert_dataset_cli", ROOT / "tools" / "convert_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_converts_and_reports_errors_as_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    cli = _load_cli()
    coco = _coco_set(tmp_path / "src")
    (tmp_path / "src" / "annotations.json").write_text(json.dumps(coco))
    args = ["--from", "coco", "--to", "voc", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "voc")]
    monkeypatch.setattr("sys.argv", ["convert_dataset.py", *args])
    assert cli._run_cli() == 0
    assert (tmp_path / "voc" / "Annotations" / "a.xml").is_file()
    assert "Annotations" in capsys.readouterr().out
    for bad in (["--from", "yolo", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "x")],
                ["--from", "coco", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "src" / "out")]):
        monkeypatch.setattr("sys.argv", ["convert_dataset.py", "--to", "coco", *bad])
        assert cli._run_cli() == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_convert_refuses_file_names_leaving_their_folder_and_writes_nothing(tmp_path):
    """A file_name with '..' used to be joined to --dst: converting overwrote a file beside the output."""
    src, dst = tmp_path / "work" / "src", tmp_path / "out" / "coco"
    _png(tmp_path / "work" / "shared" / "img.png", 10, 10)
    victim = tmp_path / "out" / "shared" / "img.png"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"the user's own file")
    coco = {"images": [{"id": 1, "file_name": "../../shared/img.png", "width": 10, "height": 10}],
            "annotations": [], "categories": CATS}
    (src / "train").mkdir(parents=True)
    (src / "train" / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"1 image file_name entries point outside .*'\.\./\.\./shared/img\.png'"):
        convert_dataset(src, dst, "coco", "coco")
    assert victim.read_bytes() == b"the user's own file" and not dst.exists()
    # an absolute name: YOLO would have written its label file beside the user's image
    coco["images"][0]["file_name"] = str(tmp_path / "work" / "shared" / "img.png")
    (src / "train" / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="point outside"):
        convert_dataset(src, tmp_path / "yolo", "coco", "yolo")
    assert not (tmp_path / "work" / "shared" / "img.txt").exists() and not (tmp_path / "yolo").exists()


def test_convert_refuses_a_destination_equal_to_or_inside_the_source(tmp_path):
    coco = _coco_set(tmp_path / "src")
    (tmp_path / "src" / "annotations.json").write_text(json.dumps(coco))
    for dst in (tmp_path / "src", tmp_path / "src" / "voc"):
        with pytest.raises(ValueError, match="could overwrite the sources"):
            convert_dataset(tmp_path / "src", dst, "coco", "voc")
    with pytest.raises(ValueError, match="could overwrite the sources"):  # a file source: its image folder
        convert_dataset(tmp_path / "src" / "annotations.json", tmp_path / "src", "coco", "yolo")
    assert not (tmp_path / "src" / "voc").exists() and not (tmp_path / "src" / "labels").exists()
    convert_dataset(tmp_path / "src" / "annotations.json", tmp_path / "beside", "coco", "yolo")  # outside: fine


def test_a_voc_file_with_a_wrong_size_is_an_error_before_training(tmp_path):
    from detkit.data.layouts import find_detection_split

    coco = _coco_set(tmp_path / "src")
    write_voc(coco, tmp_path / "src", tmp_path / "voc", split="train")
    xml = tmp_path / "voc" / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>640</width>"))
    from detkit.config import DataConfig

    found = find_detection_split(DataConfig(root=str(tmp_path / "voc")), "train")
    with pytest.raises(DatasetError, match=r"image 1 \(a\.png\): annotated 48x640, file 48x64"):
        DetectionDataset.from_coco(found.coco, found.images_dir, found.source, scan_workers=1)
