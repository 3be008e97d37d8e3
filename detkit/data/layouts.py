"""Where the splits of a dataset are: the layouts detkit trains on as they are (COCO, YOLO, Pascal VOC, class lists).

From ``data.root`` (a folder or a dataset file), ``data.format``, the explicit ``data.train_*``/``data.val_*`` keys
and a split name, a finder returns what one split reads; when nothing matches, one error lists every path tried.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from detkit.config.sections import DataConfig
from detkit.data.detection import load_coco_json
from detkit.data.files import resolve_inside, walk_files
from detkit.data.formats import (
    read_voc_files,
    read_yolo_files,
    read_yolo_yaml,
    voc_split_files,
    yolo_names,
)
from detkit.data.images import is_image_file
from detkit.errors import ConfigError, DatasetError

__all__ = [
    "CLASSIFICATION_FORMATS",
    "DETECTION_FORMATS",
    "SPLIT_ALIASES",
    "ClassificationSource",
    "DetectionSource",
    "find_classification_split",
    "find_detection_split",
    "split_names",
]

logger = logging.getLogger(__name__)

#: ``data.format`` values of each task (auto: recognised from the files)
DETECTION_FORMATS = ("auto", "coco", "yolo", "voc")
CLASSIFICATION_FORMATS = ("auto", "folder", "list")
#: other names a split goes by, tried in order when the configured one is not found (Roboflow exports ``valid``)
SPLIT_ALIASES = {
    "val": ("valid", "validation"),
    "valid": ("val", "validation"),
    "validation": ("val", "valid"),
    "train": ("training",),
    "test": ("testing",),
}
_YAML_NAMES = ("data.yaml", "dataset.yaml")
_LIST_SUFFIXES = (".csv", ".json")


@dataclass
class DetectionSource:
    """One split of a detection dataset as found on disk, read into a COCO instances dict.

    Attributes:
        split: the split's name on disk (``"valid"`` where ``"val"`` was asked for and only that exists).
        layout: the layout recognised, e.g. ``"YOLO data.yaml"``, for the log.
        source: the annotation file or folder messages name.
        coco: COCO instances dict; YOLO class ``k`` has category id ``k`` (``names[k]``) unless the yaml keeps ids.
        images_dir: the folder every ``file_name`` is relative to (inside the dataset).
        image_sizes: the image scan a reader already made (YOLO needs the sizes), so it is not made twice.
    """

    split: str
    layout: str
    source: Path
    coco: dict[str, Any]
    images_dir: Path
    image_sizes: dict[Path, tuple[int, int] | str] | None = None

    @property
    def name(self) -> str:
        """The source as messages name it: a yaml holding every split gets the split, ``data.yaml [val]``."""
        return f"{self.source} [{self.split}]" if self.source.suffix.lower() in (".yaml", ".yml") else str(self.source)


@dataclass
class ClassificationSource:
    """One split of a classification dataset: class folders (``folder``) or a ``path,label`` list (``list_file``,
    its paths relative to ``images_dir``)."""

    split: str
    layout: str
    folder: Path | None = None
    list_file: Path | None = None
    images_dir: Path | None = None


def split_names(split: str) -> list[str]:
    """``split`` and the other names it goes by (:data:`SPLIT_ALIASES`), in the order they are tried."""
    return [split, *SPLIT_ALIASES.get(split, ())]


class _Tried:
    """The layouts looked for and the paths tried, for the one error raised when nothing matches."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layouts: dict[str, dict[str, list[str]]] = {}

    def path(self, layout: str, base: Path, template: str, name: str) -> Path:
        """``base / template`` with ``{split}`` set to ``name``, recorded under ``layout``."""
        names = self.layouts.setdefault(layout, {}).setdefault(str(base / template), [])
        if name not in names:
            names.append(name)
        return base / template.format(split=name)

    def note(self, layout: str, text: str) -> None:
        self.layouts.setdefault(layout, {}).setdefault(text, [])

    def error(self, what: str, hint: str) -> FileNotFoundError:
        """One error: ``what``, then per layout the paths tried (relative to the root), then ``hint``."""
        prefix = str(self.root).rstrip("/") + "/"
        parts = []
        for layout, templates in self.layouts.items():
            shown = [t.replace("{split}", n[0] if len(n) == 1 else "{" + ",".join(n) + "}") if n else t
                     for t, n in templates.items()]
            parts.append(f"{layout}: {', '.join(s.replace(prefix, '') for s in shown)}")
        return FileNotFoundError(f"{what}; looked for (under it) " + "; ".join(parts) + f". {hint}")


def _check_format(data_cfg: DataConfig, formats: tuple[str, ...], task: str) -> str:
    fmt = getattr(data_cfg, "format", "auto") or "auto"
    if fmt not in formats:
        raise ConfigError(f"data.format: {task} reads {', '.join(formats)}; got {fmt!r}")
    return fmt


def _role(data_cfg: DataConfig, split: str) -> str | None:
    """``"train"`` or ``"val"`` when ``split`` is the configured train or val split (their explicit keys apply)."""
    if split == data_cfg.train_split:
        return "train"
    if split == data_cfg.val_split:
        return "val"
    return None


def _explicit(data_cfg: DataConfig, role: str | None, base: Path) -> tuple[Path | None, Path | None]:
    """``data.<role>_images`` and ``data.<role>_annotations`` as paths (relative ones under ``base``)."""
    if role is None:
        return None, None
    images, annotations = getattr(data_cfg, f"{role}_images", None), getattr(data_cfg, f"{role}_annotations", None)
    return (base / images if images else None), (base / annotations if annotations else None)


def _names_split(file: Path, names: Sequence[str]) -> bool:
    """Whether a dataset file is named after one of ``names``: its folder (``valid/_annotations.coco.json``) or a
    word of its name (``instances_val2017.json``, ``train.csv``)."""
    words = {w.rstrip("0123456789") for w in re.split(r"[^A-Za-z0-9]+", file.stem)} | {file.parent.name}
    return any(n in words for n in names)


def _file_root(file: Path) -> Path:
    """The dataset folder of a dataset file: above its split or ``annotations`` folder, else its own folder."""
    known = {"annotations", *SPLIT_ALIASES, *(a for v in SPLIT_ALIASES.values() for a in v)}
    return file.parent.parent if file.parent.name in known else file.parent


def _split_file(file: Path, data_cfg: DataConfig, split: str) -> bool:
    """Whether the dataset file given as ``data.root`` is the file of ``split``: it is named after the split, or
    after no split at all and ``split`` is the train split."""
    if _names_split(file, split_names(split)):
        return True
    others = [n for s in (data_cfg.train_split, data_cfg.val_split, "test") if s and s != split for n in split_names(s)]
    return not _names_split(file, others) and split == data_cfg.train_split


def _log_alias(asked: str, found: str, where: Any) -> None:
    if asked != found:
        logger.info("split %r: no such split, using %r instead (%s)", asked, found, where)


# ------------------------------------------------------------------------------------------------ detection


def find_detection_split(data_cfg: DataConfig, split: str, classes: Sequence[str] | None = None,
                         workers: int | None = None) -> DetectionSource:
    """Find and read one split of a detection dataset, in whichever supported layout it is.

    Order: the explicit ``data.<train|val>_images`` / ``_annotations`` keys (relative to ``data.root``); a
    dataset file as ``data.root`` (a YOLO ``data.yaml``, or a COCO ``.json`` standing for its dataset); else
    the layouts of ``data.format`` (``auto``: all) under ``data.root``: a YOLO ``data.yaml``/``dataset.yaml``;
    COCO (``<split>/annotations.json`` with the images beside it or in ``images/``, Roboflow's
    ``<split>/_annotations.coco.json``, ``annotations/instances_<split>[YEAR].json``, ``annotations/<split>.json``,
    ``<split>.json``); YOLO folders (``images/<split>`` + ``labels/<split>``, ``<split>/images`` +
    ``<split>/labels``); Pascal VOC (``ImageSets/Main/<split>.txt`` in ``ROOT``, ``ROOT/VOC*`` or
    ``ROOT/VOCdevkit/VOC*``; ``<split>/Annotations`` + ``<split>/JPEGImages``; XML files beside the images in
    ``<split>/``; for the train split, ``Annotations`` + ``JPEGImages`` without split lists). Each name of
    :func:`split_names` is tried in turn (``val``, then ``valid``, ``validation``), logging the one used.

    Args:
        data_cfg: the ``data`` section (``root``, ``format``, split names, explicit keys).
        split: the split asked for.
        classes: the train split's class names, when reading another split (VOC ids follow them).
        workers: threads for the image scans of the readers that need sizes (YOLO).

    Raises:
        FileNotFoundError: nothing found; the message lists every layout looked for with the paths tried.
        ConfigError: ``data.format`` is not a detection format.
        DatasetError: the files found cannot be read.
    """
    fmt = _check_format(data_cfg, DETECTION_FORMATS, "detection")
    root = Path(data_cfg.root)
    base = root.parent if root.is_file() else root
    images, annotations = _explicit(data_cfg, _role(data_cfg, split), base)
    if images is not None or annotations is not None:
        return _explicit_detection(fmt, split, images, annotations, base, classes, workers)
    if root.is_file():
        if root.suffix.lower() in (".yaml", ".yml") and fmt in ("auto", "yolo"):
            return _yolo_yaml_or_error(root, split, workers)
        if root.suffix.lower() == ".json" and fmt in ("auto", "coco") and _split_file(root, data_cfg, split):
            coco = load_coco_json(root)
            images_dir = _coco_images_dir(coco, root, _file_root(root), split)
            return DetectionSource(split, "COCO file", root, coco, images_dir)
        if root.suffix.lower() != ".json":
            raise DatasetError(f"data.root: {root} is not a detection dataset file (a YOLO data.yaml or a COCO .json)")
        root = _file_root(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: dataset {root} does not exist")
    tried = _Tried(root)
    for name in split_names(split):
        for probe in _DETECTION_PROBES[fmt]:
            found = probe(root, name, split == data_cfg.train_split, classes, tried, workers)
            if found is not None:
                _log_alias(split, found.split, found.source)
                return found
    hint = ("YOLO and VOC datasets train as they are, without converting. Name the files with data.format and "
            f"data.{_role(data_cfg, split) or 'train'}_images / _annotations")
    if split == data_cfg.val_split:
        hint += ", or set data.val_split: null to train without validation"
    raise tried.error(f"data.root: no {split!r} split of a detection dataset (COCO, YOLO or Pascal VOC) in {root}",
                      hint)


def _yolo_yaml_or_error(yaml_file: Path, split: str, workers: int | None) -> DetectionSource:
    tried = _Tried(yaml_file.parent)
    for name in split_names(split):
        found = _yolo_yaml_split(yaml_file, name, tried, workers)
        if found is not None:
            _log_alias(split, name, yaml_file)
            return found
    raise tried.error(f"data.root: YOLO dataset file {yaml_file} has no usable {split!r} split",
                      "Add the split to the yaml (a folder, a list file or a list of them), or set data.val_split: "
                      "null to train without validation")


def _yaml_root(data: dict[str, Any], yaml_file: Path) -> Path:
    """The dataset folder of a ``data.yaml``: its ``path`` (relative to the yaml's folder), else the yaml's folder.

    A ``path`` that does not exist (a yaml copied from another machine) falls back to the yaml's folder, logged.
    """
    here = yaml_file.parent
    path = data.get("path")
    if not path:
        return here
    root = here / str(path)
    if root.is_dir():
        return root
    logger.warning("%s: path %s does not exist; reading the dataset from %s instead", yaml_file, path, here)
    return here


def _yaml_entry_images(root: Path, entry: Any, yaml_file: Path, key: str) -> list[Path] | None:
    """The images a ``data.yaml`` split entry names: folders (walked), ``.txt`` list files, or a list of them.

    ``None`` when an entry names nothing that exists. Roboflow writes ``../train/images`` for ``train/images``;
    like ultralytics, a ``../`` entry that does not exist is also tried without it.
    """
    entries = entry if isinstance(entry, list) else [entry]
    if not entries or not all(isinstance(e, str) and e for e in entries):
        raise DatasetError(f"{yaml_file}: {key} must be a folder, a list file or a list of them, got {entry!r}")
    images: list[Path] = []
    for e in entries:
        path = root / e
        if not path.exists() and e.startswith("../"):
            path = root / e[3:]
        if path.is_dir():
            images += [p for p in walk_files(path)[0] if is_image_file(p)]
        elif path.is_file():
            images += _yolo_list_file(path, root)
        else:
            return None
    return images


def _yolo_list_file(path: Path, root: Path) -> list[Path]:
    """Image paths of a YOLO list file, one a line: ``./x`` relative to the list's folder, others to ``root``."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"cannot read YOLO list file {path}: {' '.join(str(err).split())}") from None
    return [path.parent / line[2:] if line.startswith("./") else root / line for line in lines]


def _yolo_yaml_split(yaml_file: Path, name: str, tried: _Tried, workers: int | None) -> DetectionSource | None:
    tried.path("YOLO data.yaml", yaml_file.parent, yaml_file.name + " (key {split})", name)
    data = read_yolo_yaml(yaml_file)
    if not data.get(name):
        return None
    root = _yaml_root(data, yaml_file)
    images = _yaml_entry_images(root, data[name], yaml_file, name)
    if images is None:
        tried.note("YOLO data.yaml", f"{yaml_file} {name}: {data[name]} (does not exist under {root})")
        return None
    names, ids, _ = yolo_names(yaml_file)
    categories = [{"id": int(ids[k]) if ids else k, "name": n} for k, n in enumerate(names)]
    coco, sizes = read_yolo_files(images, root, categories, workers=workers, keep_unreadable=True)
    return DetectionSource(name, "YOLO data.yaml", yaml_file, coco, root, sizes)


def _probe_yolo_yaml(root: Path, name: str, is_train: bool, classes: Sequence[str] | None, tried: _Tried,
                     workers: int | None) -> DetectionSource | None:
    for yaml_name in _YAML_NAMES:
        if (root / yaml_name).is_file():
            return _yolo_yaml_split(root / yaml_name, name, tried, workers)
        tried.note("YOLO data.yaml", str(root / yaml_name))
    return None


def _probe_yolo_folders(root: Path, name: str, is_train: bool, classes: Sequence[str] | None, tried: _Tried,
                        workers: int | None) -> DetectionSource | None:
    for images_t, labels_t in (("images/{split}", "labels/{split}"), ("{split}/images", "{split}/labels")):
        images_dir = tried.path("YOLO folders", root, images_t + "/", name)
        labels_dir = root / labels_t.format(split=name)
        if images_dir.is_dir() and labels_dir.is_dir():
            names, ids, _ = yolo_names(None, [root, labels_dir, images_dir.parent])
            categories = [{"id": int(ids[k]) if ids else k, "name": n} for k, n in enumerate(names)]
            images = [p for p in walk_files(images_dir)[0] if is_image_file(p)]
            coco, sizes = read_yolo_files(images, root, categories, workers=workers, keep_unreadable=True)
            return DetectionSource(name, "YOLO folders", labels_dir, coco, root, sizes)
    return None


def _coco_candidates(root: Path, name: str, tried: _Tried) -> list[Path]:
    files = [tried.path("COCO", root, t, name) for t in (
        "{split}/annotations.json", "{split}/_annotations.coco.json", "annotations/instances_{split}.json")]
    tried.path("COCO", root, "annotations/instances_{split}<year>.json", name)
    files += sorted((root / "annotations").glob(f"instances_{name}[12][0-9][0-9][0-9].json"), reverse=True)
    files += [tried.path("COCO", root, t, name) for t in ("annotations/{split}.json", "{split}.json")]
    return files


def _probe_coco(root: Path, name: str, is_train: bool, classes: Sequence[str] | None, tried: _Tried,
                workers: int | None) -> DetectionSource | None:
    for path in _coco_candidates(root, name, tried):
        if path.is_file():
            coco = load_coco_json(path)
            return DetectionSource(name, "COCO", path, coco, _coco_images_dir(coco, path, root, name))
    return None


def _coco_images_dir(coco: dict[str, Any], ann_file: Path, root: Path, name: str) -> Path:
    """The folder a COCO file's ``file_name`` entries are relative to: the first of the usual places holding them
    all (beside the file, ``images/`` beside it, ``ROOT/<split>`` as in COCO 2017, ``ROOT/images/<split>``,
    ``ROOT/images``, ``data/`` beside it), else the one holding the most (validation then lists the missing)."""
    folder = ann_file.stem.removeprefix("instances_") if ann_file.parent.name == "annotations" else name
    candidates = list(dict.fromkeys([ann_file.parent, ann_file.parent / "images", root / folder, root / name,
                                     root / "images" / name, root / "images", ann_file.parent / "data"]))
    names = [img.get("file_name") for img in coco["images"] if isinstance(img, dict)]
    names = [n for n in names if isinstance(n, str) and n]
    if not names:
        return ann_file.parent
    best, best_count = ann_file.parent, -1
    for folder_path in (c for c in candidates if c.is_dir()):
        count = _count_present(folder_path, names, stop_at_missing=best_count >= 0)
        if count == len(names):
            return folder_path
        if count > best_count:
            best, best_count = folder_path, count
    if best_count < len(names):
        logger.warning("%s: %d of %d images found under %s (also looked in %s)", ann_file, max(best_count, 0),
                       len(names), best, ", ".join(str(c) for c in candidates if c != best))
    return best


def _count_present(folder: Path, names: list[str], stop_at_missing: bool) -> int:
    count = 0
    for name in names:
        path = resolve_inside(folder, name)
        if path is not None and path.exists():
            count += 1
        elif stop_at_missing:
            return count
    return count


def _voc_categories(voc_root: Path, classes: Sequence[str] | None) -> list[dict[str, Any]] | None:
    """Another split than train takes train's categories (ids ``1..C`` in its order) unless the dataset keeps
    its own ``categories.json``."""
    if classes is None or (voc_root / "categories.json").is_file():
        return None
    return [{"id": i, "name": n} for i, n in enumerate(classes, start=1)]


def _voc_source(name: str, layout: str, voc_root: Path, xml_files: list[Path], images_dir: Path,
                classes: Sequence[str] | None, workers: int | None, source: Path) -> DetectionSource:
    coco = read_voc_files(xml_files, images_dir, _voc_categories(voc_root, classes), workers,
                          categories_file=voc_root / "categories.json", source=str(source))
    return DetectionSource(name, layout, source, coco, images_dir)


def _probe_voc(root: Path, name: str, is_train: bool, classes: Sequence[str] | None, tried: _Tried,
               workers: int | None) -> DetectionSource | None:
    voc_roots = [root, *sorted(root.glob("VOC*")), *sorted(root.glob("VOCdevkit/VOC*"))]
    voc_roots = [v for v in voc_roots if (v / "Annotations").is_dir()]
    with_list = []
    for voc in voc_roots or [root]:
        if tried.path("Pascal VOC", voc, "ImageSets/Main/{split}.txt", name).is_file():
            with_list.append(voc)
    if len(with_list) > 1:
        raise DatasetError(f"data.root: several Pascal VOC folders have a {name!r} split "
                           f"({', '.join(map(str, with_list))}); point data.root at one of them")
    if with_list:
        voc = with_list[0]
        return _voc_source(name, "Pascal VOC", voc, voc_split_files(voc, name), voc / "JPEGImages", classes, workers,
                           voc / "ImageSets" / "Main" / f"{name}.txt")
    split_dir = tried.path("Pascal VOC", root, "{split}/Annotations/", name).parent
    if (split_dir / "Annotations").is_dir():
        return _voc_source(name, "Pascal VOC", split_dir, sorted((split_dir / "Annotations").glob("*.xml")),
                           split_dir / "JPEGImages", classes, workers, split_dir / "Annotations")
    beside = tried.path("Pascal VOC", root, "{split}/*.xml", name).parent
    xml_files = sorted(beside.glob("*.xml")) if beside.is_dir() else []
    if xml_files:
        return _voc_source(name, "Pascal VOC (XML beside the images)", beside, xml_files, beside, classes, workers,
                           beside)
    return _probe_voc_unsplit(root, name, is_train, voc_roots, classes, workers, tried)


def _probe_voc_unsplit(root: Path, name: str, is_train: bool, voc_roots: list[Path], classes: Sequence[str] | None,
                       workers: int | None, tried: _Tried) -> DetectionSource | None:
    """``Annotations/`` + ``JPEGImages/`` without split lists: the whole set is the train split."""
    if not is_train:
        return None
    tried.note("Pascal VOC", f"{root / 'Annotations'}/ + {root / 'JPEGImages'}/ (no split lists: the train split)")
    unsplit = [v for v in voc_roots if not (v / "ImageSets" / "Main").is_dir()]
    if len(unsplit) != 1:
        return None
    voc = unsplit[0]
    logger.info("%s has no ImageSets/Main split lists: every XML file is in the train split", voc)
    return _voc_source(name, "Pascal VOC (no split lists)", voc, sorted((voc / "Annotations").glob("*.xml")),
                       voc / "JPEGImages", classes, workers, voc / "Annotations")


_Probe = Callable[[Path, str, bool, "Sequence[str] | None", _Tried, "int | None"], "DetectionSource | None"]
_DETECTION_PROBES: dict[str, tuple[_Probe, ...]] = {
    "auto": (_probe_yolo_yaml, _probe_coco, _probe_yolo_folders, _probe_voc),
    "coco": (_probe_coco,),
    "yolo": (_probe_yolo_yaml, _probe_yolo_folders),
    "voc": (_probe_voc,),
}


def _explicit_format(images: Path | None, annotations: Path | None) -> str:
    """The format the explicit keys name: a ``.json`` is COCO, a folder of ``.xml`` is VOC, otherwise YOLO."""
    if annotations is not None and annotations.suffix.lower() == ".json":
        return "coco"
    folder = annotations if annotations is not None else images
    if folder is not None and folder.is_dir() and next(folder.glob("*.xml"), None) is not None:
        return "voc"
    return "yolo"


def _explicit_detection(fmt: str, split: str, images: Path | None, annotations: Path | None, base: Path,
                        classes: Sequence[str] | None, workers: int | None) -> DetectionSource:
    """The split the explicit ``data.<split>_images`` / ``_annotations`` keys name, in ``fmt`` (or as they look)."""
    fmt = _explicit_format(images, annotations) if fmt == "auto" else fmt
    for key, path in (("images", images), ("annotations", annotations)):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"data.{split}_{key}: {path} does not exist")
    if fmt == "coco":
        if annotations is None:
            raise ConfigError(f"data.{split}_annotations: a COCO split needs its annotation .json file")
        coco = load_coco_json(annotations)
        images_dir = images if images is not None else _coco_images_dir(coco, annotations, base, split)
        return DetectionSource(split, "COCO (explicit keys)", annotations, coco, images_dir)
    if fmt == "voc":
        if annotations is None:
            raise ConfigError(f"data.{split}_annotations: a Pascal VOC split needs its folder of XML files")
        jpeg = annotations.parent / "JPEGImages"
        images_dir = images if images is not None else jpeg if jpeg.is_dir() else annotations  # else XML beside images
        return _voc_source(split, "Pascal VOC (explicit keys)", annotations.parent, sorted(annotations.glob("*.xml")),
                           images_dir, classes, workers, annotations)
    return _explicit_yolo(split, images, annotations, base, workers)


def _explicit_yolo(split: str, images: Path | None, labels: Path | None, base: Path,
                   workers: int | None) -> DetectionSource:
    if images is None:
        raise ConfigError(f"data.{split}_images: a YOLO split needs its image folder (or list file)")
    files = [p for p in walk_files(images)[0] if is_image_file(p)] if images.is_dir() else _yolo_list_file(images, base)
    root = images.parent if images.is_dir() else base  # keeps the images/ folder in file_name: labels/ mirrors it
    names, ids, _ = yolo_names(None, [base, *([labels] if labels is not None else []), images.parent, images])
    categories = [{"id": int(ids[k]) if ids else k, "name": n} for k, n in enumerate(names)]
    if labels is not None and images.is_dir():
        label_of = lambda image: (labels / image.relative_to(images)).with_suffix(".txt")  # noqa: E731
    else:
        label_of = None
    coco, sizes = read_yolo_files(files, root, categories, label_of=label_of, workers=workers, keep_unreadable=True)
    return DetectionSource(split, "YOLO (explicit keys)", labels or images, coco, root, sizes)


# ------------------------------------------------------------------------------------------- classification


def find_classification_split(data_cfg: DataConfig, split: str) -> ClassificationSource:
    """Find one split of a classification dataset: class folders or a ``path,label`` list.

    Order: the explicit keys (``data.<train|val>_annotations``: a ``.csv``/``.json`` list whose paths are relative
    to ``data.<train|val>_images`` or to the list's folder; ``data.<train|val>_images`` alone: the split's class
    folder root); a list file as ``data.root`` (for the split it is named after, or for train); else under
    ``data.root``: ``<split>.csv``, ``<split>.json`` (format ``list``), ``<split>/<class>/*`` (format ``folder``),
    for each name of :func:`split_names` in turn.

    Raises:
        FileNotFoundError: nothing found; the message lists the layouts and paths tried.
        ConfigError: ``data.format`` is not a classification format.
    """
    fmt = _check_format(data_cfg, CLASSIFICATION_FORMATS, "classification")
    root = Path(data_cfg.root)
    base = root.parent if root.is_file() else root
    images, annotations = _explicit(data_cfg, _role(data_cfg, split), base)
    if annotations is not None:
        return ClassificationSource(split, "list (explicit keys)", list_file=annotations,
                                    images_dir=images if images is not None else annotations.parent)
    if images is not None:
        return ClassificationSource(split, "class folders (explicit keys)", folder=images)
    if root.is_file():
        if root.suffix.lower() not in _LIST_SUFFIXES:
            raise DatasetError(f"data.root: {root} is not a classification list (.csv or .json of path,label)")
        if _split_file(root, data_cfg, split):
            return ClassificationSource(split, "list", list_file=root, images_dir=root.parent)
        root = root.parent
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: dataset {root} does not exist")
    tried = _Tried(root)
    for name in split_names(split):
        found = _probe_classification(root, name, fmt, tried)
        if found is not None:
            _log_alias(split, name, found.list_file or found.folder)
            return found
    hint = "Name the files with data.train_images / data.train_annotations (and val_)"
    if split == data_cfg.val_split:
        hint += ", or set data.val_split: null to train without validation"
    raise tried.error(f"data.root: no {split!r} split of a classification dataset in {root}", hint)


def _probe_classification(root: Path, name: str, fmt: str, tried: _Tried) -> ClassificationSource | None:
    if fmt in ("auto", "list"):
        for suffix in _LIST_SUFFIXES:
            path = tried.path("path,label list", root, "{split}" + suffix, name)
            if path.is_file():
                return ClassificationSource(name, "list", list_file=path, images_dir=root)
    if fmt in ("auto", "folder"):
        folder = tried.path("class folders", root, "{split}/<class>/", name).parent
        if folder.is_dir():
            return ClassificationSource(name, "class folders", folder=folder)
    return None
