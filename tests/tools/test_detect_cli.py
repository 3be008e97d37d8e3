"""tools/detect.py and detkit.infer: odd images, predictions.json, YOLO txt, COCO-pretrained models."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detkit.data.images import read_image
from detkit.infer import Predictor, find_sources, yolo_lines

from cli_helpers import cli_env, run_in_process, run_tool, save_tiny_detector

CATEGORY_IDS = [3, 7, 11, 20]
CLASSES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A detection checkpoint of an untrained tiny_ssd (64 px) whose dataset had category ids 3, 7, 11, 20."""
    return save_tiny_detector(tmp_path_factory.mktemp("det_ckpt") / "best.pt", CLASSES, CATEGORY_IDS)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> Path:
    """Grayscale, RGBA, 16-bit, tiny, huge and corrupt images (plus a non-image file) in one folder."""
    folder = tmp_path_factory.mktemp("odd") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 255, (50, 90), dtype=np.uint8))
    cv2.imwrite(str(folder / "rgba.png"), rng.integers(0, 255, (70, 40, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "deep16.png"), rng.integers(0, 65535, (40, 60, 3), dtype=np.uint16))
    cv2.imwrite(str(folder / "tiny.png"), np.full((1, 2, 3), 200, np.uint8))
    huge = np.zeros((3000, 4000, 3), np.uint8)
    cv2.circle(huge, (2000, 1500), 800, (0, 200, 255), -1)
    cv2.imwrite(str(folder / "huge.jpg"), huge)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _run(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    return run_in_process("detect", argv, monkeypatch, capsys)


def test_detect_on_odd_images_writes_predictions_json_and_yolo_txt(checkpoint, odd_images, tmp_path, monkeypatch,
                                                                  capsys):
    out = tmp_path / "out"
    rc, stdout, stderr = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images), "--output", str(out),
                               "--conf", "0.0", "--max-det", "5", "--batch-size", "3", "--device", "cpu",
                               "--save-txt"], monkeypatch, capsys)
    assert rc == 0, stderr
    readable = ["deep16", "gray", "huge", "rgba", "tiny"]
    assert "5 images" in stdout and "2 unreadable skipped" in stdout and "images/s" in stdout
    assert "corrupt.jpg" in stderr and "empty.png" in stderr
    assert sorted(p.stem for p in out.glob("*.jpg")) == readable
    for stem in readable:  # annotated images keep the original size
        src = next(odd_images.glob(f"{stem}.*"))
        assert read_image(out / f"{stem}.jpg").shape == read_image(src).shape
    preds = json.loads((out / "predictions.json").read_text())
    assert preds, "an untrained detector with --conf 0 still returns detections"
    by_file: dict[str, list[dict]] = {}
    for p in preds:
        assert set(p) == {"image_id", "file_name", "category_id", "bbox", "score"}
        assert p["category_id"] in CATEGORY_IDS and 0.0 <= p["score"] <= 1.0
        h, w = read_image(p["file_name"]).shape[:2]
        x, y, bw, bh = p["bbox"]
        assert bw >= 0 and bh >= 0 and x >= 0 and y >= 0 and x + bw <= w + 1e-3 and y + bh <= h + 1e-3
        by_file.setdefault(Path(p["file_name"]).stem, []).append(p)
    assert set(by_file) <= set(readable) and all(len(v) <= 5 for v in by_file.values())
    for stem in readable:
        rows = (out / "labels" / f"{stem}.txt").read_text().splitlines()
        assert len(rows) == len(by_file.get(stem, []))
        for row in rows:
            label, *coords, score = row.split()
            assert CATEGORY_IDS[int(label)] in CATEGORY_IDS
            assert all(0.0 <= float(v) <= 1.0 for v in coords) and 0.0 <= float(score) <= 1.0


def test_detect_on_glob_and_single_file(checkpoint, odd_images, tmp_path, monkeypatch, capsys):
    rc, stdout, _ = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images / "*.png"), "--output",
                          str(tmp_path / "g"), "--no-images", "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0 and "4 images" in stdout and not list((tmp_path / "g").glob("*.jpg"))
    rc, stdout, _ = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images / "gray.png"), "--output",
                          str(tmp_path / "f"), "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0 and "1 images" in stdout and (tmp_path / "f" / "predictions.json").is_file()


def test_detect_errors_are_one_line_and_nonzero(checkpoint, odd_images, tmp_path, monkeypatch, capsys):
    rc, _, err = _run(["--checkpoint", str(tmp_path / "missing.pt"), "--source", str(odd_images),
                       "--output", str(tmp_path / "o")], monkeypatch, capsys)
    assert rc == 2 and err.startswith("error:") and "missing.pt" in err and err.count("\n") == 1
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(tmp_path / "nothing*.jpg"),
                       "--output", str(tmp_path / "o")], monkeypatch, capsys)
    assert rc == 2 and "matches no image files" in err
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images / "corrupt.jpg"),
                       "--output", str(tmp_path / "o"), "--device", "cpu"], monkeypatch, capsys)
    assert rc == 1 and "could be read" in err


def test_pretrained_torchvision_model_needs_cached_weights(odd_images, tmp_path, monkeypatch, capsys):
    """Offline with an empty cache the CLI names where the COCO weights go; once there, it runs with COCO ids."""
    import torchvision.models as tvm

    torch_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # torch.hub.get_dir() follows it on every call
    monkeypatch.setenv("DETKIT_OFFLINE", "1")
    args = ["--model", "torchvision:ssdlite320_mobilenet_v3_large", "--source", str(odd_images / "gray.png"),
            "--output", str(tmp_path / "out"), "--conf", "0.0", "--max-det", "3", "--device", "cpu"]
    rc, _, err = _run(args, monkeypatch, capsys)
    assert rc == 2 and err.startswith("error:") and "ssdlite320_mobilenet_v3_large" in err
    assert str(torch_home) in err  # names the cache path to put the file at
    # a state dict in torchvision's COCO layout (91 columns), written where torch.hub reads its cache
    url = tvm.get_model_weights("ssdlite320_mobilenet_v3_large")["DEFAULT"].url
    cache = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cache.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(tvm.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None).state_dict(), cache)
    rc, stdout, err = _run(args, monkeypatch, capsys)
    assert rc == 0, err
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(preds) == 3 and all(1 <= p["category_id"] <= 90 for p in preds)


def test_cli_runs_as_a_script(checkpoint, odd_images, tmp_path):
    proc = run_tool("detect.py", "--checkpoint", str(checkpoint), "--source", str(odd_images / "rgba.png"),
                    "--output", str(tmp_path / "s"), "--device", "cpu", env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "1 images" in proc.stdout and (tmp_path / "s" / "rgba.jpg").is_file()


class _FixedBoxes(nn.Module):
    """Returns the same input-pixel boxes for every image: checks the map back to original pixels."""

    def __init__(self, boxes: torch.Tensor) -> None:
        super().__init__()
        self.boxes = boxes

    def forward(self, images, targets=None):
        n = len(self.boxes)
        return [{"boxes": self.boxes.clone(), "scores": torch.linspace(0.9, 0.5, n), "labels": torch.zeros(n).long()}
                for _ in range(images.shape[0])]


@pytest.mark.parametrize("mode", ["letterbox", "resize"])
def test_predictor_maps_boxes_back_to_each_original_image(mode):
    size = 64
    whole_input = torch.tensor([[0.0, 0.0, size, size], [16.0, 16.0, 48.0, 48.0]])
    predictor = Predictor(_FixedBoxes(whole_input), ["thing"], [42], mean=[0.5] * 3, std=[0.25] * 3, img_size=size,
                          resize_mode=mode, batch_size=2)
    images = [np.zeros((50, 100, 3), np.uint8), np.zeros((80, 40, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)]
    results = predictor.predict(images)
    assert len(results) == 3
    for image, res in zip(images, results):
        h, w = image.shape[:2]
        # the whole network input covers (at least) the whole image: clipped to it exactly
        assert res["boxes"][0].tolist() == pytest.approx([0.0, 0.0, w, h])
        centre = res["boxes"][1]
        assert ((centre[0] + centre[2]) / 2).item() == pytest.approx(w / 2, abs=0.6)
        assert ((centre[1] + centre[3]) / 2).item() == pytest.approx(h / 2, abs=0.6)
        assert res["category_ids"].tolist() == [42, 42]
    if mode == "resize":  # stretch: the centre box is half of each side
        assert results[0]["boxes"][1].tolist() == pytest.approx([25.0, 12.5, 75.0, 37.5])


def test_find_sources_and_yolo_lines(odd_images):
    files = find_sources(odd_images)
    assert [f.name for f in files] == sorted(f.name for f in odd_images.iterdir() if f.suffix != ".txt")
    with pytest.raises(FileNotFoundError):
        find_sources(odd_images / "nope")
    rows = yolo_lines(np.array([[10.0, 20.0, 30.0, 60.0]]), [2], np.array([0.5]), (100, 200))
    assert rows == ["2 0.100000 0.400000 0.100000 0.400000 0.50000"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predictor_runs_on_cuda_and_returns_cpu_tensors(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, device="cuda", conf=0.0, max_det=4)
    cpu = Predictor.from_checkpoint(checkpoint, device="cpu", conf=0.0, max_det=4)
    image = np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8)
    got, want = predictor.predict([image])[0], cpu.predict([image])[0]
    assert got["boxes"].device.type == "cpu" and len(got["scores"]) == len(want["scores"]) == 4
    assert set(got["category_ids"].tolist()) <= set(CATEGORY_IDS)
    assert torch.allclose(got["scores"], want["scores"], atol=1e-3)  # same top scores whatever the device


# ---------------------------------------------------------------------------------------------- exports, results out


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory):
    """The module's tiny_ssd checkpoint exported to ONNX and TorchScript (beside a copy of it)."""
    from detkit.export import export_checkpoint

    folder = tmp_path_factory.mktemp("exports")
    return {fmt: export_checkpoint(checkpoint, fmt, output=folder / f"best.{fmt}").path
            for fmt in ("onnx", "torchscript")}


def _predictions(folder: Path) -> list[dict]:
    return sorted(json.loads((folder / "predictions.json").read_text()),
                  key=lambda p: (p["file_name"], -p["score"], p["category_id"]))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_detect_on_an_export_writes_the_checkpoints_outputs(fmt, checkpoint, exports, odd_images, tmp_path,
                                                            monkeypatch, capsys):
    common = ["--source", str(odd_images / "*.png"), "--conf", "0.05", "--max-det", "10", "--device", "cpu",
              "--save-txt"]
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "ckpt"), *common], monkeypatch,
                      capsys)
    assert rc == 0, err
    rc, stdout, err = _run(["--checkpoint", str(exports[fmt]), "--output", str(tmp_path / fmt), *common], monkeypatch,
                           capsys)
    assert rc == 0, err
    want, got = _predictions(tmp_path / "ckpt"), _predictions(tmp_path / fmt)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert (g["file_name"], g["image_id"], g["category_id"]) == (w["file_name"], w["image_id"], w["category_id"])
        assert g["score"] == pytest.approx(w["score"], abs=1e-4)
        assert g["bbox"] == pytest.approx(w["bbox"], abs=0.05)
    assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == sorted(p.name for p in (tmp_path / "ckpt").iterdir())


def test_predictions_of_a_dataset_split_score_with_pycocotools_as_written(checkpoint, tmp_path, monkeypatch, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detkit.data.det_synthetic import make_shapes_detection

    root = tmp_path / "shapes"
    make_shapes_detection(root, n_train=1, n_val=4, min_size=64, max_size=96, seed=3, classes=CLASSES,
                          category_ids=CATEGORY_IDS, ext=".png", workers=1)
    annotations = root / "val" / "annotations.json"
    coco = json.loads(annotations.read_text())
    new_ids = {image["id"]: 100 + 7 * i for i, image in enumerate(coco["images"])}  # not positions in a file list
    for image in coco["images"]:
        image["id"] = new_ids[image["id"]]
    for ann in coco["annotations"]:
        ann["image_id"] = new_ids[ann["image_id"]]
    annotations.write_text(json.dumps(coco))
    out = tmp_path / "det"
    rc, stdout, err = _run(["--checkpoint", str(checkpoint), "--source", str(root / "val"), "--output", str(out),
                            "--conf", "0.01", "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0, err
    assert f"image ids of {annotations}" in stdout
    preds = json.loads((out / "predictions.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in coco["images"]}
    assert preds and all(p["image_id"] == by_name[Path(p["file_name"]).name] for p in preds)
    gt = COCO(str(annotations))
    dt = gt.loadRes(str(out / "predictions.json"))  # as written: no remapping
    assert set(dt.getImgIds()) <= set(gt.getImgIds())

    # tools/eval.py scores the file exactly as pycocotools does
    rc, report, err = run_in_process("eval", ["--predictions", str(out / "predictions.json"), "--annotations",
                                              str(annotations), "--output", str(tmp_path / "ev")], monkeypatch, capsys)
    assert rc == 0, err
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    metrics = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())
    assert metrics["val_map"] == pytest.approx(ev.stats[0]) and metrics["val_map50"] == pytest.approx(ev.stats[1])
    assert f"mAP@[.5:.95] {ev.stats[0]:.4f}" in report and "predictions" in report

    # images elsewhere: --annotations gives the ids; without it they are sequential
    elsewhere = tmp_path / "copies"
    elsewhere.mkdir()
    for f in sorted((root / "val").glob("*.png"))[:2]:
        (elsewhere / f.name).write_bytes(f.read_bytes())
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(elsewhere), "--output", str(tmp_path / "a"),
                       "--annotations", str(annotations), "--conf", "0.01", "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0, err
    given = json.loads((tmp_path / "a" / "predictions.json").read_text())
    assert {p["image_id"] for p in given} <= set(by_name.values())
    rc, _, _ = _run(["--checkpoint", str(checkpoint), "--source", str(elsewhere), "--output", str(tmp_path / "s"),
                     "--conf", "0.01", "--device", "cpu"], monkeypatch, capsys)
    assert {p["image_id"] for p in json.loads((tmp_path / "s" / "predictions.json").read_text())} <= {0, 1}
    rc, _, err = run_in_process("eval", ["--predictions", str(tmp_path / "s" / "predictions.json"), "--annotations",
                                         str(annotations)], monkeypatch, capsys)
    assert rc == 2 and "image ids are not in" in err and err.count("\n") == 1


def test_save_txt_names_the_labels_and_class_filters_apply(checkpoint, odd_images, tmp_path, monkeypatch, capsys):
    import yaml

    out = tmp_path / "out"
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images), "--output", str(out), "--conf",
                       "0.0", "--classes", "circle", "star", "--conf-class", "star=0.3", "--max-det", "50",
                       "--device", "cpu", "--save-txt", "--no-images"], monkeypatch, capsys)
    assert rc == 0, err
    assert (out / "classes.txt").read_text().splitlines() == CLASSES
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASSES)) and data["coco_category_ids"] == CATEGORY_IDS
    preds = json.loads((out / "predictions.json").read_text())
    kept = {CATEGORY_IDS[CLASSES.index(n)] for n in ("circle", "star")}
    assert preds and {p["category_id"] for p in preds} <= kept
    assert all(p["score"] > 0.3 for p in preds if p["category_id"] == CATEGORY_IDS[CLASSES.index("star")])
    predictor = Predictor.from_checkpoint(checkpoint, conf=0.0, max_det=50, keep_classes=["circle", "star"],
                                          class_conf={"star": 0.3})
    want = predictor.predict([read_image(odd_images / "gray.png")])[0]
    assert len([p for p in preds if Path(p["file_name"]).name == "gray.png"]) == len(want["scores"])
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images), "--output", str(out),
                       "--conf-class", "star:0.3"], monkeypatch, capsys)
    assert rc == 2 and "NAME=SCORE" in err
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images), "--output", str(out),
                       "--classes", "cat"], monkeypatch, capsys)
    assert rc == 2 and "unknown class 'cat'" in err


def test_detect_refuses_to_write_among_the_sources_and_a_zero_img_size(checkpoint, odd_images, tmp_path, monkeypatch,
                                                                        capsys):
    before = sorted(p.name for p in odd_images.iterdir())
    for output, source in ((odd_images, odd_images), (odd_images / "annotated", odd_images),
                           (odd_images, odd_images / "gray.png")):
        rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(source), "--output", str(output),
                           "--device", "cpu"], monkeypatch, capsys)
        assert rc == 2 and err.startswith("error: output:") and err.count("\n") == 1, err
    assert sorted(p.name for p in odd_images.iterdir()) == before
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images), "--output", str(tmp_path / "o"),
                       "--img-size", "0"], monkeypatch, capsys)
    assert rc == 2 and err == "error: img_size: expected a positive int, got 0\n"


def test_a_failing_write_is_one_line_and_leaves_no_partial_image(checkpoint, odd_images, tmp_path, monkeypatch,
                                                                 capsys):
    import errno
    import os

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # what atomic_write calls before the rename
    out = tmp_path / "out"
    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images / "gray.png"), "--output",
                       str(out), "--device", "cpu"], monkeypatch, capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot write the results to {out}:") and "No space left on device" in err
    assert list(out.iterdir()) == []  # neither gray.jpg nor a temporary file


def test_detect_on_a_generated_video(checkpoint, tmp_path, monkeypatch, capsys):
    from video_clips import make_clip

    clip = make_clip(tmp_path / "in" / "clip", frames=6)
    rc, stdout, err = _run(["--checkpoint", str(checkpoint), "--source", str(clip), "--output", str(tmp_path / "v"),
                            "--conf", "0.0", "--max-det", "2", "--device", "cpu", "--batch-size", "4"],
                           monkeypatch, capsys)
    assert rc == 0, err
    assert "6 frames, 12 detections" in stdout and "frames/s" in stdout
    lines = (tmp_path / "v" / "clip.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(6))
    video = cv2.VideoCapture(str(tmp_path / "v" / "clip.mp4"))
    frames = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames += 1
        assert frame.shape == (64, 96, 3)
    video.release()
    assert frames == 6


def test_detect_with_tiles_runs_the_tiled_predictor(checkpoint, odd_images, tmp_path, monkeypatch, capsys):
    from detkit.infer import TiledPredictor

    rc, _, err = _run(["--checkpoint", str(checkpoint), "--source", str(odd_images / "rgba.png"), "--output",
                       str(tmp_path / "t"), "--tile", "32", "--tile-overlap", "0.25", "--tile-full", "--conf", "0.05",
                       "--device", "cpu"], monkeypatch, capsys)
    assert rc == 0, err
    preds = json.loads((tmp_path / "t" / "predictions.json").read_text())
    tiled = TiledPredictor(Predictor.from_checkpoint(checkpoint, conf=0.05), tile=32, overlap=0.25, full_image=True)
    want = tiled.predict([read_image(odd_images / "rgba.png")])[0]
    assert [p["score"] for p in preds] == pytest.approx(want["scores"].tolist(), abs=1e-5)
