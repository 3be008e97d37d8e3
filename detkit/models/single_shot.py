"""What single-shot detectors share (ResNet-SSD, TinySSD): the per-level predictor head, forward, loss, decoding.

``SingleShotDetector``: features -> predictors -> anchors -> multibox loss (training) or detections (eval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detkit.config.sections import DetectConfig
from detkit.models.detection_losses import MultiboxLoss
from detkit.models.detector import Detector, check_detection_inputs
from detkit.ops import postprocess_detections

__all__ = ["SSDPredictionHead", "SingleShotDetector", "loss_config_kwargs"]

#: the ``detect`` config keys every single-shot detector takes (options of its MultiboxLoss)
LOSS_KEYS = ("cls_loss", "box_loss", "neg_pos_ratio", "box_weight")


def loss_config_kwargs(detect: DetectConfig) -> dict[str, Any]:
    """The loss keywords of a single-shot detector from the ``detect`` config section."""
    return {key: getattr(detect, key) for key in LOSS_KEYS}


class SSDPredictionHead(nn.Module):
    """Per-level 3x3 convolutions predicting class logits and box offsets for every anchor.

    Args:
        in_channels: channels of each feature level.
        num_anchors: anchors per cell of each level.
        num_columns: class-logit columns per anchor (``C + 1`` with a background column, ``C`` without).
        prior_probability: if given, the class biases start at ``-log((1 - p) / p)`` (RetinaNet's prior,
            for sigmoid/focal heads); otherwise at 0.

    Shapes:
        ``forward(features)``: one ``Tensor[B, C_l, h_l, w_l]`` per level -> ``(class_logits Tensor[B, A,
        num_columns], box_regression Tensor[B, A, 4])``, ``A = sum_l h_l * w_l * k_l``, anchors ordered
        level, row, column, anchor (the order of :mod:`detkit.ops.anchors`).
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_anchors: Sequence[int],
        num_columns: int,
        prior_probability: float | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(
                f"in_channels and num_anchors need one entry per level, got {len(in_channels)} and {len(num_anchors)}"
            )
        self.num_columns = num_columns
        self.cls_predictors = nn.ModuleList(
            nn.Conv2d(c, k * num_columns, kernel_size=3, padding=1) for c, k in zip(in_channels, num_anchors)
        )
        self.box_predictors = nn.ModuleList(
            nn.Conv2d(c, k * 4, kernel_size=3, padding=1) for c, k in zip(in_channels, num_anchors)
        )
        bias = 0.0 if prior_probability is None else -math.log((1 - prior_probability) / prior_probability)
        for conv in [*self.cls_predictors, *self.box_predictors]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        for conv in self.cls_predictors:
            nn.init.constant_(conv.bias, bias)

    @staticmethod
    def _flatten(x: Tensor, columns: int) -> Tensor:
        # [B, k * X, h, w] -> [B, h, w, k * X] -> [B, h * w * k, X]; contiguous for channels_last inputs
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, columns)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if len(features) != len(self.cls_predictors):
            raise ValueError(f"expected {len(self.cls_predictors)} feature levels, got {len(features)}")
        logits = [self._flatten(p(f), self.num_columns) for p, f in zip(self.cls_predictors, features)]
        boxes = [self._flatten(p(f), 4) for p, f in zip(self.box_predictors, features)]
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1)


class SingleShotDetector(Detector):
    """Forward, loss and post-processing shared by single-shot detectors (ResNet-SSD, TinySSD).

    Subclasses build ``self.head`` (an :class:`SSDPredictionHead` with ``self.loss_fn.num_columns(C)``
    columns) and implement ``extract_features(images) -> list[Tensor]`` and
    ``anchors_for(features, image_size) -> Tensor[A, 4]`` (pixel ``(x1, y1, x2, y2)``, cached).

    Args:
        num_classes: number of object classes C.
        cls_loss, box_loss, neg_pos_ratio, min_negatives, iou_threshold, bg_iou_threshold, focal_alpha,
            focal_gamma, box_weight: options of :class:`~detkit.models.detection_losses.MultiboxLoss`.
        score_thresh: per-class score below which detections are dropped.
        nms_thresh: IoU above which class-aware NMS suppresses the lower-scoring box.
        detections_per_img: detections kept per image.
        topk_candidates: candidates kept per image and class before NMS.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        cls_loss: str = "ce",
        box_loss: str = "smooth_l1",
        neg_pos_ratio: float = 3.0,
        min_negatives: int = 0,
        iou_threshold: float = 0.5,
        bg_iou_threshold: float | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_weight: float = 1.0,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 200,
        topk_candidates: int = 400,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.loss_fn = MultiboxLoss(
            cls_loss=cls_loss,
            box_loss=box_loss,
            neg_pos_ratio=neg_pos_ratio,
            min_negatives=min_negatives,
            iou_threshold=iou_threshold,
            bg_iou_threshold=bg_iou_threshold,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            box_weight=box_weight,
        )
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    @property
    def num_columns(self) -> int:
        """Class-logit columns per anchor: ``C + 1`` (column 0 background) for ``ce``, ``C`` for ``focal``."""
        return self.loss_fn.num_columns(self.num_classes)

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """Feature maps ``Tensor[B, C_l, h_l, w_l]``, one per level, finest first."""
        raise NotImplementedError

    def anchors_for(self, features: Sequence[Tensor], image_size: tuple[int, int]) -> Tensor:
        """``Tensor[A, 4]`` pixel anchors ``(x1, y1, x2, y2)`` for these feature maps and ``(H, W)``."""
        raise NotImplementedError

    def head_outputs(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw predictions for a batch.

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised images.

        Returns:
            ``(class_logits Tensor[B, A, K], box_regression Tensor[B, A, 4], anchors Tensor[A, 4])``, with
            ``K = num_columns`` and anchors in the input's pixels ``(x1, y1, x2, y2)``.
        """
        features = self.extract_features(images)
        class_logits, box_regression = self.head(features)
        anchors = self.anchors_for(features, (int(images.shape[-2]), int(images.shape[-1])))
        return class_logits, box_regression, anchors

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode (see :class:`~detkit.models.detector.Detector`).

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised images (any size; multiples of 32 for ResNet-SSD).
            targets: in training, one dict per image: ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` in
                the input's pixels, ``labels`` ``Tensor[K]`` int64 in ``0..C-1``.

        Returns:
            Training: ``{"loss_cls", "loss_box", "loss"}`` scalars (``"loss"`` is the total). Eval: one dict
            per image with ``boxes`` ``Tensor[K, 4]`` (input pixels), ``scores`` ``Tensor[K]``, ``labels``
            ``Tensor[K]`` int64 in ``0..C-1``.
        """
        images, targets = check_detection_inputs(images, targets, self.num_classes, self.training)
        class_logits, box_regression, anchors = self.head_outputs(images)
        if self.training:
            return self.loss_fn(class_logits, box_regression, anchors, targets)
        return self.postprocess(class_logits, box_regression, anchors, (int(images.shape[-2]), int(images.shape[-1])))

    def predict_with_losses(
        self, images: Tensor, targets: list[dict[str, Tensor]]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections and the multibox losses of one forward (see :meth:`Detector.predict_with_losses`)."""
        class_logits, box_regression, anchors = self.head_outputs(images)
        losses = self.loss_fn(class_logits, box_regression, anchors,
                              [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return self.postprocess(class_logits, box_regression, anchors, size), losses

    def scores_and_boxes(self, images: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """Per-class scores and decoded boxes of every anchor: the traceable half of :meth:`postprocess`.

        What an export runs in its graph before the score threshold and NMS (``detkit.export``).

        Args:
            images: ``Tensor[B, 3, H, W]`` normalised images.
            anchors: ``Tensor[A, 4]`` pixel ``(x1, y1, x2, y2)`` anchors of this input size (``head_outputs``').

        Returns:
            ``(scores Tensor[B, A, C], boxes Tensor[B, A, 4])``: class probabilities (softmax without the
            background column, or sigmoid) and ``(x1, y1, x2, y2)`` boxes clipped to the input, float32.
        """
        class_logits, box_regression = self.head(self.extract_features(images))
        if self.loss_fn.has_background_column:
            scores = class_logits.float().softmax(-1)[..., 1:]  # column k + 1 is class k
        else:
            scores = class_logits.float().sigmoid()
        boxes = self.loss_fn.box_coder.decode(anchors.float(), box_regression.float())  # [B, A, 4]
        height, width = images.shape[-2], images.shape[-1]
        x = boxes[..., 0::2].clamp(min=0, max=width)
        y = boxes[..., 1::2].clamp(min=0, max=height)
        return scores, torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)

    def postprocess(
        self, class_logits: Tensor, box_regression: Tensor, anchors: Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, Tensor]]:
        """Detections from head outputs via :func:`detkit.ops.postprocess_detections`.

        Args:
            class_logits: ``Tensor[B, A, K]``.
            box_regression: ``Tensor[B, A, 4]``.
            anchors: ``Tensor[A, 4]`` pixel ``(x1, y1, x2, y2)``.
            image_size: ``(H, W)`` of the input; boxes are clipped to it.

        Returns:
            One dict per image: ``boxes`` ``Tensor[K, 4]``, ``scores`` ``Tensor[K]``, ``labels`` ``Tensor[K]``
            int64 in ``0..C-1``.
        """
        background = self.loss_fn.has_background_column
        detections = postprocess_detections(
            class_logits.float(),
            box_regression.float(),
            anchors.float(),
            [image_size] * class_logits.shape[0],
            box_coder=self.loss_fn.box_coder,
            score_thresh=self.score_thresh,
            topk_candidates=self.topk_candidates,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
            activation="softmax" if background else "sigmoid",
            background_class=0 if background else None,
        )
        if background:
            for det in detections:
                det["labels"] = det["labels"] - 1  # column k + 1 is class k
        return detections
