"""Box operations for detection: boxes and IoU, anchors, offset coding, matching, NMS and post-processing.

torchvision 0.29's signatures and results (nms index for index), on CPU and CUDA; no rotated boxes, no TorchScript.
"""

from detkit.ops.anchors import (
    AnchorGenerator,
    DefaultBoxGenerator,
    MultiboxPriorGenerator,
    multibox_prior,
)
from detkit.ops.boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    complete_box_iou,
    distance_box_iou,
    elementwise_box_iou,
    elementwise_complete_box_iou,
    elementwise_distance_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    remove_small_boxes,
)
from detkit.ops.coder import BoxCoder
from detkit.ops.matching import Matcher, assign_anchors, multibox_target
from detkit.ops.nms import batched_nms, nms, soft_nms
from detkit.ops.postprocess import multibox_detection, postprocess_detections

__all__ = [
    "AnchorGenerator",
    "BoxCoder",
    "DefaultBoxGenerator",
    "Matcher",
    "MultiboxPriorGenerator",
    "assign_anchors",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "complete_box_iou",
    "distance_box_iou",
    "elementwise_box_iou",
    "elementwise_complete_box_iou",
    "elementwise_distance_box_iou",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "multibox_detection",
    "multibox_prior",
    "multibox_target",
    "nms",
    "postprocess_detections",
    "remove_small_boxes",
    "soft_nms",
]
