"""Inference and export on the CPU: resnet18_ssd latency with PyTorch, TorchScript and ONNX Runtime; video frames/s;
tiled inference against the sahi library on a large image with small objects.

Export latency: one random-weight resnet18_ssd checkpoint exported to TorchScript and ONNX (decode, threshold, top-k
and NMS in each graph), the same normalised images (batch 1) through each, same thread count; median ms per image
and the ratio to eager PyTorch. Video: ``run_video_detection`` (what ``tools/detect.py --source clip.mp4`` runs:
read, detect, draw, encode, JSON lines) on a generated 640x480 clip at 320 px input. Tiling: a resnet18_ssd trained
here on the shapes set (128 px inputs; or ``--tiling-checkpoint``) on generated 1280x960 images holding 24-48 px
shapes: recall and precision at IoU 0.5 (same class) and seconds per image, for one letterboxed pass, detkit tiles
and sahi's ``get_sliced_prediction`` with the same tiles, model and thresholds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

CLASSES = ["circle", "square", "triangle", "star"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-export", action="store_true", help="no PyTorch / TorchScript / ONNX Runtime latency")
    parser.add_argument("--skip-video", action="store_true", help="no video frames/s")
    parser.add_argument("--skip-tiling", action="store_true", help="no tiled-inference comparison (it trains a model)")
    parser.add_argument("--video-frames", type=int, default=60, help="video: frames of the generated 640x480 clip")
    parser.add_argument("--tiling-checkpoint", type=Path, default=None,
                        help="tiling: a shapes detector to use instead of training one here")
    parser.add_argument("--tiling-output", type=Path, default=None,
                        help="tiling: folder for the training data and run (default: a temporary folder)")
    parser.add_argument("--tiling-train-images", type=int, default=1000, help="tiling: generated training images")
    parser.add_argument("--tiling-epochs", type=int, default=5, help="tiling: training epochs")
    parser.add_argument("--tiling-images", type=int, default=3, help="tiling: large test images")


def _checkpoint(folder: Path, size: int) -> Path:
    """A random-weight resnet18_ssd detection checkpoint for ``size`` px inputs (4 classes)."""
    from detkit.engine.checkpoint import save_checkpoint
    from detkit.models import create_detector

    torch.manual_seed(0)
    model = create_detector("resnet18_ssd", len(CLASSES), weights="none", input_size=size)
    config = {"task": "detect", "model": {"name": "resnet18_ssd", "weights": "none"}, "data": {"img_size": size},
              "detect": {"score_thresh": 0.01}}
    return save_checkpoint(folder / "best.pt", model=model, epoch=0, config=config, classes=CLASSES,
                           normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})


def _interleaved_medians(runners: dict[str, Any], inputs: list[torch.Tensor]) -> dict[str, float]:
    """Median ms per call of each runner; every input goes through all runners in turn, so that a change of load on
    a shared machine hits them alike. The first two inputs warm up (allocators, kernels, TorchScript's executor)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i, x in enumerate(inputs):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            if i >= 2:
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def bench_export_latency(args: argparse.Namespace) -> None:
    from detkit.export import ExportedDetector, export_checkpoint, open_export
    from detkit.models import model_from_checkpoint

    s = args.img_size
    with tempfile.TemporaryDirectory(prefix="detkit_bench_export_") as tmp:
        ckpt = _checkpoint(Path(tmp), s)
        model = model_from_checkpoint(ckpt).eval()
        model.set_postprocess(score_thresh=0.01, nms_thresh=0.45, detections_per_img=100)
        runners = {"PyTorch (eager)": model}
        for fmt, name in (("torchscript", "TorchScript"), ("onnx", "ONNX Runtime")):
            path = export_checkpoint(ckpt, fmt, conf=0.01, iou=0.45, max_det=100).path
            runners[name] = ExportedDetector(open_export(path, fmt))
        torch.manual_seed(1)
        inputs = [torch.randn(1, 3, s, s) for _ in range(args.images + 2)]
        times = _interleaved_medians(runners, inputs)
    print(f"export latency: resnet18_ssd {s} px, batch 1, random weights, score > 0.01 (decode, threshold, top-k, "
          f"NMS in every runtime), {torch.get_num_threads()} threads, median of {args.images} interleaved calls")
    eager = times["PyTorch (eager)"]
    for name, ms in times.items():
        print(f"  {name:<20} {ms:8.1f} ms   {eager / ms:5.2f}x eager's speed")
    verdict = "met" if times["ONNX Runtime"] < eager else "MISSED"
    print(f"  target ONNX Runtime faster than eager PyTorch: {verdict}")


def _clip(path: Path, frames: int) -> Path:
    """A 640x480 mp4v clip of shapes moving over a gradient, at 25 frames/s."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 480))
    background = np.tile(np.linspace(40, 160, 640, dtype=np.uint8)[None, :, None], (480, 1, 3))
    for i in range(frames):
        frame = background.copy()
        cv2.circle(frame, (50 + 8 * i % 540, 120), 40, (0, 200, 255), -1)
        cv2.rectangle(frame, (400 - 5 * i % 300, 260), (480 - 5 * i % 300, 340), (255, 80, 0), -1)
        writer.write(frame)
    writer.release()
    return path


def bench_video(args: argparse.Namespace) -> None:
    from detkit.export import export_checkpoint, load_predictor
    from detkit.infer import run_video_detection

    with tempfile.TemporaryDirectory(prefix="detkit_bench_video_") as tmp:
        folder = Path(tmp)
        ckpt = _checkpoint(folder, 320)
        clip = _clip(folder / "clip.mp4", args.video_frames)
        onnx = export_checkpoint(ckpt, "onnx", dynamic_batch=True).path
        print(f"video: {args.video_frames} frames 640x480 -> resnet18_ssd at 320 px (random weights, conf 0.25), "
              f"batch 8, annotated mp4 + JSON lines, {torch.get_num_threads()} threads")
        for name, path in (("checkpoint (PyTorch)", ckpt), ("ONNX export", onnx)):
            predictor = load_predictor(path, "detect", batch_size=8)
            summary = run_video_detection(predictor, clip, folder / f"out_{path.suffix[1:]}")
            print(f"  {name:<22} {summary.frames_per_s:6.1f} frames/s ({summary.frames} frames in "
                  f"{summary.seconds:.1f} s)")


def _train_shapes_detector(folder: Path, args: argparse.Namespace) -> Path:
    """resnet18_ssd on the generated shapes set with the demo recipe (128 px inputs), for the tiling comparison."""
    from detkit.config import load_config
    from detkit.data.det_synthetic import make_shapes_detection
    from detkit.engine.experiment import run_experiment

    root = folder / "shapes"
    make_shapes_detection(root, n_train=args.tiling_train_images, n_val=100, min_size=128, max_size=160, seed=0)
    overrides = [f"data.root={root}", f"train.output={folder / 'run'}", f"train.epochs={args.tiling_epochs}",
                 f"train.eval_every={args.tiling_epochs}", "model.weights=none", "train.device=cpu",
                 "train.tensorboard=false", "data.workers=1"]
    config = Path(__file__).resolve().parents[2] / "configs" / "shapes_det_resnet18_ssd.yaml"
    start = time.perf_counter()
    result = run_experiment(load_config(config, overrides))
    best = result.get("best") or {}
    value = best.get("value")
    shown = f"{value:.3f}" if isinstance(value, float) else "n/a"
    print(f"  trained resnet18_ssd on {args.tiling_train_images} shapes images x {args.tiling_epochs} epochs in "
          f"{time.perf_counter() - start:.0f} s: val {best.get('metric')} {shown}")
    return folder / "run" / "best.pt"


def _large_images(n: int, shapes: int = 60) -> list[dict[str, np.ndarray]]:
    """``n`` 1280x960 shapes images with ``shapes`` 24-48 px shapes each and their visible boxes and labels."""
    from detkit.data.det_synthetic import paint_shapes
    from detkit.data.synthetic import add_sensor_noise, random_shape, render_background

    rng = np.random.default_rng(123)
    out = []
    for _ in range(n):
        image = render_background(rng, 960, 1280)
        kinds = rng.integers(0, len(CLASSES), shapes)
        specs = [random_shape(rng, CLASSES[k], 960, 1280, size_range=(0.025, 0.05), background=image) for k in kinds]
        boxes, index, _ = paint_shapes(image, specs)
        out.append({"image": add_sensor_noise(rng, image), "boxes": boxes, "labels": kinds[index]})
    return out


def _match(boxes: np.ndarray, labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> int:
    """True positives: detections (by decreasing score) matched one to one to same-class boxes at IoU >= 0.5."""
    from detkit.ops import box_iou

    if len(boxes) == 0 or len(gt_boxes) == 0:
        return 0
    iou = box_iou(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(gt_boxes, dtype=torch.float32))
    iou[torch.as_tensor(labels)[:, None] != torch.as_tensor(gt_labels)[None, :]] = 0
    taken, hits = set(), 0
    for row in iou:
        order = [int(j) for j in row.argsort(descending=True) if row[j] >= 0.5 and int(j) not in taken]
        if order:
            taken.add(order[0])
            hits += 1
    return hits


def _sahi_model(predictor: Any) -> Any:
    """A sahi ``DetectionModel`` running a detkit Predictor on each slice."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class DetkitSahiModel(DetectionModel):
        def set_model(self, model: Any, **kwargs: Any) -> None:
            self.model = model
            self.category_mapping = {str(i): name for i, name in enumerate(model.classes)}

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = self.model.predict([np.ascontiguousarray(image)])

        @property
        def num_categories(self) -> int:
            return len(self.category_mapping)

        @property
        def category_names(self) -> list[str]:
            return list(self.category_mapping.values())

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=[[0, 0]],  # noqa: B006
                                                                     full_shape_list=None) -> None:
            shift = shift_amount_list[0] if shift_amount_list else [0, 0]
            shape = None if full_shape_list is None else full_shape_list[0]
            det = self._original_predictions[0]
            self._object_prediction_list_per_image = [[
                ObjectPrediction(bbox=box, category_id=int(label), category_name=self.category_mapping[str(int(label))],
                                 score=float(score), shift_amount=shift, full_shape=shape)
                for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist())
                if score > self.confidence_threshold]]

    return DetkitSahiModel(model=predictor, confidence_threshold=predictor.conf, device="cpu")


def _run_tiling_methods(predictor: Any, samples: list[Any], tile: int, overlap: float) -> dict[str, dict[str, float]]:
    from sahi.predict import get_sliced_prediction

    from detkit.infer import TiledPredictor

    tiled = TiledPredictor(predictor, tile=tile, overlap=overlap)
    sahi_model = _sahi_model(predictor)

    def run_sahi(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = get_sliced_prediction(image, sahi_model, slice_height=tile, slice_width=tile,
                                       overlap_height_ratio=overlap, overlap_width_ratio=overlap,
                                       perform_standard_pred=False, verbose=0)
        preds = result.object_prediction_list
        return (np.array([p.bbox.to_xyxy() for p in preds]).reshape(-1, 4),
                np.array([p.category.id for p in preds], dtype=np.int64))

    def run_detkit(p: Any) -> Any:
        return lambda image: (lambda d: (d["boxes"].numpy(), d["labels"].numpy()))(p.predict([image])[0])

    methods = {"single pass (letterboxed)": run_detkit(predictor), f"detkit tiles {tile} px": run_detkit(tiled),
               f"sahi {tile} px slices (GREEDYNMM/IOS)": run_sahi}
    out = {}
    for name, run in methods.items():
        tp = found = total = 0
        start = time.perf_counter()
        for sample in samples:
            boxes, labels = run(sample["image"])
            tp += _match(boxes, labels, sample["boxes"], sample["labels"])
            found, total = found + len(boxes), total + len(sample["boxes"])
        out[name] = {"recall": tp / max(1, total), "precision": tp / max(1, found),
                     "seconds": (time.perf_counter() - start) / len(samples), "objects": total}
    return out


def bench_tiling(args: argparse.Namespace) -> None:
    from detkit.infer import Predictor

    print(f"tiling: small objects on {args.tiling_images} generated 1280x960 images (24-48 px shapes), IoU 0.5, "
          f"conf 0.25, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="detkit_bench_tiles_") as tmp:
        ckpt = args.tiling_checkpoint or _train_shapes_detector(args.tiling_output or Path(tmp), args)
        predictor = Predictor.from_checkpoint(ckpt, conf=0.25, iou=0.45, batch_size=8)
        samples = _large_images(args.tiling_images)
        rows = _run_tiling_methods(predictor, samples, tile=160, overlap=0.2)
    objects = next(iter(rows.values()))["objects"]
    print(f"  {'method':<40} {'recall':>7} {'precision':>9} {'s/image':>8}   ({objects} objects)")
    for name, row in rows.items():
        print(f"  {name:<40} {row['recall']:7.3f} {row['precision']:9.3f} {row['seconds']:8.2f}")


def run(args: argparse.Namespace) -> None:
    """The inference part of ``tools/bench.py detect``."""
    if not args.skip_export:
        bench_export_latency(args)
    if not args.skip_video:
        bench_video(args)
    if not args.skip_tiling:
        bench_tiling(args)
