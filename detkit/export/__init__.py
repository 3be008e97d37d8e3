"""Exported models: ONNX and TorchScript files of detkit checkpoints, verified when written, run like the originals.

``export_checkpoint(best.pt, "onnx")`` writes ``best.onnx`` (decode, thresholds and NMS in the graph for detectors;
classes, normalisation and input size inside); ``load_predictor(path, task)`` runs a checkpoint or an export through
the inference predictors of :mod:`detkit.infer`.
"""

from detkit.export.exporter import ExportMismatchError, ExportReport, default_export_path, export_checkpoint
from detkit.export.graphs import ClassifierGraph, SingleShotGraph, TorchvisionGraph, select_detections
from detkit.export.meta import EXPORT_FORMAT, FORMATS, ExportMeta
from detkit.export.onnx_format import OnnxSession
from detkit.export.runtime import ExportedClassifier, ExportedDetector, load_predictor, model_file_kind, open_export
from detkit.export.torchscript_format import TorchScriptSession
from detkit.export.verify import Parity, compare_detections, compare_logits

__all__ = [
    "EXPORT_FORMAT",
    "FORMATS",
    "ClassifierGraph",
    "ExportMeta",
    "ExportMismatchError",
    "ExportReport",
    "ExportedClassifier",
    "ExportedDetector",
    "OnnxSession",
    "Parity",
    "SingleShotGraph",
    "TorchScriptSession",
    "TorchvisionGraph",
    "compare_detections",
    "compare_logits",
    "default_export_path",
    "export_checkpoint",
    "load_predictor",
    "model_file_kind",
    "open_export",
    "select_detections",
]
