"""Models: classifiers and detectors with swapped heads, pretrained-weight handling, weight files, per-stage parameters.

Start with ``create_classifier(name, num_classes, weights)`` or ``create_detector(name, num_classes, weights)``;
``param_stages`` feeds per-layer learning rates and freezing.
"""

from detkit.models.classifier import LinearHead, create_classifier
from detkit.models.detection_losses import MultiboxLoss, assign_targets, hard_negative_mask
from detkit.models.detector import Detector, create_detector, list_detectors, register_detector
from detkit.models.pretrained import (
    OFFLINE_ENV,
    PretrainedWeights,
    WeightsUnavailableError,
    hub_cache_path,
    locate_pretrained,
    timm_pretrained,
    torchvision_pretrained,
)
from detkit.models.registry import list_classifiers, register_classifier
from detkit.models.ssd import ResNetSSD, SingleShotDetector, SSDPredictionHead
from detkit.models.stages import param_stages, unwrap_model
from detkit.models.tiny_ssd import TinySSD
from detkit.models.tv_detection import TorchvisionDetector
from detkit.models.weights import load_weights_file, read_state_dict

__all__ = [
    "OFFLINE_ENV",
    "Detector",
    "LinearHead",
    "MultiboxLoss",
    "PretrainedWeights",
    "ResNetSSD",
    "SSDPredictionHead",
    "SingleShotDetector",
    "TinySSD",
    "TorchvisionDetector",
    "WeightsUnavailableError",
    "assign_targets",
    "create_classifier",
    "create_detector",
    "hard_negative_mask",
    "hub_cache_path",
    "list_classifiers",
    "list_detectors",
    "load_weights_file",
    "locate_pretrained",
    "param_stages",
    "read_state_dict",
    "register_classifier",
    "register_detector",
    "timm_pretrained",
    "torchvision_pretrained",
    "unwrap_model",
]
