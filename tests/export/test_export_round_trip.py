"""Exports (ONNX, TorchScript) of every model family: parity with PyTorch when written, the same outputs when run,
and corrupt or mismatched files rejected."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from detkit.export import (
    ExportMeta,
    ExportMismatchError,
    default_export_path,
    export_checkpoint,
    load_predictor,
    model_file_kind,
    open_export,
    select_detections,
)
from detkit.infer import ClassificationPredictor, Predictor
from detkit.ops import postprocess_detections

from model_files import save_tiny_classifier, save_tiny_detector

CLASSES, IDS = ["circle", "square", "star"], [5, 8, 13]


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (48 + 17 * i, 80 - 9 * i, 3), dtype=np.uint8) for i in range(n)]


def _same_detections(a: dict, b: dict) -> None:
    assert a["labels"].tolist() == b["labels"].tolist() and a["category_ids"].tolist() == b["category_ids"].tolist()
    assert torch.allclose(a["scores"], b["scores"], atol=1e-4)
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("scripted", [False, True])
def test_select_detections_matches_postprocess_detections(scripted):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 200, 4, generator=gen) * 2  # column 0 is the background
    xy = torch.rand(3, 200, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(3, 200, 2, generator=gen) * 30], -1).clamp(max=64)
    identity = torch.zeros(3, 200, 4)  # zero offsets decode to the anchors themselves
    fn = torch.jit.script(select_detections) if scripted else select_detections
    for thresh, iou, max_det in ((0.05, 0.5, 100), (0.3, 0.3, 4), (1.0, 0.5, 10)):
        want = postprocess_detections(logits, identity, boxes, box_coder=_Identity(), score_thresh=thresh,
                                      topk_candidates=50, nms_thresh=iou, detections_per_img=max_det)
        got = fn(logits.softmax(-1)[..., 1:], boxes, torch.tensor([thresh]), torch.tensor([iou]),
                 torch.tensor([max_det]), 50, 64.0)
        for i, w in enumerate(want):
            mine = got[3] == i
            assert got[2][mine].tolist() == (w["labels"] - 1).tolist()
            assert torch.allclose(got[1][mine], w["scores"]) and torch.allclose(got[0][mine], w["boxes"])
        assert len(got[1]) == sum(len(w["scores"]) for w in want)
    assert len(got[1]) == 0  # threshold 1.0: nothing


class _Identity:
    def decode(self, anchors, offsets):
        return anchors.expand_as(offsets) + offsets


CASES = {
    "tiny_ssd-onnx": ("detect", "tiny_ssd", 64, "onnx", False),
    "tiny_ssd-torchscript": ("detect", "tiny_ssd", 64, "torchscript", False),
    "resnet18_ssd-onnx-dynamic": ("detect", "resnet18_ssd", 64, "onnx", True),
    "classifier-onnx": ("classify", "timm:test_resnet", 32, "onnx", False),
    "classifier-torchscript": ("classify", "resnet18", 32, "torchscript", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_round_trip_matches_the_checkpoint(case, tmp_path):
    task, model, size, fmt, dynamic = CASES[case]
    if task == "detect":
        ckpt = save_tiny_detector(tmp_path / "best.pt", CLASSES, IDS, model=model, img_size=size)
    else:
        ckpt = save_tiny_classifier(tmp_path / "best.pt", CLASSES, model=model, img_size=size)
    report = export_checkpoint(ckpt, fmt, dynamic_batch=dynamic, conf=0.05, verify_images=None)
    assert report.path == default_export_path(ckpt, fmt) and report.path.is_file()
    assert all(p.agrees and p.compared > 0 for p in report.parity), report.lines()
    assert model_file_kind(report.path) == fmt and model_file_kind(ckpt) == "checkpoint"
    meta = open_export(report.path, fmt).meta
    assert (meta.task, meta.model, meta.classes, meta.input_size, meta.mean) == (task, model, CLASSES, size,
                                                                                  report.meta.mean)
    assert meta.batch_size == (1 if fmt == "onnx" and not dynamic else None)
    images = _images()
    options = {"batch_size": 2} if task == "classify" else {"batch_size": 2, "conf": 0.05, "max_det": 20}
    exported, original = load_predictor(report.path, task, **options), load_predictor(ckpt, task, **options)
    if task == "classify":
        assert isinstance(exported, ClassificationPredictor)
        assert torch.allclose(exported.predict(images), original.predict(images), atol=1e-5)
        return
    assert isinstance(exported, Predictor) and meta.category_ids == IDS
    for a, b in zip(exported.predict(images), original.predict(images)):
        assert len(b["scores"]) > 0
        _same_detections(a, b)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny_ssd checkpoint and its ONNX and TorchScript exports."""
    folder = tmp_path_factory.mktemp("tiny")
    ckpt = save_tiny_detector(folder / "best.pt", CLASSES, IDS)
    return ckpt, export_checkpoint(ckpt, "onnx").path, export_checkpoint(ckpt, "torchscript").path


def test_thresholds_are_graph_inputs_of_a_single_shot_export(tiny):
    ckpt, onnx_path, ts_path = tiny
    images = _images(2)
    for conf, iou, max_det in ((0.0, 0.3, 5), (0.2, 0.7, 50)):
        want = Predictor.from_checkpoint(ckpt, conf=conf, iou=iou, max_det=max_det).predict(images)
        for path in (onnx_path, ts_path):
            got = load_predictor(path, "detect", conf=conf, iou=iou, max_det=max_det).predict(images)
            for a, b in zip(got, want):
                _same_detections(a, b)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the plain ONNX file comes from the legacy exporter
def test_corrupt_foreign_and_mismatched_exports_are_rejected(tiny, tmp_path):
    ckpt, onnx_path, ts_path = tiny
    for path, kind in ((onnx_path, "onnx"), (ts_path, "torchscript")):
        broken = tmp_path / f"broken{path.suffix}"
        broken.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        with pytest.raises(ValueError, match="cannot be loaded"):
            load_predictor(broken, "detect") if kind == "onnx" else open_export(broken, kind)
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(ValueError, match="no detkit metadata"):
        load_predictor(plain, "detect")
    model = onnx.load(str(onnx_path))  # metadata edited to claim another input size: the graph disagrees
    entry = next(p for p in model.metadata_props if p.key == "detkit")
    meta = ExportMeta.from_json(entry.value, onnx_path)
    entry.value = dataclasses.replace(meta, input_size=96).to_json()
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    with pytest.raises(ValueError, match="does not match its metadata"):
        load_predictor(edited, "detect")
    with pytest.raises(ValueError, match="is a detector; run it with tools/detect.py"):
        load_predictor(onnx_path, "classify")
    with pytest.raises(ValueError, match="takes 64 px inputs"):
        load_predictor(ts_path, "detect", img_size=128)


def test_an_export_that_disagrees_with_pytorch_is_not_written(tmp_path, monkeypatch):
    import detkit.export.exporter as exporter

    ckpt = save_tiny_detector(tmp_path / "best.pt", CLASSES, IDS)
    other = save_tiny_detector(tmp_path / "other.pt", CLASSES, IDS, seed=1)  # same architecture, other weights
    real = exporter._build_graph
    monkeypatch.setattr(exporter, "_build_graph",
                        lambda model, meta: real(exporter.model_from_checkpoint(other).eval(), meta))
    with pytest.raises(ExportMismatchError, match="disagrees with PyTorch.*nothing written"):
        export_checkpoint(ckpt, "onnx", output=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    assert not list(tmp_path.glob(".*"))


def test_bad_export_arguments_are_errors(tiny, tmp_path):
    ckpt = tiny[0]
    with pytest.raises(ValueError, match="checkpoint itself"):
        export_checkpoint(ckpt, "onnx", output=ckpt)
    with pytest.raises(ValueError, match="format"):
        export_checkpoint(ckpt, "tflite")
    with pytest.raises(ValueError, match="opset"):
        export_checkpoint(ckpt, "onnx", output=tmp_path / "x.onnx", opset=11)
    with pytest.raises(ValueError, match="img_size"):
        export_checkpoint(ckpt, "onnx", output=tmp_path / "x.onnx", img_size=0)
    with pytest.raises(FileNotFoundError):
        export_checkpoint(tmp_path / "missing.pt", "onnx")


@pytest.mark.slow
def test_a_torchvision_detector_exports_with_its_thresholds_fixed(tmp_path):
    name = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    ckpt = save_tiny_detector(tmp_path / "best.pt", CLASSES, IDS, model=name, img_size=64)
    with pytest.raises(ValueError, match="one image per call"):
        export_checkpoint(ckpt, "onnx", dynamic_batch=True)
    report = export_checkpoint(ckpt, "torchscript", conf=0.05, iou=0.5, max_det=30)
    assert report.meta.postprocess == "fixed" and all(p.agrees for p in report.parity), report.lines()
    images = _images(2)
    got = load_predictor(report.path, "detect", conf=0.1, iou=0.5, max_det=10).predict(images)
    want = Predictor.from_checkpoint(ckpt, conf=0.1, iou=0.5, max_det=10).predict(images)
    for a, b in zip(got, want):
        _same_detections(a, b)
    with pytest.raises(ValueError, match="keeps detections above 0.05 only; re-export"):
        load_predictor(report.path, "detect", conf=0.01)
    with pytest.raises(ValueError, match="applies NMS at IoU 0.5"):
        load_predictor(report.path, "detect", iou=0.7)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_torchscript_export_runs_on_cuda_like_on_the_cpu(tiny):
    _, _, ts_path = tiny
    images = _images(2)
    cpu = load_predictor(ts_path, "detect", device="cpu", conf=0.05).predict(images)
    gpu = load_predictor(ts_path, "detect", device="cuda", conf=0.05).predict(images)
    for a, b in zip(gpu, cpu):
        assert a["boxes"].device.type == "cpu"
        assert torch.allclose(a["scores"][:5], b["scores"][:5], atol=1e-3)
