"""Tests for detkit.ops.postprocess: the textbook's multibox_detection and SSD-style postprocess_detections.

Both are checked against plain per-image (and per-class) reference loops; the latter also against torchvision's SSD.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD

from detkit.ops.coder import BoxCoder
from detkit.ops.postprocess import multibox_detection, postprocess_detections

TEXTBOOK_ANCHORS = torch.tensor(
    [[0.1, 0.08, 0.52, 0.92], [0.08, 0.2, 0.56, 0.95], [0.15, 0.3, 0.62, 0.91], [0.55, 0.2, 0.9, 0.88]]
)


# --------------------------------------------------------------------------------------------
# multibox_detection
# --------------------------------------------------------------------------------------------
def test_multibox_detection_reproduces_the_textbook_example():
    offset_preds = torch.tensor([0] * TEXTBOOK_ANCHORS.numel())
    cls_probs = torch.tensor([[0] * 4, [0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.9]])
    output = multibox_detection(cls_probs[None], offset_preds[None], TEXTBOOK_ANCHORS[None], nms_threshold=0.5)
    expected = torch.tensor(
        [
            [0, 0.9, 0.1, 0.08, 0.52, 0.92],
            [1, 0.9, 0.55, 0.2, 0.9, 0.88],
            [-1, 0.8, 0.08, 0.2, 0.56, 0.95],
            [-1, 0.7, 0.15, 0.3, 0.62, 0.91],
        ]
    )
    assert output.shape == (1, 4, 6) and output.dtype == torch.float32
    torch.testing.assert_close(output[0], expected)


def _offset_inverse(anchors: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The textbook's decoding: centre offsets scaled by 10, log sizes by 5, no clamping."""
    anc = torchvision.ops.box_convert(anchors, "xyxy", "cxcywh")
    xy = offsets[:, :2] * anc[:, 2:] / 10 + anc[:, :2]
    wh = torch.exp(offsets[:, 2:] / 5) * anc[:, 2:]
    return torchvision.ops.box_convert(torch.cat((xy, wh), 1), "cxcywh", "xyxy")


def _multibox_detection_reference(cls_probs, offset_preds, anchors, nms_threshold, pos_threshold):
    """The textbook's algorithm, one image at a time."""
    out = []
    for cls_prob, offset_pred in zip(cls_probs, offset_preds):
        conf, class_id = torch.max(cls_prob[1:], 0)
        boxes = _offset_inverse(anchors, offset_pred.reshape(-1, 4))
        keep = torchvision.ops.nms(boxes, conf, nms_threshold)
        others = torch.tensor(sorted(set(range(len(conf))) - set(keep.tolist())), dtype=torch.long)
        class_id[others] = -1
        order = torch.cat((keep, others))
        class_id, conf, boxes = class_id[order], conf[order], boxes[order]
        below = conf < pos_threshold
        class_id[below] = -1
        conf[below] = 1 - conf[below]
        out.append(torch.cat((class_id[:, None], conf[:, None], boxes), 1))
    return torch.stack(out)


@pytest.mark.parametrize("nms_threshold, pos_threshold", [(0.5, 0.009999999), (0.3, 0.3), (0.7, 0.2)])
def test_multibox_detection_matches_the_per_image_reference(nms_threshold, pos_threshold):
    g = torch.Generator().manual_seed(0)
    batch, classes, num = 3, 4, 120
    centres = torch.rand(num, 2, generator=g) * 0.8 + 0.1
    sizes = torch.rand(num, 2, generator=g) * 0.3 + 0.05
    anchors = torch.cat((centres - sizes / 2, centres + sizes / 2), 1)
    cls_probs = torch.rand(batch, classes + 1, num, generator=g).softmax(1)
    offset_preds = torch.randn(batch, num * 4, generator=g) * 0.5
    actual = multibox_detection(cls_probs, offset_preds, anchors[None], nms_threshold, pos_threshold)
    expected = _multibox_detection_reference(cls_probs, offset_preds, anchors, nms_threshold, pos_threshold)
    assert torch.equal(actual[..., :2], expected[..., :2])  # classes, confidences and the row order
    torch.testing.assert_close(actual[..., 2:], expected[..., 2:], rtol=1e-5, atol=1e-6)
    assert torch.equal(multibox_detection(cls_probs, offset_preds, anchors, nms_threshold, pos_threshold), actual)


def test_multibox_detection_shapes_dtypes_and_bad_input():
    cls_probs = torch.rand(2, 3, 4, dtype=torch.float64)
    out = multibox_detection(cls_probs, torch.zeros(2, 16, dtype=torch.float64), TEXTBOOK_ANCHORS.double())
    assert out.shape == (2, 4, 6) and out.dtype == torch.float64
    empty = multibox_detection(torch.rand(2, 3, 0), torch.zeros(2, 0), torch.zeros(1, 0, 4))
    assert empty.shape == (2, 0, 6)
    with pytest.raises(ValueError, match=r"cls_probs must have shape \[B, C \+ 1, A\]"):
        multibox_detection(torch.rand(3, 4), torch.zeros(1, 16), TEXTBOOK_ANCHORS)
    with pytest.raises(ValueError, match=r"offset_preds must have shape \[B, A \* 4\] = \[2, 16\], got \[2, 12\]"):
        multibox_detection(cls_probs.float(), torch.zeros(2, 12), TEXTBOOK_ANCHORS)
    with pytest.raises(ValueError, match=r"anchors must hold A = 4 anchors"):
        multibox_detection(cls_probs.float(), torch.zeros(2, 16), TEXTBOOK_ANCHORS[:3])
    with pytest.raises(ValueError, match=r"anchors must have shape \[A, 4\] or \[1, A, 4\]"):
        multibox_detection(cls_probs.float(), torch.zeros(2, 16), TEXTBOOK_ANCHORS.expand(2, 4, 4))


# --------------------------------------------------------------------------------------------
# postprocess_detections
# --------------------------------------------------------------------------------------------
def _head_outputs(g, batch=3, num=300, classes=6, per_image_anchors=False):
    centres = torch.rand(num, 2, generator=g) * 280 + 10
    sizes = torch.rand(num, 2, generator=g) * 80 + 8
    anchors = torch.cat((centres - sizes / 2, centres + sizes / 2), 1)
    if per_image_anchors:
        anchors = anchors[None] + torch.randn(batch, num, 4, generator=g)
    logits = torch.randn(batch, num, classes, generator=g) * 2
    regression = torch.randn(batch, num, 4, generator=g) * 0.5
    return logits, regression, anchors


def _postprocess_reference(logits, regression, anchors, image_sizes, *, score_thresh, topk, nms_thresh, detections,
                           activation, background):
    """Per image, per class: threshold, top-k, NMS; then the best detections of the image."""
    results = []
    for i in range(logits.shape[0]):
        scores = logits[i].softmax(-1) if activation == "softmax" else logits[i].sigmoid()
        boxes = BoxCoder().decode(anchors if anchors.dim() == 2 else anchors[i], regression[i])
        if image_sizes is not None:
            boxes = torchvision.ops.clip_boxes_to_image(boxes, image_sizes[i])
        parts = []
        for c in range(logits.shape[-1]):
            if c == background:
                continue
            thr = float(score_thresh[c]) if isinstance(score_thresh, torch.Tensor) else score_thresh
            idx = (scores[:, c] > thr).nonzero().squeeze(1)
            idx = idx[scores[idx, c].sort(descending=True, stable=True)[1]][:topk]
            keep = idx[torchvision.ops.nms(boxes[idx], scores[idx, c], nms_thresh)]
            parts.append((boxes[keep], scores[keep, c], torch.full((len(keep),), c)))
        b, s, lab = (torch.cat(p) for p in zip(*parts))
        order = s.sort(descending=True, stable=True)[1][:detections]
        results.append({"boxes": b[order], "scores": s[order], "labels": lab[order]})
    return results


def _assert_same_detections(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a["labels"].dtype == torch.int64
        assert torch.equal(a["labels"], e["labels"])
        torch.testing.assert_close(a["scores"], e["scores"])
        torch.testing.assert_close(a["boxes"], e["boxes"])


@pytest.mark.parametrize(
    "options",
    [
        dict(activation="softmax", background=0, score_thresh=0.05, topk=1000, detections=100, sizes=True),
        dict(activation="softmax", background=2, score_thresh=0.2, topk=7, detections=10, sizes=False),
        dict(activation="sigmoid", background=None, score_thresh=0.5, topk=20, detections=15, sizes=True),
        dict(activation="sigmoid", background=None, score_thresh="per-class", topk=50, detections=1000, sizes=True),
    ],
)
def test_postprocess_detections_matches_a_per_image_per_class_loop(options):
    g = torch.Generator().manual_seed(1)
    logits, regression, anchors = _head_outputs(g, per_image_anchors=options["activation"] == "sigmoid")
    image_sizes = [(300, 280), (250, 300), (200, 200)] if options["sizes"] else None
    score_thresh = options["score_thresh"]
    if score_thresh == "per-class":
        score_thresh = torch.linspace(0.3, 0.8, logits.shape[-1])
    actual = postprocess_detections(
        logits, regression, anchors, image_sizes, score_thresh=score_thresh, topk_candidates=options["topk"],
        nms_thresh=0.5, detections_per_img=options["detections"], activation=options["activation"],
        background_class=options["background"],
    )
    expected = _postprocess_reference(
        logits, regression, anchors, image_sizes, score_thresh=score_thresh, topk=options["topk"], nms_thresh=0.5,
        detections=options["detections"], activation=options["activation"], background=options["background"],
    )
    assert sum(len(d["labels"]) for d in actual) > 0
    _assert_same_detections(actual, expected)


def test_postprocess_detections_matches_torchvision_ssd():
    g = torch.Generator().manual_seed(2)
    logits, regression, anchors = _head_outputs(g, batch=2, num=400, classes=5)
    image_sizes = [(300, 300), (260, 310)]
    ssd = SimpleNamespace(
        box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
        score_thresh=0.1, topk_candidates=40, nms_thresh=0.45, detections_per_img=30,
    )
    expected = SSD.postprocess_detections(
        ssd, {"bbox_regression": regression, "cls_logits": logits}, [anchors, anchors], image_sizes
    )
    actual = postprocess_detections(
        logits, regression, anchors, image_sizes, score_thresh=0.1, topk_candidates=40, nms_thresh=0.45,
        detections_per_img=30,
    )
    assert all(len(e["labels"]) > 0 for e in expected)
    _assert_same_detections(actual, expected)


def test_post_processing_works_with_grad_enabled_and_matches_no_grad():
    # a detector's .eval()(images) outside torch.no_grad(): head outputs that require grad
    g = torch.Generator().manual_seed(3)
    logits, regression, anchors = _head_outputs(g, batch=2, num=300, classes=4)
    head = torch.nn.Linear(4, 4)  # outputs of a module: part of an autograd graph
    logits, regression = head(logits), head(regression)
    assert logits.requires_grad and torch.is_grad_enabled()
    with_grad = postprocess_detections(logits, regression, anchors, [(300, 300)] * 2, score_thresh=0.2)
    with torch.no_grad():
        without = postprocess_detections(logits, regression, anchors, [(300, 300)] * 2, score_thresh=0.2)
    _assert_same_detections(with_grad, without)
    assert with_grad[0]["scores"].requires_grad  # gathered from the head outputs, as torchvision's SSD
    cls_probs = torch.rand(2, 3, 4, generator=g).softmax(1).requires_grad_()
    offsets = (torch.randn(2, 16, generator=g) * 0.1).requires_grad_()
    out = multibox_detection(cls_probs, offsets, TEXTBOOK_ANCHORS[None])
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), multibox_detection(cls_probs, offsets, TEXTBOOK_ANCHORS[None]))


def test_postprocess_detections_top_k_is_per_image_and_class():
    g = torch.Generator().manual_seed(6)
    logits, regression, anchors = _head_outputs(g, batch=2, num=50, classes=4)
    results = postprocess_detections(
        logits, regression, anchors, score_thresh=0.0, topk_candidates=1, nms_thresh=1.0, detections_per_img=100
    )
    scores = logits.softmax(-1)
    for i, r in enumerate(results):
        # one candidate per foreground class survives: the best anchor of that class
        assert sorted(r["labels"].tolist()) == [1, 2, 3]
        for label, score in zip(r["labels"].tolist(), r["scores"]):
            assert score == scores[i, :, label].max()


def test_postprocess_detections_with_no_candidates_returns_empty_results():
    g = torch.Generator().manual_seed(3)
    logits, regression, anchors = _head_outputs(g, batch=2, num=10)
    results = postprocess_detections(logits, regression, anchors, score_thresh=1.0)
    assert len(results) == 2
    for r in results:
        assert r["boxes"].shape == (0, 4) and r["scores"].shape == (0,) and r["labels"].dtype == torch.int64
    results = postprocess_detections(logits, regression, anchors, detections_per_img=0)
    assert all(r["labels"].shape == (0,) for r in results)


def test_postprocess_detections_bad_input():
    g = torch.Generator().manual_seed(4)
    logits, regression, anchors = _head_outputs(g, batch=2, num=10, classes=3)
    with pytest.raises(ValueError, match=r"box_regression must have shape \[B, A, 4\] = \[2, 10, 4\]"):
        postprocess_detections(logits, regression[:, :5], anchors)
    with pytest.raises(ValueError, match=r"anchors must have shape \[A, 4\] or \[B, A, 4\]"):
        postprocess_detections(logits, regression, anchors[:5])
    with pytest.raises(ValueError, match=r"class_logits must be a floating Tensor\[B, A, C\]"):
        postprocess_detections(logits[0], regression, anchors)
    with pytest.raises(ValueError, match="image_sizes must hold one"):
        postprocess_detections(logits, regression, anchors, [(10, 10)])
    with pytest.raises(ValueError, match="activation"):
        postprocess_detections(logits, regression, anchors, activation="relu")
    with pytest.raises(ValueError, match="background_class"):
        postprocess_detections(logits, regression, anchors, background_class=3)
    with pytest.raises(ValueError, match=r"score_thresh must be a float or Tensor\[C\] with C = 3"):
        postprocess_detections(logits, regression, anchors, score_thresh=torch.zeros(2))
    with pytest.raises(ValueError, match="topk_candidates"):
        postprocess_detections(logits, regression, anchors, topk_candidates=0)
    with pytest.raises(ValueError, match="nms_thresh"):
        postprocess_detections(logits, regression, anchors, nms_thresh=math.nan)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_postprocess_on_cuda_equals_the_cpu_results():
    g = torch.Generator().manual_seed(5)
    logits, regression, anchors = _head_outputs(g)
    cpu = postprocess_detections(logits, regression, anchors, [(300, 300)] * 3)
    cuda = postprocess_detections(logits.cuda(), regression.cuda(), anchors.cuda(), [(300, 300)] * 3)
    _assert_same_detections([{k: v.cpu() for k, v in d.items()} for d in cuda], cpu)
    cls_probs = torch.rand(2, 4, 300, generator=g).softmax(1)
    offsets = torch.randn(2, 1200, generator=g) * 0.3
    out = multibox_detection(cls_probs.cuda(), offsets.cuda(), anchors.cuda() / 300)
    torch.testing.assert_close(out.cpu(), multibox_detection(cls_probs, offsets, anchors / 300))
