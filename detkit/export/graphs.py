"""The modules an export traces: a classifier's logits, and detectors with decode, threshold and NMS in the graph.

Every exported detector maps ``images Tensor[B, 3, S, S]`` (normalised) and three runtime thresholds to flat
detections ``boxes Tensor[N, 4]`` ``(x1, y1, x2, y2)`` input pixels, ``scores Tensor[N]``, ``labels Tensor[N]`` int64
in ``0..C-1`` and ``batch_index Tensor[N]`` int64, by decreasing score within each image.
"""

from __future__ import annotations

import sys
from typing import Tuple

import torch
import torchvision
from torch import Tensor, nn

from detkit.models.single_shot import SingleShotDetector
from detkit.models.tv_detection import TorchvisionDetector

__all__ = ["ClassifierGraph", "DETECTION_INPUTS", "DETECTION_OUTPUTS", "SingleShotGraph", "TorchvisionGraph",
           "select_detections"]

#: graph input and output names of every exported detector
DETECTION_INPUTS = ("images", "score_threshold", "iou_threshold", "max_detections")
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "batch_index")


class _NMSWithThresholdInput(torch.autograd.Function):
    """``torchvision.ops.nms`` whose IoU threshold is a tensor, exported as ONNX ``NonMaxSuppression`` with the
    threshold as a graph input (torchvision's own ONNX rule bakes it in as a constant)."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: Tensor) -> Tensor:  # type: ignore[override]
        return torchvision.ops.nms(boxes, scores, float(iou_threshold))

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold):  # noqa: ANN001, ANN205 (the ONNX graph builder's signature)
        axis0 = g.op("Constant", value_t=torch.tensor([0], dtype=torch.long))
        batched_boxes = g.op("Unsqueeze", boxes, axis0)  # [1, P, 4]
        batched_scores = g.op("Unsqueeze", g.op("Unsqueeze", scores, axis0), axis0)  # [1, 1, P]
        max_out = g.op("Constant", value_t=torch.tensor([sys.maxsize], dtype=torch.long))
        selected = g.op("NonMaxSuppression", batched_boxes, batched_scores, max_out, iou_threshold)  # [K, 3]
        return g.op("Gather", selected, g.op("Constant", value_t=torch.tensor(2, dtype=torch.long)), axis_i=1)


@torch.jit.unused
def _traced_nms(boxes: Tensor, scores: Tensor, iou_threshold: Tensor) -> Tensor:
    return _NMSWithThresholdInput.apply(boxes, scores, iou_threshold)


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: Tensor) -> Tensor:
    """Greedy NMS, kept indices by decreasing score: torchvision's op when scripted, an ONNX node when traced."""
    if torch.jit.is_scripting():
        return torch.ops.torchvision.nms(boxes, scores, float(iou_threshold))
    return _traced_nms(boxes, scores, iou_threshold)


def _cap_per_image(image: Tensor, num_images: int, max_detections: Tensor) -> Tensor:
    """Bool ``Tensor[K]``: whether each of ``image`` ``Tensor[K]`` (rows by decreasing score) is among its
    image's first ``max_detections``."""
    onehot = (image[:, None] == torch.arange(num_images, device=image.device)[None, :]).to(torch.int64)  # [K, B]
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # position of each row within its image
    return rank < max_detections


def select_detections(
    scores: Tensor, boxes: Tensor, score_threshold: Tensor, iou_threshold: Tensor, max_detections: Tensor, topk: int,
    max_coordinate: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Threshold, top-k per class, class-aware NMS and the per-image cap, in ops both tracers and TorchScript take.

    The selection of :func:`detkit.ops.postprocess_detections` (SSD's): per image and class the ``topk``
    best-scoring anchors above ``score_threshold`` are candidates; NMS runs on all candidates at once with the
    boxes of each (image, class) shifted by ``group * (max_coordinate + 1)`` so groups never overlap.

    Args:
        scores: ``Tensor[B, A, C]`` per-class probabilities.
        boxes: ``Tensor[B, A, 4]`` ``(x1, y1, x2, y2)``, inside ``[0, max_coordinate]``.
        score_threshold, iou_threshold: ``Tensor[1]`` float32; a detection needs ``score > score_threshold``.
        max_detections: ``Tensor[1]`` int64, detections kept per image.
        topk: candidates per image and class.
        max_coordinate: the largest coordinate a box can have (the input side).

    Returns:
        ``(boxes Tensor[N, 4], scores Tensor[N], labels Tensor[N] int64, batch_index Tensor[N] int64)``,
        by decreasing score.
    """
    num_images, num_classes = scores.shape[0], scores.shape[2]
    per_class = scores.transpose(1, 2)  # [B, C, A]
    top, anchor = per_class.topk(min(topk, per_class.shape[2]), dim=2)  # [B, C, k] each, by decreasing score
    image, label, rank = (top > score_threshold).nonzero().unbind(1)  # [P] each
    anchor = anchor[image, label, rank]
    score = top[image, label, rank]
    candidates = boxes[image, anchor]  # [P, 4]
    shift = ((image * num_classes + label).to(candidates.dtype) * (max_coordinate + 1.0))[:, None]
    keep = _nms(candidates + shift, score, iou_threshold)  # [K] by decreasing score
    keep = keep[_cap_per_image(image[keep], num_images, max_detections)]
    return candidates[keep], score[keep], label[keep], image[keep]


class _ScoresAndBoxes(nn.Module):
    """The traceable network part of a single-shot detector: images -> per-class scores and decoded boxes."""

    def __init__(self, detector: SingleShotDetector, anchors: Tensor) -> None:
        super().__init__()
        self.detector = detector
        self.register_buffer("anchors", anchors)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        return self.detector.scores_and_boxes(images, self.anchors)


class SingleShotGraph(nn.Module):
    """A single-shot detector (ResNet-SSD, TinySSD) at a fixed input side, with its whole post-processing.

    ``forward(images, score_threshold, iou_threshold, max_detections)`` -> :data:`DETECTION_OUTPUTS` (see the
    module docstring). The anchors of ``input_size`` are a buffer; ``net`` (images -> scores, boxes) can be
    replaced by its traced version for TorchScript, the selection then compiles with ``torch.jit.script``.

    Args:
        detector: the detector (eval mode).
        input_size: the square input side in pixels.
    """

    def __init__(self, detector: SingleShotDetector, input_size: int) -> None:
        super().__init__()
        with torch.no_grad():
            _, _, anchors = detector.head_outputs(torch.zeros(1, 3, input_size, input_size))
        self.net: nn.Module = _ScoresAndBoxes(detector, anchors)
        self.topk = int(detector.topk_candidates)
        self.max_coordinate = float(input_size)

    def forward(self, images: Tensor, score_threshold: Tensor, iou_threshold: Tensor,
                max_detections: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        scores, boxes = self.net(images)
        return select_detections(scores, boxes, score_threshold, iou_threshold, max_detections, self.topk,
                                 self.max_coordinate)


class TorchvisionGraph(nn.Module):
    """A torchvision detector (Faster R-CNN, RetinaNet, SSD) with torchvision's own resize and post-processing.

    Its thresholds are the model's attributes when exported (torchvision reads them as constants); the
    runtime ``score_threshold`` and ``max_detections`` inputs filter and cap what it returns, and
    ``iou_threshold`` is not read (the export records the NMS IoU it was made with). ONNX takes one image per
    call; TorchScript (scripted) any batch.
    """

    def __init__(self, detector: TorchvisionDetector) -> None:
        super().__init__()
        self.model = detector.model
        self.label_offset = int(detector.label_offset)

    def forward(self, images: Tensor, score_threshold: Tensor, iou_threshold: Tensor,
                max_detections: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.model(list(images.unbind(0)))
        detections = out[1] if isinstance(out, tuple) else out  # scripted torchvision returns (losses, detections)
        boxes, scores, labels, index = [], [], [], []
        for i, det in enumerate(detections):
            keep = det["scores"] > score_threshold
            keep = keep & (torch.arange(keep.shape[0], device=keep.device) < max_detections)
            boxes.append(det["boxes"][keep])
            scores.append(det["scores"][keep])
            labels.append(det["labels"][keep] - self.label_offset)
            index.append(torch.full_like(labels[-1], i))
        return torch.cat(boxes), torch.cat(scores), torch.cat(labels), torch.cat(index)


class ClassifierGraph(nn.Module):
    """A classifier: ``images Tensor[B, 3, S, S]`` (normalised) -> ``logits Tensor[B, C]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)
