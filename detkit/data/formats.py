"""Detection annotation formats: COCO json, YOLO txt and Pascal VOC XML readers and writers, and conversion.

The exchange format is a COCO instances dict plus the folder its ``file_name`` entries are relative to.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from glob import escape as glob_escape
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from detkit.data.detection import load_coco_json
from detkit.data.files import inside_root, resolve_inside, walk_files
from detkit.data.images import DatasetError, is_image_file, scan_image_sizes
from detkit.io import atomic_write_text

__all__ = [
    "FORMATS",
    "convert_dataset",
    "read_coco",
    "read_dataset",
    "read_voc",
    "read_voc_files",
    "voc_split_files",
    "read_yolo",
    "read_yolo_files",
    "read_yolo_yaml",
    "yolo_label_path",
    "yolo_names",
    "write_coco",
    "write_dataset",
    "write_voc",
    "write_yolo",
]

logger = logging.getLogger(__name__)

FORMATS = ("coco", "yolo", "voc")
SPLITS = ("train", "val", "test")
_MAX_LISTED = 10
_YOLO_IDS_KEY = "coco_category_ids"  # extra data.yaml key keeping COCO category ids through YOLO


# ----------------------------------------------------------------------------------------------- helpers


def _error_list(title: str, items: list[str]) -> DatasetError:
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return DatasetError(f"{title} ({len(items)}):\n  " + "\n  ".join(items[:_MAX_LISTED]) + more)


def _list_images(directory: Path) -> list[Path]:
    """Image files under ``directory`` (recursive, symlinks followed once, FIFOs left out), relative to it, sorted."""
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {directory} does not exist")
    files, _ = walk_files(directory)
    return [p.relative_to(directory) for p in files if is_image_file(p)]


def _check_file_names(coco: dict[str, Any], images_dir: str | os.PathLike) -> None:
    """Refuse ``file_name`` entries that leave their folder: writers join them to both ``images_dir`` and ``dst``."""
    inside_root(images_dir, [str(img.get("file_name", "")) for img in coco["images"]], "image file_name entries")


def _copy_image(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and dst.resolve() == src.resolve():
        return
    shutil.copy2(src, dst)


def _check_categories(coco: dict[str, Any], source: str) -> list[dict[str, Any]]:
    cats = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in coco["categories"]), key=lambda c: c["id"])
    if not cats:
        raise DatasetError(f"{source} has no categories")
    names = [c["name"] for c in cats]
    if len(set(names)) != len(names) or len({c["id"] for c in cats}) != len(cats):
        raise DatasetError(f"{source}: category ids and names must be unique, got {cats}")
    return cats


def _xyxy(ann: dict[str, Any]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in ann["bbox"])
    return x, y, x + w, y + h


def _new_coco(images: list[dict], annotations: list[dict], categories: list[dict], description: str) -> dict[str, Any]:
    return {"info": {"description": description}, "images": images, "annotations": annotations, "categories": categories}


def _annotation(ann_id: int, image_id: int, cat_id: int, box: Sequence[float], iscrowd: int = 0) -> dict[str, Any]:
    x1, y1, x2, y2 = box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        "iscrowd": iscrowd,
    }


# -------------------------------------------------------------------------------------------------- COCO


def read_coco(
    annotation_file: str | os.PathLike, images_dir: str | os.PathLike | None = None
) -> tuple[dict[str, Any], Path]:
    """Read a COCO instances file.

    Args:
        annotation_file: the ``.json`` file.
        images_dir: folder its ``file_name`` entries are relative to; ``None`` means the file's folder.

    Returns:
        ``(coco dict, images_dir)``.
    """
    path = Path(annotation_file)
    return load_coco_json(path), Path(images_dir) if images_dir is not None else path.parent


def write_coco(
    coco: dict[str, Any],
    images_dir: str | os.PathLike,
    dst: str | os.PathLike,
    split: str | None = None,
    copy_images: bool = True,
) -> Path:
    """Write ``DST[/split]/annotations.json`` (atomically), copying the images next to it.

    Args:
        coco: COCO instances dict.
        images_dir: folder the ``file_name`` entries of ``coco`` are relative to.
        dst: output root.
        split: sub-folder of ``dst`` (``None``: ``dst`` itself).
        copy_images: also copy every listed image to ``DST[/split]/file_name``.

    Returns:
        The annotation file written.
    """
    _check_file_names(coco, images_dir)
    out_dir = Path(dst) / split if split else Path(dst)
    if copy_images:
        for img in coco["images"]:
            _copy_image(Path(images_dir) / img["file_name"], out_dir / img["file_name"])
    path = out_dir / "annotations.json"
    atomic_write_text(path, json.dumps(coco, separators=(",", ":")))
    return path


# -------------------------------------------------------------------------------------------------- YOLO


def _yolo_dirs(root: Path, split: str | None) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    return (images / split, labels / split) if split else (images, labels)


def read_yolo_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YOLO ``data.yaml`` (ultralytics style) into a mapping.

    Raises:
        FileNotFoundError: when the file does not exist.
        DatasetError: when it is not YAML, not readable as text or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO dataset file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"cannot read YOLO dataset file {path}: {' '.join(str(err).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DatasetError(f"YOLO dataset file {path} must hold a mapping (names:, train:, val:), "
                           f"got {type(data).__name__}")
    return data


def _names_from_yaml(data: dict[str, Any], path: Path) -> tuple[list[str], list[int] | None]:
    """``names`` (a list, or an ``{index: name}`` mapping over ``0..C-1``) and the ``coco_category_ids`` kept by
    :func:`write_yolo`."""
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keyed = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: names keys must be class indices 0..{len(names) - 1}, "
                               f"got {list(names)}") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise DatasetError(f"{path}: names keys must be 0..{len(keyed) - 1}, got {sorted(keyed)}")
        names = [keyed[k] for k in range(len(keyed))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path} needs a non-empty 'names' list or {{index: name}} mapping")
    ids = data.get(_YOLO_IDS_KEY)
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(names)):
        raise DatasetError(f"{path}: {_YOLO_IDS_KEY} must list one id per name ({len(names)}), got {ids!r}")
    return [str(n) for n in names], ids


def yolo_names(yaml_file: str | os.PathLike | None, folders: Sequence[str | os.PathLike] = ()
               ) -> tuple[list[str], list[int] | None, Path]:
    """Class names of a YOLO dataset: ``names`` in ``yaml_file``, else the first ``data.yaml``/``dataset.yaml``
    with names, ``classes.txt`` or ``obj.names`` (one name a line) in ``folders``.

    Returns:
        ``(names, kept category ids or None, the file they came from)``; class ``k`` is ``names[k]``.

    Raises:
        FileNotFoundError: no names anywhere (the message lists the files looked for).
    """
    if yaml_file is not None:
        return (*_names_from_yaml(read_yolo_yaml(yaml_file), Path(yaml_file)), Path(yaml_file))
    tried = []
    for folder in map(Path, folders):
        for name in ("data.yaml", "dataset.yaml"):
            path = folder / name
            tried.append(str(path))
            if path.is_file() and "names" in (data := read_yolo_yaml(path)):
                return (*_names_from_yaml(data, path), path)
        for name in ("classes.txt", "obj.names"):
            path = folder / name
            tried.append(str(path))
            if path.is_file():
                names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
                if names:
                    return names, None, path
    raise FileNotFoundError(f"no class names for the YOLO dataset: looked for {', '.join(tried)} "
                            "(data.yaml with names: [...], or classes.txt with one name a line)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"cannot read {path}: {' '.join(str(err).split())}") from None


def yolo_label_path(image: str | os.PathLike, root: str | os.PathLike) -> Path:
    """The label file of a YOLO image: ``labels/`` mirroring ``images/`` (ultralytics' rule).

    The last ``images`` folder of the image's path below ``root`` becomes ``labels`` and the suffix ``.txt``
    (``train/images/a.jpg`` -> ``train/labels/a.txt``, ``images/val/b.png`` -> ``labels/val/b.txt``); without an
    ``images`` folder the label file sits beside the image. The result stays inside ``root``.
    """
    root, image = Path(root), Path(image)
    parts = list(image.relative_to(root).parts)
    folders = parts[:-1]
    if "images" in folders:
        k = len(folders) - 1 - folders[::-1].index("images")
        parts[k] = "labels"
    return root.joinpath(*parts).with_suffix(".txt")


def _parse_yolo_line(line: str) -> tuple[int, tuple[float, float, float, float]]:
    """``class cx cy w h`` (normalised) or ``class x1 y1 x2 y2 ...`` (segment) → class, normalised xyxy."""
    parts = line.split()
    if len(parts) < 5 or (len(parts) > 5 and len(parts) % 2 == 0):
        raise ValueError(f"expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', got {line!r}")
    cls_f = float(parts[0])
    if not cls_f.is_integer() or cls_f < 0:
        raise ValueError(f"class index must be a non-negative integer, got {parts[0]!r}")
    values = [float(v) for v in parts[1:]]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite coordinates in {line!r}")
    if len(values) == 4:
        cx, cy, w, h = values
        return int(cls_f), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    xs, ys = values[0::2], values[1::2]
    return int(cls_f), (min(xs), min(ys), max(xs), max(ys))


def _yolo_boxes(label_file: Path, size: tuple[int, int], num_classes: int, problems: list[str]
                ) -> list[tuple[int, tuple[float, float, float, float]]]:
    """``(class, pixel xyxy box)`` of each line of ``label_file`` (none when it does not exist); bad lines go to
    ``problems``."""
    if not label_file.is_file():  # no label file (or a FIFO, never opened): a negative
        return []
    try:
        text = label_file.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        problems.append(f"{label_file}: cannot read it ({' '.join(str(err).split())})")
        return []
    h, w = size
    boxes = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            cls, (x1, y1, x2, y2) = _parse_yolo_line(line)
        except ValueError as err:
            problems.append(f"{label_file}:{n}: {err}")
            continue
        if cls >= num_classes:
            problems.append(f"{label_file}:{n}: class {cls} but only {num_classes} names")
            continue
        boxes.append((cls, (x1 * w, y1 * h, x2 * w, y2 * h)))
    return boxes


def read_yolo_files(
    image_files: Sequence[str | os.PathLike],
    root: str | os.PathLike,
    categories: Sequence[dict[str, Any]],
    label_of: Callable[[Path], Path] | None = None,
    workers: int | None = None,
    keep_unreadable: bool = False,
) -> tuple[dict[str, Any], dict[Path, tuple[int, int] | str]]:
    """Read YOLO labels of the given images into a COCO dict, scanning the images once for their sizes.

    Each label line is ``class cx cy w h`` normalised to [0, 1] by the image size (segment lines
    ``class x1 y1 x2 y2 ...`` become their bounding box); an image without a label file is a negative.
    Class ``k`` is ``categories[k]`` (so its COCO id is ``categories[k]["id"]``). Image ids are ``1..N`` in the
    given order.

    Args:
        image_files: the images, each inside ``root``.
        root: the folder ``file_name`` entries are relative to.
        categories: ``[{"id", "name"}]`` in class-index order.
        label_of: label file of an image (default :func:`yolo_label_path` under ``root``).
        workers: threads for the image scan.
        keep_unreadable: keep unreadable images in ``images`` (without sizes or boxes), so a dataset built
            with the returned scan lists them as skipped; otherwise they are left out with a warning.

    Returns:
        ``(coco dict, scan)``: the scan is :func:`~detkit.data.images.scan_image_sizes`' result for the images.

    Raises:
        DatasetError: malformed label lines or class indices outside the names, all listed; images outside ``root``.
    """
    root = Path(root)
    paths = inside_root(root, [os.fspath(p) for p in image_files], "YOLO image paths")
    label_of = label_of or (lambda image: yolo_label_path(image, root))
    sizes = scan_image_sizes(paths, workers=workers)
    images, annotations, problems = [], [], []
    for path in paths:
        size = sizes[path]
        if isinstance(size, str) and not keep_unreadable:
            logger.warning("skipping %s: %s", path, size)
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": path.relative_to(root).as_posix()})
        if isinstance(size, str):
            continue
        images[-1].update(width=size[1], height=size[0])
        for cls, box in _yolo_boxes(label_of(path), size, len(categories), problems):
            annotations.append(_annotation(len(annotations) + 1, image_id, int(categories[cls]["id"]), box))
    if problems:
        raise _error_list(f"invalid YOLO labels for the images under {root}", problems)
    return _new_coco(images, annotations, [dict(c) for c in categories], f"YOLO labels under {root}"), sizes


def read_yolo(
    root: str | os.PathLike, split: str | None = None, workers: int | None = None
) -> tuple[dict[str, Any], Path]:
    """Read a YOLO txt dataset: ``ROOT/images[/split]/...`` and ``ROOT/labels[/split]/....txt``.

    Labels as in :func:`read_yolo_files`. Class names come from ``ROOT/data.yaml`` (``names``) or
    ``ROOT/classes.txt``; COCO category ids are ``1..C`` unless ``data.yaml`` holds ``coco_category_ids``
    (written by :func:`write_yolo`). Image ids are ``1..N`` in sorted path order. Unreadable images are
    skipped with a warning.

    Args:
        root: dataset root.
        split: sub-folder of ``images/`` and ``labels/`` (``None``: no split folders).
        workers: threads reading image sizes.

    Returns:
        ``(coco dict, images_dir)``, ``file_name`` relative to ``images_dir``.

    Raises:
        DatasetError: malformed label lines or class indices outside the names, all listed.
    """
    root = Path(root)
    images_dir, labels_dir = _yolo_dirs(root, split)
    names, ids, _ = yolo_names(None, [root])
    ids = [int(i) for i in ids] if ids is not None else list(range(1, len(names) + 1))
    rel_paths = _list_images(images_dir)
    if not labels_dir.is_dir():
        logger.warning("YOLO label folder %s does not exist: every image is read as a negative", labels_dir)
    coco, _ = read_yolo_files([images_dir / p for p in rel_paths], images_dir,
                              [{"id": i, "name": n} for i, n in zip(ids, names)],
                              label_of=lambda image: (labels_dir / image.relative_to(images_dir)).with_suffix(".txt"),
                              workers=workers)
    coco["info"] = {"description": f"converted from YOLO {root}"}
    return coco, images_dir


def _write_yolo_meta(root: Path, categories: list[dict[str, Any]]) -> None:
    names = [c["name"] for c in categories]
    existing = root / "classes.txt"
    if existing.is_file():
        old = [line.strip() for line in existing.read_text(encoding="utf-8").splitlines() if line.strip()]
        if old != names:
            raise DatasetError(f"{existing} lists classes {old} but this split has {names}")
    splits = sorted(d.name for d in (root / "images").iterdir() if d.is_dir() and d.name in SPLITS)
    data: dict[str, Any] = {"path": str(root.resolve())}
    if splits:
        data.update({s: f"images/{s}" for s in splits})
    else:
        data.update({"train": "images", "val": "images"})
    data.update({"nc": len(names), "names": dict(enumerate(names)), _YOLO_IDS_KEY: [c["id"] for c in categories]})
    atomic_write_text(existing, "\n".join(names) + "\n")
    atomic_write_text(root / "data.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def write_yolo(
    coco: dict[str, Any],
    images_dir: str | os.PathLike,
    dst: str | os.PathLike,
    split: str | None = None,
    copy_images: bool = True,
) -> Path:
    """Write a COCO dict as YOLO txt: ``DST/images[/split]/``, ``DST/labels[/split]/*.txt``, ``classes.txt``, ``data.yaml``.

    Classes are the categories sorted by id (index = position); ``data.yaml`` also records their COCO ids
    (``coco_category_ids``) so :func:`read_yolo` restores them. Boxes are written as normalised
    ``cx cy w h`` with 8 decimals. ``iscrowd`` annotations have no YOLO equivalent and are left out (logged).
    Every image gets a label file (empty for negatives).

    Args:
        coco: COCO instances dict with image ``width``/``height``.
        images_dir: folder the ``file_name`` entries are relative to.
        dst: output root.
        split: sub-folder name under ``images/`` and ``labels/``.
        copy_images: copy the images (otherwise only labels and metadata are written).

    Returns:
        The labels folder written.
    """
    _check_file_names(coco, images_dir)
    dst = Path(dst)
    cats = _check_categories(coco, "COCO dataset")
    index = {c["id"]: i for i, c in enumerate(cats)}
    out_images, out_labels = _yolo_dirs(dst, split)
    lines: dict[int, list[str]] = {img["id"]: [] for img in coco["images"]}
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    crowd = 0
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        w, h = sizes[ann["image_id"]]
        x1, y1, x2, y2 = _xyxy(ann)
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        lines[ann["image_id"]].append(f"{index[ann['category_id']]} {cx:.8f} {cy:.8f} {bw:.8f} {bh:.8f}")
    if crowd:
        logger.warning("%d iscrowd annotations left out: YOLO txt has no ignore regions", crowd)
    for img in coco["images"]:
        rel = Path(img["file_name"])
        atomic_write_text(out_labels / rel.with_suffix(".txt"), "".join(f"{line}\n" for line in lines[img["id"]]))
        if copy_images:
            _copy_image(Path(images_dir) / rel, out_images / rel)
    out_images.mkdir(parents=True, exist_ok=True)
    _write_yolo_meta(dst, cats)
    return out_labels


# ---------------------------------------------------------------------------------------------- Pascal VOC


def _voc_number(value: float) -> str:
    # Integral values stay integers (the usual VOC look); others keep enough digits for a lossless round trip.
    return str(int(round(value))) if abs(value - round(value)) < 1e-9 else format(value, ".10g")


def _xml_text(node: ET.Element, path: str) -> str | None:
    child = node.find(path)
    return child.text.strip() if child is not None and child.text is not None else None


def _voc_categories(names: set[str], categories: Sequence[dict[str, Any]] | None, categories_file: Path | None,
                    source: str) -> list[dict[str, Any]]:
    if categories is None and categories_file is not None and categories_file.is_file():
        try:
            categories = json.loads(_read_text(categories_file))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{categories_file} is not valid JSON: {err}") from None
    if categories is None:
        return [{"id": i, "name": n} for i, n in enumerate(sorted(names), start=1)]
    cats = [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
    unknown = sorted(names - {c["name"] for c in cats})
    if unknown:
        known = [c["name"] for c in cats]
        raise DatasetError(f"VOC objects in {source} name classes not in the categories {known}: {unknown}")
    return sorted(cats, key=lambda c: c["id"])


def _voc_image_name(tree: ET.Element, xml_file: Path, images_dir: Path) -> str:
    """The image of an XML file: its ``<filename>`` when that file exists, else an image named like the XML."""
    file_name = _xml_text(tree, "filename")
    path = resolve_inside(images_dir, file_name) if file_name else None
    if path is not None and path.is_file():
        return file_name
    matches = sorted(p.name for p in images_dir.glob(f"{glob_escape(xml_file.stem)}.*") if is_image_file(p))
    return matches[0] if matches else (file_name or f"{xml_file.stem}.jpg")


def _parse_voc_xml(xml_file: Path, images_dir: Path, problems: list[str]) -> list[Any] | None:
    """``[file_name, width, height, [(name, xyxy box, difficult)]]`` of one XML file (``None`` when bad, the
    problems appended to ``problems``)."""
    try:
        tree = ET.parse(xml_file).getroot()
    except (ET.ParseError, OSError) as err:
        problems.append(f"{xml_file}: {err}")
        return None
    file_name = _voc_image_name(tree, xml_file, images_dir)
    try:
        w, h = int(float(_xml_text(tree, "size/width") or 0)), int(float(_xml_text(tree, "size/height") or 0))
    except ValueError:
        w = h = 0
    objects = []
    for k, obj in enumerate(tree.findall("object")):
        name = _xml_text(obj, "name")
        try:
            tags = ("xmin", "ymin", "xmax", "ymax")
            xmin, ymin, xmax, ymax = (float(_xml_text(obj, f"bndbox/{t}") or "nan") for t in tags)
        except ValueError:
            xmin = math.nan
        if not name or not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            problems.append(f"{xml_file}: object {k} needs <name> and numeric <bndbox> xmin/ymin/xmax/ymax")
            continue
        difficult = (_xml_text(obj, "difficult") or "0") not in ("0", "")
        objects.append((name, (xmin - 1.0, ymin - 1.0, xmax, ymax), int(difficult)))
    return [file_name, w, h, objects]


def read_voc_files(
    xml_files: Sequence[str | os.PathLike],
    images_dir: str | os.PathLike,
    categories: Sequence[dict[str, Any]] | None = None,
    workers: int | None = None,
    categories_file: str | os.PathLike | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Read Pascal VOC XML files whose images are in ``images_dir`` into a COCO dict.

    VOC boxes are 1-based inclusive pixel indices; they become pixel-edge boxes
    ``(xmin - 1, ymin - 1, xmax, ymax)`` (the convention of torchvision and detectron2). Objects marked
    ``difficult`` become ``iscrowd`` annotations: ignored in training and ignore regions in COCO
    evaluation, as VOC's own evaluation treats them. An image is the XML's ``<filename>`` in ``images_dir``
    (an image named like the XML file when that does not exist); names leaving ``images_dir`` are refused.
    Category ids come from ``categories`` (``[{"id", "name"}]``), else ``categories_file`` (written by
    :func:`write_voc`), else ``1..C`` over the sorted class names. Missing or zero ``<size>`` is read from the image.

    Args:
        xml_files: the annotation files, in image-id order.
        images_dir: the image folder.
        categories: explicit category list.
        workers: threads reading image sizes where needed.
        categories_file: a ``categories.json`` to read ids from.
        source: what messages name (default: the first XML file's folder).

    Returns:
        A COCO dict; image ids ``1..N`` in XML order, ``file_name`` relative to ``images_dir``.

    Raises:
        DatasetError: unparsable XML, objects without name or box, image names outside ``images_dir`` or
            unknown class names, all listed.
    """
    images_dir = Path(images_dir)
    xml_files = [Path(p) for p in xml_files]
    source = source or (str(xml_files[0].parent) if xml_files else str(images_dir))
    problems: list[str] = []
    parsed = [p for p in (_parse_voc_xml(x, images_dir, problems) for x in xml_files) if p is not None]
    for file_name, *_ in parsed:
        if resolve_inside(images_dir, file_name) is None:
            problems.append(f"<filename>{file_name}</filename> points outside {images_dir} (absolute or with '..')")
    if problems:
        raise _error_list(f"invalid VOC annotations in {source}", problems)
    need_size = [i for i, p in enumerate(parsed) if p[1] <= 0 or p[2] <= 0]
    sizes = scan_image_sizes([images_dir / parsed[i][0] for i in need_size], workers=workers)
    for i, size in zip(need_size, sizes.values()):
        if isinstance(size, str):
            raise DatasetError(f"{source}: no <size> for {parsed[i][0]} and {size}")
        parsed[i][2], parsed[i][1] = size
    cats = _voc_categories({o[0] for p in parsed for o in p[3]}, categories,
                           Path(categories_file) if categories_file is not None else None, source)
    name_to_id = {c["name"]: c["id"] for c in cats}
    images, annotations = [], []
    for image_id, (file_name, w, h, objects) in enumerate(parsed, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for name, box, crowd in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, name_to_id[name], box, crowd))
    return _new_coco(images, annotations, cats, f"Pascal VOC {source}")


def voc_split_files(root: str | os.PathLike, split: str) -> list[Path]:
    """The XML files of a VOC split: the ids in ``ROOT/ImageSets/Main/<split>.txt`` in ``ROOT/Annotations``.

    Raises:
        FileNotFoundError: the list does not exist.
        DatasetError: an id names a path outside ``Annotations``.
    """
    root = Path(root)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"VOC split list {listing} does not exist")
    stems = [line.split()[0] for line in _read_text(listing).splitlines() if line.strip()]
    return inside_root(root / "Annotations", [f"{s}.xml" for s in stems], f"image ids of {listing}")


def read_voc(
    root: str | os.PathLike,
    split: str | None = None,
    categories: Sequence[dict[str, Any]] | None = None,
    workers: int | None = None,
) -> tuple[dict[str, Any], Path]:
    """Read Pascal VOC XML: ``ROOT/Annotations/*.xml``, images in ``ROOT/JPEGImages/`` (see :func:`read_voc_files`).

    Category ids come from ``categories``, else ``ROOT/categories.json`` (written by :func:`write_voc`), else
    ``1..C`` over the sorted class names.

    Args:
        root: dataset root.
        split: read only the ids in ``ROOT/ImageSets/Main/<split>.txt`` (``None``: every XML file).
        categories: explicit category list.
        workers: threads reading image sizes where needed.

    Returns:
        ``(coco dict, ROOT/JPEGImages)``; image ids ``1..N`` in XML order.

    Raises:
        DatasetError: unparsable XML, objects without name or box, or unknown class names, all listed.
    """
    root = Path(root)
    ann_dir, images_dir = root / "Annotations", root / "JPEGImages"
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"VOC annotation folder {ann_dir} does not exist")
    xml_files = voc_split_files(root, split) if split is not None else sorted(ann_dir.glob("*.xml"))
    coco = read_voc_files(xml_files, images_dir, categories, workers, categories_file=root / "categories.json",
                          source=str(ann_dir))
    coco["info"] = {"description": f"converted from Pascal VOC {root}"}
    return coco, images_dir


def _voc_xml(img: dict[str, Any], objects: list[tuple[str, tuple[float, ...], int]]) -> str:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = Path(img["file_name"]).name
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(img["width"])
    ET.SubElement(size, "height").text = str(img["height"])
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "0"
    for name, (x1, y1, x2, y2), difficult in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(difficult)
        box = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1.0, y1 + 1.0, x2, y2)):
            ET.SubElement(box, tag).text = _voc_number(value)
    ET.indent(ann)
    return ET.tostring(ann, encoding="unicode") + "\n"


def write_voc(
    coco: dict[str, Any],
    images_dir: str | os.PathLike,
    dst: str | os.PathLike,
    split: str | None = None,
    copy_images: bool = True,
) -> Path:
    """Write a COCO dict as Pascal VOC: ``DST/Annotations/*.xml``, ``DST/JPEGImages/``, ``DST/categories.json``.

    The inverse of :func:`read_voc`'s conventions: boxes become ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2,
    ymax = y2`` (integers when integral, else exact decimals); ``iscrowd`` → ``difficult``. Images are
    named by their base name, which must be unique across everything written to ``DST``; with ``split`` the
    image stems are listed in ``DST/ImageSets/Main/<split>.txt``.

    Args:
        coco: COCO instances dict with image ``width``/``height``.
        images_dir: folder the ``file_name`` entries are relative to.
        dst: output root.
        split: split list to write under ``ImageSets/Main``.
        copy_images: copy the images into ``JPEGImages`` (any format, name kept).

    Returns:
        The ``Annotations`` folder.

    Raises:
        DatasetError: two images with the same base name, or categories clashing with an existing
            ``DST/categories.json``.
    """
    _check_file_names(coco, images_dir)
    dst = Path(dst)
    cats = _check_categories(coco, "COCO dataset")
    cat_file = dst / "categories.json"
    if cat_file.is_file():
        old = json.loads(cat_file.read_text(encoding="utf-8"))
        if old != cats:
            raise DatasetError(f"{cat_file} holds categories {old} but this split has {cats}")
    id_to_name = {c["id"]: c["name"] for c in cats}
    objects: dict[int, list[tuple[str, tuple[float, ...], int]]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        objects[ann["image_id"]].append((id_to_name[ann["category_id"]], _xyxy(ann), int(bool(ann.get("iscrowd", 0)))))
    ann_dir, jpeg_dir = dst / "Annotations", dst / "JPEGImages"
    stems = [Path(img["file_name"]).stem for img in coco["images"]]
    taken: set[str] = set()  # stems listed by the other splits already written to dst
    for listing in (dst / "ImageSets" / "Main").glob("*.txt"):
        if listing.stem != split:
            taken.update(line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip())
    counts = Counter(stems)
    clashes = sorted({s for s in stems if counts[s] > 1 or s in taken})
    if clashes:
        raise DatasetError(
            f"VOC needs unique image names across splits; these stems repeat or belong to another split in {dst}: "
            f"{clashes[:_MAX_LISTED]} ({len(clashes)} in all)"
        )
    for img, stem in zip(coco["images"], stems):
        atomic_write_text(ann_dir / f"{stem}.xml", _voc_xml(img, objects[img["id"]]))
        if copy_images:
            _copy_image(Path(images_dir) / img["file_name"], jpeg_dir / Path(img["file_name"]).name)
    if split:
        atomic_write_text(dst / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{s}\n" for s in stems))
    atomic_write_text(cat_file, json.dumps(cats, indent=1) + "\n")
    jpeg_dir.mkdir(parents=True, exist_ok=True)
    return ann_dir


# ---------------------------------------------------------------------------------------------- conversion


def read_dataset(
    src: str | os.PathLike, fmt: str, images_dir: str | os.PathLike | None = None, workers: int | None = None
) -> list[tuple[str | None, dict[str, Any], Path]]:
    """Read every split of a dataset in ``fmt``.

    Splits: COCO ``SRC/annotations.json`` (one split) or ``SRC/{train,val,test}/annotations.json``, or
    ``SRC`` itself a ``.json`` file (images in ``images_dir`` or beside it); YOLO ``SRC/images/{train,val,
    test}/`` or ``SRC/images/``; VOC ``SRC/ImageSets/Main/{train,val,test}.txt`` or every XML file.

    Args:
        src: dataset root (or COCO annotation file).
        fmt: one of :data:`FORMATS`.
        images_dir: COCO only: image folder of an annotation file given as ``src``.
        workers: threads reading image sizes.

    Returns:
        ``[(split or None, coco dict, images_dir)]``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"source dataset {src} does not exist")
    if fmt == "coco":
        if src.is_file():
            return [(None, *read_coco(src, images_dir))]
        if (src / "annotations.json").is_file():
            return [(None, *read_coco(src / "annotations.json"))]
        found = [s for s in SPLITS if (src / s / "annotations.json").is_file()]
        if not found:
            raise FileNotFoundError(f"no COCO annotations in {src}: expected annotations.json or <split>/annotations.json")
        return [(s, *read_coco(src / s / "annotations.json")) for s in found]
    if fmt == "yolo":
        found = [s for s in SPLITS if (src / "images" / s).is_dir()]
        return [(s, *read_yolo(src, s, workers)) for s in found] or [(None, *read_yolo(src, None, workers))]
    found = [s for s in SPLITS if (src / "ImageSets" / "Main" / f"{s}.txt").is_file()]
    return [(s, *read_voc(src, s, workers=workers)) for s in found] or [(None, *read_voc(src, workers=workers))]


def write_dataset(
    coco: dict[str, Any],
    images_dir: str | os.PathLike,
    dst: str | os.PathLike,
    fmt: str,
    split: str | None = None,
    copy_images: bool = True,
) -> Path:
    """Write one split in ``fmt`` (see :func:`write_coco`, :func:`write_yolo`, :func:`write_voc`)."""
    writers = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}
    if fmt not in writers:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return writers[fmt](coco, images_dir, dst, split=split, copy_images=copy_images)


def _check_destination(src: Path, dst: Path, images_dir: str | os.PathLike | None) -> None:
    """Refuse a ``dst`` equal to or inside the source folder (or the file source's image folder)."""
    folder = src if not src.is_file() else Path(images_dir) if images_dir is not None else src.parent
    target = dst.resolve()
    if src.is_file() and target == src.resolve():
        raise ValueError(f"dst {dst} is the source annotation file itself; choose an output folder elsewhere")
    if target.is_relative_to(folder.resolve()):
        where = "the source folder" if target == folder.resolve() else "inside the source folder"
        raise ValueError(f"dst {dst} is {where} {folder}: converting there could overwrite the sources (and a second "
                         "run would read its own output); choose an output folder outside it")


def convert_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    src_format: str,
    dst_format: str,
    copy_images: bool = True,
    images_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> dict[str | None, Path]:
    """Convert a detection dataset between COCO, YOLO and Pascal VOC, split by split.

    Every split is read and checked before anything is written; ``file_name`` entries leaving their folder
    (absolute, or with ``..``) are refused, so nothing is read or written outside ``src`` and ``dst``.

    Args:
        src: source root (or COCO annotation file).
        dst: output root; neither ``src`` (or the image folder of a ``src`` file) nor a folder inside it, where
            the output could overwrite the sources.
        src_format, dst_format: each one of :data:`FORMATS`.
        copy_images: copy the images into the output layout.
        images_dir: COCO source given as a file: its image folder.
        workers: threads reading image sizes.

    Returns:
        ``{split or None: path written}`` (annotation file or folder per split).
    """
    for name, fmt in (("src_format", src_format), ("dst_format", dst_format)):
        if fmt not in FORMATS:
            raise ValueError(f"{name} must be one of {FORMATS}, got {fmt!r}")
    _check_destination(Path(src), Path(dst), images_dir)
    written = {}
    splits = read_dataset(src, src_format, images_dir, workers)
    for split, coco, img_dir in splits:
        _check_file_names(coco, img_dir)
    for split, coco, img_dir in splits:
        written[split] = write_dataset(coco, img_dir, dst, dst_format, split, copy_images)
        logger.info(
            "%s%s: %d images, %d annotations → %s",
            src, f" [{split}]" if split else "", len(coco["images"]), len(coco["annotations"]), written[split],
        )
    return written
