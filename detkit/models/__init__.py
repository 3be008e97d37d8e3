"""Models: classifiers and detectors with swapped heads, pretrained-weight handling, weight files, per-stage parameters.

Start with ``create_classifier(name, num_classes, weights)`` or ``create_detector(name, num_classes, weights)``;
``param_stages`` feeds per-layer learning rates and freezing; ``model_from_checkpoint`` rebuilds a trained model.
Importing this package imports every model module, and each registers itself in :mod:`detkit.models.registry`.
"""

from detkit.models import ssd, tiny_ssd, tv_detection  # noqa: F401  (register the detectors)
from detkit.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    build_model,
    checkpoint_config,
    load_checkpoint,
    load_model_state,
    model_from_checkpoint,
)
from detkit.models.classifier import LinearHead, create_classifier
from detkit.models.detection_losses import (
    MultiboxLoss,
    assign_targets,
    hard_negative_mask,
)
from detkit.models.detector import Detector, build_detector, create_detector
from detkit.models.meta import ModelMeta
from detkit.models.pretrained import (
    OFFLINE_ENV,
    PretrainedWeights,
    WeightsUnavailableError,
    hub_cache_path,
    locate_pretrained,
    timm_pretrained,
    torchvision_pretrained,
)
from detkit.models.registry import (
    is_detector,
    list_classifiers,
    list_detectors,
    register_classifier,
    register_detector,
)
from detkit.models.single_shot import SingleShotDetector, SSDPredictionHead
from detkit.models.ssd import ResNetSSD
from detkit.models.stages import param_stages, unwrap_model
from detkit.models.tiny_ssd import TinySSD
from detkit.models.tv_detection import TorchvisionDetector
from detkit.models.weights import load_weights_file, read_state_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "OFFLINE_ENV",
    "Detector",
    "LinearHead",
    "ModelMeta",
    "MultiboxLoss",
    "PretrainedWeights",
    "ResNetSSD",
    "SSDPredictionHead",
    "SingleShotDetector",
    "TinySSD",
    "TorchvisionDetector",
    "WeightsUnavailableError",
    "assign_targets",
    "build_detector",
    "build_model",
    "checkpoint_config",
    "create_classifier",
    "create_detector",
    "hard_negative_mask",
    "hub_cache_path",
    "is_detector",
    "list_classifiers",
    "list_detectors",
    "load_checkpoint",
    "load_model_state",
    "load_weights_file",
    "locate_pretrained",
    "model_from_checkpoint",
    "param_stages",
    "read_state_dict",
    "register_classifier",
    "register_detector",
    "timm_pretrained",
    "torchvision_pretrained",
    "unwrap_model",
]
