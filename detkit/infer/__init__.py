"""Inference: run trained models on images, videos and cameras and write the results.

Detection: ``Predictor.from_checkpoint(best.pt)`` (``TiledPredictor`` for large images) then ``run_detection(predictor,
source, output)`` (annotated images, COCO JSON with the dataset's image ids, YOLO txt) or ``run_video_detection``
(annotated video, JSON lines). Classification: ``ClassificationPredictor`` and ``run_classification`` (top-k CSV/JSON,
contact sheet). ``find_sources`` reads files, folders and globs; ``VideoFrames`` videos, cameras and streams.
Exports (ONNX, TorchScript) load through :func:`detkit.export.load_predictor` into the same predictors.
"""

from detkit.infer.classification_writers import ClassifyRunSummary, run_classification, top_k
from detkit.infer.classifier import ClassificationPredictor
from detkit.infer.image_ids import dataset_image_ids, match_image_ids, split_annotations
from detkit.infer.predictor import Predictor
from detkit.infer.sources import VIDEO_EXTENSIONS, VideoFrames, find_sources, is_stream_source
from detkit.infer.tiling import TiledPredictor, tile_windows
from detkit.infer.video import VideoRunSummary, VideoSink, run_video_detection
from detkit.infer.writers import (
    DetectRunSummary,
    check_output_location,
    coco_results,
    run_detection,
    write_errors_as_user_errors,
    write_yolo_names,
    yolo_lines,
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "ClassificationPredictor",
    "ClassifyRunSummary",
    "DetectRunSummary",
    "Predictor",
    "TiledPredictor",
    "VideoFrames",
    "VideoRunSummary",
    "VideoSink",
    "check_output_location",
    "coco_results",
    "dataset_image_ids",
    "find_sources",
    "is_stream_source",
    "match_image_ids",
    "run_classification",
    "run_detection",
    "run_video_detection",
    "split_annotations",
    "tile_windows",
    "top_k",
    "write_errors_as_user_errors",
    "write_yolo_names",
    "yolo_lines",
]
