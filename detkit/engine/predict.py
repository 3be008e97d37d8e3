"""Detection inference: load a detector (detkit checkpoint or COCO-pretrained torchvision model), predict on images.

Also reading sources (file, folder, glob), drawing annotated images, COCO-results ``predictions.json`` and YOLO txt.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from detkit.data.det_transforms import letterbox_image, resize_image, unletterbox_boxes
from detkit.data.images import IMAGE_EXTENSIONS, DatasetError, is_image_file, read_image, write_image
from detkit.io import atomic_write_text

__all__ = [
    "DetectRunSummary",
    "Predictor",
    "draw_detections",
    "find_sources",
    "run_detection",
    "yolo_lines",
]

logger = logging.getLogger(__name__)

#: distinct colours (RGB) cycled over class labels when drawing
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40), (128, 0, 0),
)  # fmt: skip


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray | Tensor,
    labels: np.ndarray | Tensor | Sequence[int],
    classes: Sequence[str],
    scores: np.ndarray | Tensor | None = None,
    color: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Draw boxes with class names (and scores) on a copy of an image.

    Args:
        image: ``ndarray[H, W, 3]`` uint8 RGB.
        boxes: ``[N, 4]`` in ``(x1, y1, x2, y2)`` format, the image's pixels.
        labels: ``[N]`` contiguous labels indexing ``classes``.
        classes: class names.
        scores: ``[N]`` confidences shown after the name, or None (e.g. ground truth).
        color: one RGB colour for every box; None colours by label.

    Returns:
        ``ndarray[H, W, 3]`` uint8 RGB, the annotated copy.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an ndarray[H, W, 3] uint8 RGB, got {getattr(image, 'shape', None)}")
    boxes = _numpy(boxes, np.float64).reshape(-1, 4)
    labels = _numpy(labels, np.int64).reshape(-1)
    scores_np = None if scores is None else _numpy(scores, np.float64).reshape(-1)
    if len(labels) != len(boxes) or (scores_np is not None and len(scores_np) != len(boxes)):
        raise ValueError(f"boxes, labels and scores must have one row per box, got {len(boxes)}, {len(labels)}, "
                         f"{None if scores_np is None else len(scores_np)}")
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    font_scale = max(0.35, max(h, w) / 1200)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        rgb = color or _PALETTE[int(label) % len(_PALETTE)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), rgb, thickness)
        name = classes[label] if 0 <= label < len(classes) else str(int(label))
        text = name if scores_np is None else f"{name} {scores_np[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(h - 1, y1 + th + 2)
        cv2.rectangle(out, (x1, ty - th - base + 1), (x1 + tw + 2, ty + base - 1), rgb, -1)
        cv2.putText(out, text, (x1 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def yolo_lines(boxes: np.ndarray | Tensor, labels: Sequence[int] | np.ndarray | Tensor,
               scores: np.ndarray | Tensor | None, image_hw: tuple[int, int]) -> list[str]:
    """YOLO txt rows ``label cx cy w h [score]`` with coordinates normalised by the image size.

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)`` in the image's pixels.
        labels: ``[N]`` contiguous class indices.
        scores: ``[N]`` confidences appended as a sixth column, or None.
        image_hw: ``(height, width)`` of the image in pixels.
    """
    h, w = image_hw
    b = _numpy(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h
    bw, bh = (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h
    lab = _numpy(labels, np.int64).reshape(-1)
    s = None if scores is None else _numpy(scores, np.float64).reshape(-1)
    rows = []
    for i in range(len(b)):
        row = f"{lab[i]} {cx[i]:.6f} {cy[i]:.6f} {bw[i]:.6f} {bh[i]:.6f}"
        rows.append(row + (f" {s[i]:.5f}" if s is not None else ""))
    return rows


def find_sources(source: str | os.PathLike) -> list[Path]:
    """The image files named by ``source``: one file, every image file in a folder (sorted), or a glob.

    Files in a folder or glob without an image extension are ignored; a file given by name is always
    returned (an unreadable one is reported later, when it is read).

    Raises:
        FileNotFoundError: when ``source`` matches nothing.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise FileNotFoundError(f"source folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file() and is_image_file(p))
        if not files:
            raise FileNotFoundError(f"source pattern {text!r} matches no image files")
        return files
    raise FileNotFoundError(f"source {text} is neither a file, a folder nor a glob pattern that matches files")


class Predictor:
    """Batched detection on images of any size: letterbox (or resize), normalise, detect, map back.

    Args:
        model: a detkit detector (``detkit.models.Detector``); set to eval mode and moved to ``device``.
        classes: class names; label ``i`` names ``classes[i]``.
        category_ids: dataset category id of each label (default ``0..C-1``).
        mean, std: input normalisation in [0, 1] units (3 floats each).
        img_size: side of the square network input in pixels.
        resize_mode: ``"letterbox"`` (keep aspect, pad) or ``"resize"`` (stretch).
        device: where the model runs.
        batch_size: images per forward pass.
        conf: score below which detections are dropped.
        iou: class-aware NMS IoU threshold.
        max_det: detections kept per image.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        category_ids: Sequence[int] | None = None,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        img_size: int,
        resize_mode: str = "letterbox",
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        conf: float = 0.25,
        iou: float = 0.5,
        max_det: int = 100,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean/std: expected 3 values each in [0, 1] units with std > 0, got {mean}, {std}")
        if resize_mode not in ("letterbox", "resize"):
            raise ValueError(f"resize_mode: expected 'letterbox' or 'resize', got {resize_mode!r}")
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size: expected a positive int, got {img_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if not 0.0 <= conf <= 1.0 or not 0.0 < iou <= 1.0:
            raise ValueError(f"conf and iou: expected conf in [0, 1] and iou in (0, 1], got {conf} and {iou}")
        if max_det < 1:
            raise ValueError(f"max_det: expected >= 1, got {max_det}")
        self.classes = list(classes)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(len(self.classes)))
        if len(self.category_ids) != len(self.classes):
            raise ValueError(f"category_ids: expected {len(self.classes)} ids (one per class), got {self.category_ids}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model.score_thresh = float(conf)
        self.model.nms_thresh = float(iou)
        self.model.detections_per_img = int(max_det)
        self.img_size = img_size
        self.resize_mode = resize_mode
        self.batch_size = batch_size
        # normalisation as one multiply-add on the uint8 batch: (x / 255 - mean) / std
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=self.device).view(1, 3, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=self.device).view(1, 3, 1, 1)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, *, img_size: int | None = None,
                        device: str | torch.device = "cpu", **kwargs: Any) -> Predictor:
        """A predictor for a detkit detection checkpoint (``best.pt``/``last.pt`` of a ``task: detect`` run).

        The checkpoint gives the architecture, weights, class names, category ids, normalisation, input
        size and eval resize mode; ``img_size`` overrides the input size.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a detkit detection checkpoint.
        """
        from detkit.engine.checkpoint import load_checkpoint, load_model_state
        from detkit.engine.detection_task import detector_kwargs
        from detkit.models import create_detector, list_detectors

        ckpt = load_checkpoint(checkpoint)
        meta = dict(ckpt.get("model_meta") or {})
        config = ckpt.get("config") or {}
        name = meta.get("name") or (config.get("model") or {}).get("name")
        if config.get("task", "detect") != "detect" or name not in list_detectors():
            raise ValueError(f"checkpoint {checkpoint} is not a detection checkpoint (task {config.get('task')!r}, "
                             f"model {name!r}); train one with task: detect")
        classes = list(ckpt.get("classes") or meta.get("classes") or [])
        if not classes:
            raise ValueError(f"checkpoint {checkpoint} holds no class names")
        norm = ckpt.get("normalization") or {}
        mean, std = norm.get("mean") or meta.get("mean"), norm.get("std") or meta.get("std")
        if not mean or not std:
            raise ValueError(f"checkpoint {checkpoint} holds no normalisation mean/std")
        detect = config.get("detect") or {}
        model = create_detector(name, len(classes), weights="none", **detector_kwargs(name, detect))
        load_model_state(model, ckpt["model"], checkpoint)
        model.detkit_meta = meta
        size = img_size or (config.get("data") or {}).get("img_size") or meta.get("input_size")
        return cls(model, classes, meta.get("category_ids"), mean=mean, std=std, img_size=int(size),
                   resize_mode=detect.get("resize_mode", "letterbox"), device=device, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, *, img_size: int | None = None, device: str | torch.device = "cpu",
                        **kwargs: Any) -> Predictor:
        """A predictor for torchvision's COCO-pretrained detector ``name`` (``torchvision:fasterrcnn_resnet50_fpn``).

        The COCO weights must be in the torch hub cache (or downloadable); labels map to COCO category ids.

        Raises:
            ValueError: ``name`` is not a ``torchvision:`` detector.
            WeightsUnavailableError: the weights are neither cached nor downloadable; the message names the
                cache path to put the file at.
        """
        import torchvision.models as tvm
        from torchvision.models.detection import RetinaNet

        from detkit.models import TorchvisionDetector, list_detectors
        from detkit.models.tv_detection import coco_weights_path

        if not name.startswith("torchvision:") or name not in list_detectors():
            valid = [n for n in list_detectors() if n.startswith("torchvision:")]
            raise ValueError(f"model: expected one of {valid} for COCO-pretrained detection, got {name!r}")
        tv_name = name.split(":", 1)[1]
        coco_weights_path(tv_name, "coco")  # raises with the cache path when the weights are missing
        weights = tvm.get_model_weights(tv_name)["DEFAULT"]
        tv_model = tvm.get_model(tv_name, weights=weights, weights_backbone=None)
        mean = [float(v) for v in tv_model.transform.image_mean]
        std = [float(v) for v in tv_model.transform.image_std]
        size = img_size or int(tv_model.transform.fixed_size[0] if tv_model.transform.fixed_size
                               else tv_model.transform.min_size[0])
        categories = list(weights.meta["categories"])
        offset = 0 if isinstance(tv_model, RetinaNet) else 1  # torchvision's label = COCO category id
        model = TorchvisionDetector(model=tv_model, num_classes=len(categories) - offset, head_modules=[],
                                    label_offset=offset)
        model.detkit_meta = {"name": name, "num_classes": len(categories) - offset, "weights": "coco",
                             "pretrained": True, "mean": tuple(mean), "std": tuple(std), "input_size": size}
        classes = categories[offset:]
        category_ids = [i + offset for i in range(len(classes))]
        return cls(model, classes, category_ids, mean=mean, std=std, img_size=size, device=device, **kwargs)

    # ------------------------------------------------------------------ inference

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Tensor, list[Any]]:
        """Letterbox/resize RGB uint8 images into ``Tensor[B, 3, S, S]`` float32 (normalised) and their geometry."""
        arrays, params = [], []
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images[{i}]: expected an ndarray[H, W, 3] uint8 RGB (detkit.data.read_image "
                                 f"gives one), got {getattr(image, 'dtype', type(image).__name__)} "
                                 f"{getattr(image, 'shape', '')}")
            if self.resize_mode == "letterbox":
                out, p = letterbox_image(image, self.img_size)
            else:
                out, p = resize_image(image, self.img_size)
            arrays.append(out)
            params.append(p)
        batch = torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2).float()  # [B, 3, S, S]
        return batch * self._scale + self._shift, params

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, Tensor]]:
        """Detect objects in RGB images of any sizes.

        Args:
            images: ``ndarray[H, W, 3]`` uint8 RGB images (sizes may differ).

        Returns:
            One dict per image: ``boxes`` ``Tensor[K, 4]`` float32 ``(x1, y1, x2, y2)`` in that image's original
            pixels, ``scores`` ``Tensor[K]`` (decreasing), ``labels`` ``Tensor[K]`` int64 in ``0..C-1`` and
            ``category_ids`` ``Tensor[K]`` int64 (the training set's ids), all on the CPU.
        """
        results: list[dict[str, Tensor]] = []
        ids = torch.tensor(self.category_ids, dtype=torch.int64)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch, params = self.preprocess(chunk)
            detections = self.model(batch)
            for det, p, image in zip(detections, params, chunk):
                boxes = unletterbox_boxes(det["boxes"].float().cpu(), p, clip_hw=image.shape[:2])
                labels = det["labels"].cpu().long()
                results.append({"boxes": boxes, "scores": det["scores"].float().cpu(), "labels": labels,
                                "category_ids": ids[labels]})
        return results


@dataclass
class DetectRunSummary:
    """What :func:`run_detection` did; ``str()`` gives a one-line summary."""

    output: Path
    images: int = 0  # images read and detected
    detections: int = 0  # detections written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files
    seconds: float = 0.0  # wall time of reading, detection and writing

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.images} images, {self.detections} detections, {len(self.skipped)} unreadable skipped, "
                f"{self.images_per_s:.1f} images/s; results in {self.output}")


def run_detection(
    predictor: Predictor,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    save_txt: bool = False,
    save_images: bool = True,
) -> DetectRunSummary:
    """Detect on every image of ``source`` and write the results to ``output``.

    Writes (each file atomically): annotated images ``OUTPUT/<stem>.jpg`` (boxes, class names, scores),
    ``OUTPUT/predictions.json`` (COCO results: ``file_name``, ``image_id`` (index in the sorted source list),
    ``category_id`` (the training set's), ``bbox`` ``[x, y, w, h]`` original pixels, ``score``) and, with
    ``save_txt``, ``OUTPUT/labels/<stem>.txt`` (YOLO rows ``label cx cy w h score``). Unreadable files are
    logged, listed in the summary and skipped.

    Args:
        predictor: a :class:`Predictor`.
        source: an image file, a folder of images or a glob pattern.
        output: results folder (created).
        save_txt: also write YOLO txt files.
        save_images: write annotated images.

    Returns:
        A :class:`DetectRunSummary`.
    """
    files = find_sources(source)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = DetectRunSummary(output=output)
    results: list[dict[str, Any]] = []
    names = _unique_stems(files)
    start = time.perf_counter()
    for offset in range(0, len(files), predictor.batch_size):
        chunk, images = [], []
        for index in range(offset, min(offset + predictor.batch_size, len(files))):
            try:
                images.append(read_image(files[index]))
                chunk.append(index)
            except DatasetError as err:
                logger.warning("%s; skipped", err)
                summary.skipped.append((str(files[index]), str(err)))
        if not images:
            continue
        for index, image, det in zip(chunk, images, predictor.predict(images)):
            path = files[index]
            summary.images += 1
            summary.detections += len(det["scores"])
            xywh = det["boxes"].clone()
            xywh[:, 2:] -= xywh[:, :2]
            for box, score, cat in zip(xywh.tolist(), det["scores"].tolist(), det["category_ids"].tolist()):
                results.append({"image_id": index, "file_name": str(path), "category_id": int(cat),
                                "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
            if save_images:
                drawn = draw_detections(image, det["boxes"], det["labels"], predictor.classes, det["scores"])
                write_image(output / f"{names[index]}.jpg", drawn)
            if save_txt:
                rows = yolo_lines(det["boxes"], det["labels"], det["scores"], image.shape[:2])
                _atomic_text(output / "labels" / f"{names[index]}.txt", "".join(r + "\n" for r in rows))
    summary.seconds = time.perf_counter() - start
    _atomic_text(output / "predictions.json", json.dumps(results, indent=1) + "\n")
    logger.info("%s", summary)
    return summary


def _unique_stems(files: Sequence[Path]) -> list[str]:
    """Output names: each file's stem, with ``_2``, ``_3`` ... appended where stems repeat (folders, globs)."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        n = seen.get(f.stem, 0) + 1
        seen[f.stem] = n
        names.append(f.stem if n == 1 else f"{f.stem}_{n}")
    return names


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_text(text, path)
