"""Evaluation: classification metrics and confusion matrices; COCO detection mAP via pycocotools.

Everything here works on tensors of predictions and targets, independent of the trainer.
"""

from detkit.eval.classification import (
    ClassificationMeter,
    confusion_matrix,
    most_confused,
    precision_recall,
    topk_accuracy,
    topk_correct,
)
from detkit.eval.coco import CocoEvaluator, CocoMetrics, plot_pr_curves, predictions_to_coco_results

__all__ = [
    "ClassificationMeter",
    "CocoEvaluator",
    "CocoMetrics",
    "confusion_matrix",
    "most_confused",
    "plot_pr_curves",
    "predictions_to_coco_results",
    "precision_recall",
    "topk_accuracy",
    "topk_correct",
]
