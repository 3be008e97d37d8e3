"""Inference: run trained models on images and write the results (annotated images, COCO JSON, YOLO txt).

``Predictor.from_checkpoint(best.pt)`` then ``run_detection(predictor, source, output)``; ``find_sources`` reads
files, folders and globs.
"""

from detkit.infer.predictor import Predictor
from detkit.infer.sources import find_sources
from detkit.infer.writers import DetectRunSummary, run_detection, yolo_lines

__all__ = ["DetectRunSummary", "Predictor", "find_sources", "run_detection", "yolo_lines"]
