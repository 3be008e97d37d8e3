"""Evaluation: classification metrics and confusion matrices; COCO detection mAP via pycocotools; the evaluators.

Metrics work on tensors of predictions and targets, independent of the trainer; the evaluators run a model over
validation batches for the training loop and ``tools/eval.py``.
"""

from detkit.eval.classification import (
    ClassificationEvaluator,
    ClassificationMeter,
    confusion_matrix,
    most_confused,
    precision_recall,
    topk_accuracy,
    topk_correct,
)
from detkit.eval.coco import (
    CocoEvaluator,
    CocoMetrics,
    plot_pr_curves,
    predictions_to_coco_results,
)
from detkit.eval.detection import DetectionEvaluator
from detkit.eval.evaluator import Evaluator

__all__ = [
    "ClassificationEvaluator",
    "ClassificationMeter",
    "CocoEvaluator",
    "CocoMetrics",
    "DetectionEvaluator",
    "Evaluator",
    "confusion_matrix",
    "most_confused",
    "plot_pr_curves",
    "precision_recall",
    "predictions_to_coco_results",
    "topk_accuracy",
    "topk_correct",
]
