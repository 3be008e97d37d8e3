"""One tiny detection dataset written in every layout detkit trains on, in plain json/yaml/XML (not detkit's writers).

``SPLITS`` is the ground truth; each builder writes it under a folder and returns what ``data.root`` is set to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from data_testutils import save_rgb

# (stem, height, width, [(class name, x1, y1, x2, y2) in pixels]); "c" is a negative
SPLITS = {
    "train": [
        ("a", 48, 64, [("dog", 4, 6, 30, 40), ("cat", 35, 10, 60, 44)]),
        ("b", 40, 56, [("cat", 2, 2, 20, 30)]),
        ("c", 36, 36, []),
    ],
    "val": [
        ("d", 44, 60, [("dog", 10, 8, 50, 40)]),
        ("e", 32, 48, [("cat", 5, 5, 40, 28), ("dog", 0, 0, 10, 12)]),
    ],
}
NAMES = ["dog", "cat"]  # YOLO class k is NAMES[k]
COCO_IDS = {"dog": 4, "cat": 11}  # non-contiguous on purpose


def _images(folder: Path, split: str, ext: str = ".png") -> None:
    for k, (stem, h, w, _) in enumerate(SPLITS[split]):
        rgb = np.random.default_rng(k + 10 * len(split)).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        save_rgb(folder / f"{stem}{ext}", rgb)


def coco_dict(split: str, prefix: str = "", ext: str = ".png") -> dict:
    images, anns = [], []
    for i, (stem, h, w, boxes) in enumerate(SPLITS[split], start=1):
        images.append({"id": i, "file_name": f"{prefix}{stem}{ext}", "width": w, "height": h})
        for name, x1, y1, x2, y2 in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": COCO_IDS[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": COCO_IDS[n], "name": n} for n in NAMES]
    return {"images": images, "annotations": anns, "categories": cats}


def _json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _yolo_labels(folder: Path, split: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, h, w, boxes in SPLITS[split]:
        lines = [f"{NAMES.index(n)} {(x1 + x2) / 2 / w:.8f} {(y1 + y2) / 2 / h:.8f} "
                 f"{(x2 - x1) / w:.8f} {(y2 - y1) / h:.8f}" for n, x1, y1, x2, y2 in boxes]
        if lines or stem != "c":  # the negative has no label file at all
            (folder / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))


def _voc_xml(folder: Path, split: str, with_size: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, h, w, boxes in SPLITS[split]:
        objects = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
                          f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                          for n, x1, y1, x2, y2 in boxes)
        size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if with_size else ""
        (folder / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{size}{objects}</annotation>")


# ------------------------------------------------------------------------------------------------ layouts


def coco_beside(root: Path) -> Path:
    for split in SPLITS:
        _images(root / split, split)
        _json(root / split / "annotations.json", coco_dict(split))
    return root


def coco_images_folder(root: Path) -> Path:
    """``ROOT/<split>/annotations.json`` with the images in ``ROOT/<split>/images/`` (file_name without images/)."""
    for split in SPLITS:
        _images(root / split / "images", split)
        _json(root / split / "annotations.json", coco_dict(split))
    return root


def coco_roboflow(root: Path) -> Path:
    """Roboflow's COCO export: ``train/``, ``valid/`` with ``_annotations.coco.json`` beside the images."""
    for split, folder in (("train", "train"), ("val", "valid")):
        _images(root / folder, split, ".jpg")
        _json(root / folder / "_annotations.coco.json", coco_dict(split, ext=".jpg"))
    return root


def coco_2017(root: Path) -> Path:
    for split in SPLITS:
        _images(root / f"{split}2017", split)
        _json(root / "annotations" / f"instances_{split}2017.json", coco_dict(split))
    return root


def coco_file(root: Path) -> Path:
    """``--data`` is the train annotation file of a Roboflow export; val is found beside it."""
    return coco_roboflow(root) / "train" / "_annotations.coco.json"


def yolo_roboflow(root: Path) -> Path:
    """Roboflow's YOLO export: ``data.yaml`` (``../train/images``), ``train|valid/{images,labels}``."""
    for split, folder in (("train", "train"), ("val", "valid")):
        _images(root / folder / "images", split, ".jpg")
        _yolo_labels(root / folder / "labels", split)
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
                                    f"nc: 2\nnames: {json.dumps(NAMES)}\n")
    return root


def yolo_yaml_file(root: Path) -> Path:
    """ultralytics style: ``--data`` is the yaml; ``path``, a list file for train, a list for val, names mapping."""
    ds = root / "ds"
    for split in SPLITS:
        _images(ds / "images" / split, split)
        _yolo_labels(ds / "labels" / split, split)
    (ds / "train.txt").write_text("".join(f"./images/train/{s}.png\n" for s, *_ in SPLITS["train"]))
    (root / "cfg").mkdir(parents=True)
    (root / "cfg" / "shapes.yaml").write_text("path: ../ds\ntrain: train.txt\nval: [images/val]\n"
                                              "names:\n  0: dog\n  1: cat\n")
    return root / "cfg" / "shapes.yaml"


def yolo_folders(root: Path) -> Path:
    """No yaml: ``images/<split>``, ``labels/<split>``, ``classes.txt``."""
    for split in SPLITS:
        _images(root / "images" / split, split)
        _yolo_labels(root / "labels" / split, split)
    (root / "classes.txt").write_text("dog\ncat\n")
    return root


def voc_devkit(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for split in SPLITS:
        _images(voc / "JPEGImages", split, ".jpg")
        _voc_xml(voc / "Annotations", split)
        main = voc / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        (main / f"{split}.txt").write_text("".join(f"{s}\n" for s, *_ in SPLITS[split]))
    return root


def voc_split_folders(root: Path) -> Path:
    """``<split>/Annotations`` + ``<split>/JPEGImages``, one without ``<size>`` (read from the images)."""
    for split in SPLITS:
        _images(root / split / "JPEGImages", split, ".jpg")
        _voc_xml(root / split / "Annotations", split, with_size=split == "train")
    return root


def voc_beside(root: Path) -> Path:
    """Roboflow's VOC export: XML files beside the images in ``train/`` and ``valid/``."""
    for split, folder in (("train", "train"), ("val", "valid")):
        _images(root / folder, split, ".jpg")
        _voc_xml(root / folder, split)
    return root


LAYOUTS: dict[str, Callable[[Path], Path]] = {
    f.__name__: f for f in (coco_beside, coco_images_folder, coco_roboflow, coco_2017, coco_file, yolo_roboflow,
                            yolo_yaml_file, yolo_folders, voc_devkit, voc_split_folders, voc_beside)
}
