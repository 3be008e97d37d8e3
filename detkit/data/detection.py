"""COCO-layout detection datasets: annotation validation, samples with boxes in pixels, and batch collation.

Category ids are kept as the annotation file has them; models see contiguous labels ``0..C-1`` mapped both ways.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detkit.data.classification import image_to_tensor
from detkit.data.files import resolve_inside
from detkit.data.images import read_image, scan_image_sizes
from detkit.data.seeding import SeededTransform
from detkit.errors import DatasetError

__all__ = [
    "DetectionDataset",
    "DetectionRecord",
    "ValidationSummary",
    "detection_collate",
    "load_coco_json",
    "validate_coco",
]

logger = logging.getLogger(__name__)

_MAX_LISTED = 10  # problems named per kind in one error message; the count covers the rest


@dataclass
class DetectionRecord:
    """One image of a detection dataset after validation.

    Attributes:
        image_id: COCO image id.
        path: image file.
        height, width: image size in pixels (from the annotation file, or read from the file when absent).
        boxes: ``ndarray[K, 4]`` float32 training boxes in ``(x1, y1, x2, y2)`` pixels, clipped to the image.
        labels: ``ndarray[K]`` int64 contiguous labels ``0..C-1``.
        crowd_boxes: ``ndarray[M, 4]`` float32 ``iscrowd`` regions (ignored in training, ignore regions in eval).
    """

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd_boxes: np.ndarray


@dataclass
class ValidationSummary:
    """What validation found in a detection annotation file; ``str()`` gives a one-paragraph report."""

    annotation_file: str = ""
    num_images: int = 0  # images listed in the file
    num_annotations: int = 0  # annotations listed in the file
    num_boxes: int = 0  # training boxes kept (not crowd, positive area after clipping)
    num_crowd: int = 0  # iscrowd annotations kept as eval ignore regions
    num_clipped: int = 0  # boxes that reached outside their image and were clipped to it
    num_degenerate: int = 0  # zero/negative-area or non-finite boxes dropped
    num_negative_images: int = 0  # usable images without any training box (valid negatives)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable images (path, reason), left out
    boxes_per_category: dict[str, int] = field(default_factory=dict)  # kept training boxes by category name

    @property
    def num_used_images(self) -> int:
        """Images the dataset serves (listed minus skipped)."""
        return self.num_images - len(self.skipped)

    def __str__(self) -> str:
        lines = [
            f"{self.annotation_file}: {self.num_used_images}/{self.num_images} images used "
            f"({self.num_negative_images} without boxes), {self.num_boxes} boxes, {self.num_crowd} crowd regions; "
            f"{self.num_clipped} boxes clipped to their image, {self.num_degenerate} empty boxes dropped, "
            f"{len(self.skipped)} unreadable images skipped"
        ]
        if self.boxes_per_category:
            lines.append("boxes per category: " + ", ".join(f"{k}={v}" for k, v in self.boxes_per_category.items()))
        for path, reason in self.skipped[:_MAX_LISTED]:
            lines.append(f"  skipped {path}: {reason}")
        if len(self.skipped) > _MAX_LISTED:
            lines.append(f"  ... and {len(self.skipped) - _MAX_LISTED} more skipped")
        return "\n".join(lines)


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO instances file and check its top-level structure.

    Args:
        path: the ``.json`` file.

    Returns:
        The parsed dict with lists ``images``, ``annotations`` (may be empty) and ``categories``.

    Raises:
        FileNotFoundError: when the file does not exist.
        DatasetError: when it cannot be read, is not JSON or lacks those lists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"annotation file {path} is not valid JSON: {err}") from None
    except OSError as err:  # unreadable: permissions, I/O error
        raise DatasetError(f"cannot read annotation file {path}: {err.strerror or err}") from None
    if not isinstance(coco, dict):
        raise DatasetError(f"annotation file {path} must hold a JSON object, got {type(coco).__name__}")
    coco.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(f"annotation file {path} needs a list {key!r} (COCO instances format)")
    return coco


def _listing(kind: str, items: list[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    more = f"; ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {kind}: {shown}{more}"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        return None
    return int(value)


@dataclass
class _Checked:
    categories: list[dict[str, Any]]
    images: list[dict[str, Any]]  # with "id", "file_name", "path", maybe "width"/"height"
    anns_by_image: dict[int, list[dict[str, Any]]]


def _check_structure(coco: dict[str, Any], images_dir: Path, check_files: bool, source: str) -> _Checked:
    """Collect every structural problem (unknown ids, missing files, malformed entries) into one error."""
    cats, problems = _check_categories(coco["categories"])
    images, image_problems = _check_images(coco["images"], images_dir, check_files)
    anns_by_image, ann_problems = _check_annotations(coco["annotations"], {c["id"] for c in cats},
                                                     {i["id"] for i in images})
    problems += image_problems + ann_problems
    if problems:
        raise DatasetError(f"invalid detection annotations in {source}:\n  " + "\n  ".join(problems))
    return _Checked(sorted(cats, key=lambda c: c["id"]), images, anns_by_image)


def _check_categories(entries: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """``[{"id", "name"}]`` of the well-formed categories, and the problems found."""
    cats, bad = [], []
    for c in entries:
        cid = _as_int(c.get("id")) if isinstance(c, dict) else None
        if cid is None or not isinstance(c.get("name"), str):
            bad.append(repr(c)[:80])
        else:
            cats.append({"id": cid, "name": c["name"]})
    problems = []
    if bad:
        problems.append(_listing("categories without an integer 'id' and a 'name'", bad))
    duplicates = [str(k) for k, n in Counter(c["id"] for c in cats).items() if n > 1]
    if duplicates:
        problems.append(_listing("duplicate category ids", duplicates))
    same_name = [f"{name!r} (ids {', '.join(str(c['id']) for c in cats if c['name'] == name)})"
                 for name, n in Counter(c["name"] for c in cats).items() if n > 1]
    if same_name:
        problems.append(_listing("category names used by more than one category (labels would be ambiguous)",
                                 same_name))
    if not cats and not bad:
        problems.append("no categories ('categories' is empty)")
    return cats, problems


def _check_images(entries: list[Any], images_dir: Path, check_files: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The well-formed image entries (``id``, ``file_name``, ``path``, sizes when given), and the problems."""
    images, bad, missing, outside = [], [], [], []
    for img in entries:
        iid = _as_int(img.get("id")) if isinstance(img, dict) else None
        name = img.get("file_name") if isinstance(img, dict) else None
        if iid is None or not isinstance(name, str) or not name:
            bad.append(repr(img)[:80])
            continue
        entry = {"id": iid, "file_name": name, "path": resolve_inside(images_dir, name)}
        if entry["path"] is None:  # absolute, or climbing out with '..': never read files outside the dataset
            outside.append(f"image {iid}: {name!r}")
        for key in ("width", "height"):
            if key in img:
                v = _as_int(img[key])
                if v is None or v < 1:
                    bad.append(f"image {iid} ({name}) has {key}={img[key]!r}")
                entry[key] = v
        # exists(), not is_file(): a FIFO or folder named like an image is reported unreadable by the scan
        if check_files and entry["path"] is not None and not entry["path"].exists():
            missing.append(f"image {iid}: {entry['path']}")
        images.append(entry)
    problems = []
    if bad:
        problems.append(_listing("malformed image entries (need integer 'id', 'file_name', positive sizes)", bad))
    if outside:
        problems.append(_listing(f"image file_name entries outside the image folder {images_dir} (absolute or with "
                                 "'..'; they must be relative paths inside it)", outside))
    duplicates = [str(k) for k, n in Counter(i["id"] for i in images).items() if n > 1]
    if duplicates:
        problems.append(_listing("duplicate image ids", duplicates))
    if missing:
        problems.append(_listing(f"image files missing under {images_dir}", missing))
    return images, problems


def _check_annotations(entries: list[Any], cat_ids: set[int], image_ids: set[int]
                       ) -> tuple[dict[int, list[dict[str, Any]]], list[str]]:
    """The well-formed annotations of known categories and images, by image id, and the problems."""
    anns_by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in image_ids}
    unknown_cat, unknown_img, bad = [], [], []
    for a in entries:
        if not isinstance(a, dict):
            bad.append(repr(a)[:80])
            continue
        aid = a.get("id", "?")
        bbox = a.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
        ):
            bad.append(f"annotation {aid} has bbox={bbox!r} (expected [x, y, w, h])")
            continue
        cid, iid = _as_int(a.get("category_id")), _as_int(a.get("image_id"))
        if cid not in cat_ids:
            unknown_cat.append(f"annotation {aid}: category_id={a.get('category_id')!r}")
        if iid not in image_ids:
            unknown_img.append(f"annotation {aid}: image_id={a.get('image_id')!r}")
        if cid in cat_ids and iid in image_ids:
            anns_by_image[iid].append(a)
    problems = []
    if bad:
        problems.append(_listing("malformed annotations", bad))
    if unknown_cat:
        problems.append(_listing(f"annotations with unknown category ids (known: {sorted(cat_ids)})", unknown_cat))
    if unknown_img:
        problems.append(_listing("annotations naming images that are not listed", unknown_img))
    return anns_by_image, problems


def _clean_box(bbox: Sequence[float], width: int, height: int) -> tuple[list[float] | None, bool]:
    """COCO ``[x, y, w, h]`` → clipped ``[x1, y1, x2, y2]``; ``(None, _)`` when empty or non-finite."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, False
    x1, y1, x2, y2 = x, y, x + w, y + h
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    clipped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    if cx2 <= cx1 or cy2 <= cy1:
        return None, clipped
    return [cx1, cy1, cx2, cy2], clipped


def validate_coco(
    coco: dict[str, Any],
    images_dir: str | os.PathLike,
    check_files: bool = True,
    scan_workers: int | None = None,
    source: str = "annotations",
    image_sizes: Mapping[Path, tuple[int, int] | str] | None = None,
) -> tuple[list[DetectionRecord], list[dict[str, Any]], dict[str, Any], ValidationSummary]:
    """Validate a COCO instances dict against its image folder, in one pass.

    Rules: annotations naming unknown category ids or unlisted images, malformed entries, two categories
    with one name, ``file_name`` entries leaving the image folder (absolute, or with ``..``) and (with
    ``check_files``) image files that do not exist are collected into one :class:`DatasetError` listing
    the first few of each kind and their count. Boxes reaching outside the image are clipped; boxes with
    zero or negative area after clipping (or non-finite values) are dropped and counted. ``iscrowd``
    annotations are not training boxes: they are kept in ``crowd_boxes`` and in the returned COCO dict,
    where COCOeval treats them as ignore regions. With ``check_files`` every image is decoded once in
    parallel (:func:`~detkit.data.images.scan_image_sizes`): unreadable ones (FIFOs included) are skipped
    and listed, and a ``width``/``height`` that differs from the file's is an error, listed with the others
    of its kind (boxes would be scaled wrongly). Images without boxes are valid negatives; an annotation
    list that is empty altogether is logged as a warning.

    Args:
        coco: parsed COCO instances dict (see :func:`load_coco_json`).
        images_dir: folder the images' ``file_name`` are relative to.
        check_files: check existence, readability and sizes of the image files.
        scan_workers: threads for the readability scan (``None``: default).
        source: name of the annotation source used in messages.
        image_sizes: the result of a :func:`~detkit.data.images.scan_image_sizes` already made over these
            images (e.g. by a YOLO reader, which needs the sizes); they are not read again.

    Returns:
        ``(records, categories, clean_coco, summary)``: one :class:`DetectionRecord` per usable image in file
        order; categories ``[{"id", "name"}]`` sorted by id; the cleaned COCO dict (skipped images and
        dropped boxes removed, boxes clipped, ``area``/``iscrowd`` filled in) for evaluation; the summary.

    Raises:
        DatasetError: the structural problems above, all listed in one message.
    """
    images_dir = Path(images_dir)
    checked = _check_structure(coco, images_dir, check_files, source)
    summary = ValidationSummary(annotation_file=source, num_images=len(checked.images))
    summary.num_annotations = sum(len(v) for v in checked.anns_by_image.values())
    if not coco["annotations"]:
        logger.warning("%s has no annotations at all: every image is a negative (is this the right file?)", source)
    bad = _unreadable_images(checked.images, check_files, scan_workers, image_sizes, source)

    cat_id_to_label = {c["id"]: i for i, c in enumerate(checked.categories)}
    per_cat: Counter[int] = Counter()
    records, clean_images, clean_anns = [], [], []
    for img in checked.images:
        if img["path"] in bad:
            summary.skipped.append((str(img["path"]), bad[img["path"]]))
            continue
        record, anns = _clean_image(img, checked.anns_by_image[img["id"]], cat_id_to_label, summary)
        per_cat.update(record.labels.tolist())
        records.append(record)
        clean_images.append(_coco_image(img))
        clean_anns += anns
    names = [c["name"] for c in checked.categories]
    summary.boxes_per_category = {names[k]: per_cat[k] for k in range(len(names))}
    _renumber_annotations(clean_anns)
    clean = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    clean.update(images=clean_images, annotations=clean_anns, categories=[dict(c) for c in checked.categories])
    return records, checked.categories, clean, summary


def _unreadable_images(images: list[dict[str, Any]], check_files: bool, scan_workers: int | None,
                       image_sizes: Mapping[Path, tuple[int, int] | str] | None, source: str) -> dict[Path, str]:
    """``{path: reason}`` of the images that cannot be used; fills in ``width``/``height`` where missing.

    With ``check_files`` (or ``image_sizes``) every file is decoded once in parallel and the annotated sizes are
    checked against the files'; otherwise sizes are read only from the files that do not give them (they are
    needed to clip boxes).
    """
    sizes: dict[Path, tuple[int, int] | str] = dict(image_sizes or {})
    if check_files:
        sizes.update(scan_image_sizes([i["path"] for i in images if i["path"] not in sizes], workers=scan_workers))
    else:
        need = [i["path"] for i in images if not ("width" in i and "height" in i) and i["path"] not in sizes]
        sizes.update(scan_image_sizes(need, workers=scan_workers))
    bad = {p: r for p, r in sizes.items() if isinstance(r, str)}
    wrong = []
    for img in images:
        size = sizes.get(img["path"])
        if size is None or isinstance(size, str):
            continue
        if "width" in img and "height" in img and (img["height"], img["width"]) != size:
            rotated = " (the file's EXIF orientation rotates it)" if (img["width"], img["height"]) == size else ""
            wrong.append(f"image {img['id']} ({img['file_name']}): annotated {img['height']}x{img['width']}, "
                         f"file {size[0]}x{size[1]}{rotated}")
        img["height"], img["width"] = size
    if wrong:
        raise DatasetError(f"invalid detection annotations in {source}:\n  "
                           + _listing("images whose width/height (HxW) differ from the file's; the boxes would "
                                      "be scaled wrongly: fix the sizes in the annotations", wrong))
    return bad


def _clean_image(img: dict[str, Any], anns: list[dict[str, Any]], cat_id_to_label: dict[int, int],
                 summary: ValidationSummary) -> tuple[DetectionRecord, list[dict[str, Any]]]:
    """One image's record (clipped boxes, labels, crowd regions) and its cleaned COCO annotations; counts go
    to ``summary``."""
    w, h = img["width"], img["height"]
    boxes, labels, crowd, clean_anns = [], [], [], []
    for a in anns:
        box, clipped = _clean_box(a["bbox"], w, h)
        summary.num_clipped += int(clipped and box is not None)
        if box is None:
            summary.num_degenerate += 1
            continue
        is_crowd = bool(a.get("iscrowd", 0))
        x1, y1, x2, y2 = box
        area = a.get("area")
        if not isinstance(area, (int, float)) or isinstance(area, bool) or not area > 0:
            area = (x2 - x1) * (y2 - y1)
        clean = dict(a, bbox=[x1, y1, x2 - x1, y2 - y1], area=float(area), iscrowd=int(is_crowd))
        clean["image_id"], clean["category_id"] = img["id"], int(a["category_id"])
        clean_anns.append(clean)
        if is_crowd:
            crowd.append(box)
        else:
            boxes.append(box)
            labels.append(cat_id_to_label[int(a["category_id"])])
    summary.num_boxes += len(boxes)
    summary.num_crowd += len(crowd)
    summary.num_negative_images += int(not boxes)
    record = DetectionRecord(
        image_id=img["id"],
        path=img["path"],
        height=h,
        width=w,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        crowd_boxes=np.asarray(crowd, dtype=np.float32).reshape(-1, 4),
    )
    return record, clean_anns


def _renumber_annotations(anns: list[dict[str, Any]]) -> None:
    """COCOeval indexes ground truth by annotation id: give missing or repeated ids fresh ones, in place."""
    next_id = max([_as_int(a.get("id")) or 0 for a in anns] + [0]) + 1
    seen: set[int] = set()
    for a in anns:
        aid = _as_int(a.get("id"))
        if aid is None or aid in seen:
            aid, next_id = next_id, next_id + 1
        a["id"] = aid
        seen.add(aid)


def _coco_image(img: dict[str, Any]) -> dict[str, Any]:
    """The COCO ``images`` entry for a checked image: ``id``, ``file_name``, ``width``, ``height``."""
    return {"id": img["id"], "file_name": img["file_name"], "width": img["width"], "height": img["height"]}


class DetectionDataset(SeededTransform, Dataset):
    """Detection samples from COCO instances annotations (``torchvision.datasets.CocoDetection``-like).

    Layouts:
        * ``DetectionDataset(ROOT, split="train")``: ``ROOT/train/annotations.json``, images under ``ROOT/train/``.
        * ``DetectionDataset(IMAGES_DIR, annotation_file=ANN)``: the COCO 2017 layout
          (``train2017/`` + ``annotations/instances_train2017.json``).
        * ``DetectionDataset(DIR)``: ``DIR/annotations.json`` with images under ``DIR``.
        * ``DetectionDataset.from_coco(coco, IMAGES_DIR, source)``: a COCO dict in memory, e.g. a YOLO or VOC
          split read by :func:`detkit.data.layouts.find_detection_split` (every other layout detkit trains on).

    Image ``file_name`` entries are paths relative to the image folder. Validation runs at construction
    (see :func:`validate_coco`); the summary is logged and kept in ``summary``. ``iscrowd`` annotations
    are not trained on: they stay in ``coco`` (the cleaned annotations to evaluate against) as ignore regions.

    Args:
        root_or_images_dir: dataset root (with ``split``), split folder, or image folder (with ``annotation_file``).
        annotation_file: explicit COCO instances file; ``None`` means ``annotations.json`` in the split folder.
        split: sub-folder of ``root_or_images_dir`` (e.g. ``"train"``, ``"val"``); not with ``annotation_file``.
        transform: called as ``transform(image=rgb, bboxes=ndarray[K, 4], labels=ndarray[K])`` returning a dict
            with ``image`` (``Tensor[3, H', W']``), ``bboxes`` and ``labels``, and optionally ``letterbox``
            (the exact geometry, see :mod:`detkit.data.det_transforms`); an albumentations ``Compose`` with
            ``BboxParams(format="pascal_voc", label_fields=["labels"])`` fits. ``None`` gives the image as
            ``Tensor[3, H, W]`` float32 in [0, 1] and the boxes unchanged.
        validate: check that every image file exists and decodes (one parallel pass); annotation checks,
            clipping and dropping of empty boxes always run.
        scan_workers: threads for that scan (``None``: default).

    Attributes:
        categories (list[dict]): ``{"id", "name"}`` sorted by id; ``classes`` (list[str]) their names.
        cat_ids (list[int]): category ids in label order; ``label_to_cat_id``/``cat_id_to_label`` map both ways.
        records (list[DetectionRecord]): usable images in annotation-file order.
        coco (dict): cleaned COCO dict for :class:`~detkit.eval.coco.CocoEvaluator`.
        summary (ValidationSummary): counts and skipped files.
    """

    def __init__(
        self,
        root_or_images_dir: str | os.PathLike,
        annotation_file: str | os.PathLike | None = None,
        split: str | None = None,
        transform: Callable[..., dict[str, Any]] | None = None,
        validate: bool = True,
        scan_workers: int | None = None,
    ) -> None:
        root = Path(root_or_images_dir)
        if annotation_file is not None and split is not None:
            raise ValueError(
                f"give either split ({split!r}) or annotation_file ({annotation_file}), not both: "
                "split means ROOT/<split>/annotations.json"
            )
        images_dir = root / split if split is not None else root
        if not images_dir.is_dir():
            raise FileNotFoundError(f"image folder {images_dir} does not exist")
        ann_path = Path(annotation_file) if annotation_file is not None else images_dir / "annotations.json"
        self._setup(load_coco_json(ann_path), images_dir, ann_path, transform, validate, scan_workers, None)

    @classmethod
    def from_coco(
        cls,
        coco: dict[str, Any],
        images_dir: str | os.PathLike,
        source: str | os.PathLike,
        transform: Callable[..., dict[str, Any]] | None = None,
        validate: bool = True,
        scan_workers: int | None = None,
        image_sizes: Mapping[Path, tuple[int, int] | str] | None = None,
        name: str | None = None,
    ) -> DetectionDataset:
        """A dataset from a COCO instances dict in memory (e.g. read from YOLO or VOC files, not converted on disk).

        Args:
            coco: COCO instances dict (``images``, ``annotations``, ``categories``); ``file_name`` entries are
                relative to ``images_dir`` and must stay inside it.
            images_dir: the folder the images' ``file_name`` are relative to.
            source: what messages and the summary name as the annotations (a file or folder).
            transform, validate, scan_workers: as for the constructor.
            image_sizes: a scan of these images already made (see :func:`validate_coco`).
            name: what messages and the summary call the source (default ``str(source)``).
        """
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise FileNotFoundError(f"image folder {images_dir} does not exist")
        dataset = cls.__new__(cls)
        dataset._setup(coco, images_dir, Path(source), transform, validate, scan_workers, image_sizes, name)
        return dataset

    def _setup(self, coco: dict[str, Any], images_dir: Path, source: Path,
               transform: Callable[..., dict[str, Any]] | None, validate: bool, scan_workers: int | None,
               image_sizes: Mapping[Path, tuple[int, int] | str] | None, name: str | None = None) -> None:
        name = name or str(source)
        records, categories, clean, summary = validate_coco(
            coco, images_dir, check_files=validate, scan_workers=scan_workers, source=name, image_sizes=image_sizes,
        )
        self.root = images_dir
        self.annotation_file = source
        self.transform = transform
        self.records = records
        self.categories = categories
        self.classes = [c["name"] for c in categories]
        self.cat_ids = [c["id"] for c in categories]
        self.label_to_cat_id = dict(enumerate(self.cat_ids))
        self.cat_id_to_label = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.coco = clean
        self.summary = summary
        logger.info("%s", summary)
        if summary.skipped:
            logger.warning("%d unreadable images skipped in %s", len(summary.skipped), name)
        if not records:
            raise DatasetError(f"no usable images in {name} ({summary.num_images} listed)")

    @property
    def num_classes(self) -> int:
        """Number of categories (labels are ``0..num_classes-1``)."""
        return len(self.categories)

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids in sample order."""
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[DetectionRecord, np.ndarray]:
        # A file that fails now despite the scan (changed on disk, scan off) is logged and replaced by the
        # next readable sample, so one bad file never stops an epoch.
        for offset in range(len(self.records)):
            record = self.records[(index + offset) % len(self.records)]
            try:
                cache = getattr(self, "image_cache", None)  # data.cache: ram (detkit.data.cache)
                image = read_image(record.path) if cache is None else cache.read(record.path)
            except DatasetError as err:
                logger.warning("%s; using the next sample instead", err)
                continue
            if image.shape[:2] != (record.height, record.width):
                raise DatasetError(
                    f"image {record.path} is {image.shape[0]}x{image.shape[1]} (HxW) but {self.annotation_file} "
                    f"says {record.height}x{record.width}: its boxes would be wrong"
                )
            return record, image
        raise DatasetError(f"none of the {len(self.records)} images of {self.annotation_file} can be read")

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any], str]:
        """One sample.

        Returns:
            ``(image, target, path)``: ``image`` ``Tensor[3, H', W']`` float32; ``target`` a dict with
            ``boxes`` (``Tensor[K, 4]`` float32, ``(x1, y1, x2, y2)`` in the transformed image's pixels),
            ``labels`` (``Tensor[K]`` int64 in ``0..C-1``), ``image_id`` (int), ``orig_size``
            (``Tensor[2]`` int64, original ``(h, w)``), ``size`` (``Tensor[2]`` int64, ``(H', W')``) and,
            when the transform's geometry is deterministic, ``letterbox`` (``Tensor[4]`` float64
            ``(scale_x, scale_y, pad_x, pad_y)``: pass it to
            :func:`~detkit.data.det_transforms.unletterbox_boxes` to map predictions back exactly);
            ``path`` the image file.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        record, image = self._load(index % len(self))
        self._reseed_in_worker()
        params: Any = (1.0, 1.0, 0.0, 0.0)
        if self.transform is None:
            tensor = image_to_tensor(image)
            boxes, labels = record.boxes, record.labels
        else:
            out = self.transform(image=image, bboxes=record.boxes, labels=record.labels)
            tensor = out["image"]
            if isinstance(tensor, np.ndarray):
                # a pipeline without ToTensorV2: uint8 HWC → [0, 1] float, float HWC as is
                is_uint8 = tensor.dtype == np.uint8
                tensor = image_to_tensor(tensor) if is_uint8 else torch.from_numpy(tensor).permute(2, 0, 1)
            boxes, labels = out["bboxes"], out["labels"]
            params = out.get("letterbox")
        target: dict[str, Any] = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": record.image_id,
            "orig_size": torch.tensor([record.height, record.width], dtype=torch.int64),
            "size": torch.tensor(list(tensor.shape[-2:]), dtype=torch.int64),
        }
        if params is not None:
            target["letterbox"] = torch.tensor(list(params), dtype=torch.float64)
        return tensor, target, str(record.path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.annotation_file}, images={len(self)}, classes={self.num_classes}, "
            f"transform={self.transform!r})"
        )


def detection_collate(
    batch: Sequence[tuple[Tensor, dict[str, Any], str]],
) -> tuple[Tensor, list[dict[str, Any]], list[str]]:
    """Collate detection samples whose images share one size; targets stay a list (any number of boxes).

    Args:
        batch: ``(image Tensor[3, H, W], target dict, path)`` samples, e.g. from :class:`DetectionDataset`.

    Returns:
        ``(images Tensor[B, 3, H, W], targets list[dict], paths list[str])``.

    Raises:
        ValueError: on an empty batch or images of different sizes (resize or letterbox them first).
    """
    if len(batch) == 0:
        raise ValueError("batch is empty: detection_collate needs at least one sample")
    images, targets, paths = zip(*batch)
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        listed = ", ".join(f"{p}: {tuple(i.shape)}" for i, p in list(zip(images, paths))[:_MAX_LISTED])
        raise ValueError(
            f"images in a batch must share one shape to be stacked, got {sorted(shapes)} ({listed}); "
            "use a transform that resizes or letterboxes to a fixed size"
        )
    return torch.stack(images), list(targets), list(paths)
