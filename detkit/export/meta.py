"""What an export carries about itself: task, classes, category ids, normalisation, input size, thresholds, format.

Stored as JSON inside the file (ONNX ``metadata_props["detkit"]``, TorchScript extra file ``detkit.json``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "FORMATS", "ExportMeta"]

#: the ``format`` entry of every detkit export's metadata, and the versions this code reads
EXPORT_FORMAT = "detkit-export"
EXPORT_VERSION = 1
#: the export formats
FORMATS = ("onnx", "torchscript")
#: how a detector's post-processing lives in the graph: thresholds as inputs, or fixed at export time
POSTPROCESS = ("inputs", "fixed", "none")


@dataclass(frozen=True)
class ExportMeta:
    """The metadata of a detkit export.

    Attributes:
        task: ``"detect"`` or ``"classify"``.
        format: ``"onnx"`` or ``"torchscript"``.
        model: the registry name of the exported architecture (``resnet18_ssd``, ``timm:test_resnet``).
        classes: class names in label order.
        mean, std: input normalisation in [0, 1] units.
        input_size: the square input side in pixels the graph takes.
        batch_size: the batch the graph takes, or None for any batch.
        category_ids: the dataset category id of each label (detectors).
        resize_mode: ``letterbox`` or ``resize`` (detectors).
        eval_resize_ratio: shorter side resized to ``input_size / ratio`` before the centre crop (classifiers).
        postprocess: ``"inputs"`` (score/IoU thresholds and the cap are graph inputs), ``"fixed"``
            (torchvision detectors: NMS IoU and the lowest score threshold fixed at export, ``score_thresh``
            and ``max_det`` are the floor and ceiling of what a run may ask) or ``"none"`` (classifiers).
        score_thresh, nms_thresh, max_det, topk_candidates: the default (``inputs``) or fixed (``fixed``) values.
        source: the checkpoint file the export was made from (its name).
        opset: the ONNX opset (ONNX exports).
    """

    task: str
    format: str
    model: str
    classes: list[str]
    mean: list[float]
    std: list[float]
    input_size: int
    batch_size: int | None = None
    category_ids: list[int] | None = None
    resize_mode: str = "letterbox"
    eval_resize_ratio: float = 0.875
    postprocess: str = "none"
    score_thresh: float = 0.25
    nms_thresh: float = 0.5
    max_det: int = 100
    topk_candidates: int = 400
    source: str = ""
    opset: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.task not in ("detect", "classify"):
            problems.append(f"task {self.task!r} (expected detect or classify)")
        if self.format not in FORMATS:
            problems.append(f"format {self.format!r} (expected one of {FORMATS})")
        if not self.classes:
            problems.append("no class names")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append(f"mean/std {self.mean}/{self.std} (expected 3 values each)")
        if not isinstance(self.input_size, int) or self.input_size < 1:
            problems.append(f"input_size {self.input_size!r}")
        if self.postprocess not in POSTPROCESS:
            problems.append(f"postprocess {self.postprocess!r} (expected one of {POSTPROCESS})")
        if self.task == "detect" and (self.category_ids is None or len(self.category_ids) != len(self.classes)):
            problems.append(f"category_ids {self.category_ids} (expected one per class, {len(self.classes)})")
        if problems:
            raise ValueError("export metadata: " + "; ".join(problems))

    def to_json(self) -> str:
        """The JSON text stored in the export (with ``format_name`` and ``version`` entries)."""
        return json.dumps({"format_name": EXPORT_FORMAT, "version": EXPORT_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, text: str | bytes, source: Any) -> ExportMeta:
        """Parse the stored JSON; ``ValueError`` naming ``source`` when it is not detkit export metadata."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"export {source}: its detkit metadata is not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format_name") != EXPORT_FORMAT:
            raise ValueError(f"export {source} holds no detkit metadata (format_name={EXPORT_FORMAT!r}); export "
                             "models with tools/export.py")
        if int(data.get("version", 0)) > EXPORT_VERSION:
            raise ValueError(f"export {source} has metadata version {data['version']}, newer than this detkit "
                             f"(reads up to {EXPORT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError) as err:
            raise ValueError(f"export {source}: invalid detkit metadata ({err})") from None
