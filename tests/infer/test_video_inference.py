"""Detection on videos: frames read one by one, one JSON line per frame, an annotated video OpenCV reads back."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.infer import Predictor, VideoFrames, is_stream_source, run_video_detection

from model_files import save_tiny_detector
from video_clips import make_clip

CLASSES, IDS = ["circle", "square"], [4, 9]


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.read()[0]:
        n += 1
    capture.release()
    return n


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    ckpt = save_tiny_detector(tmp_path_factory.mktemp("vid") / "best.pt", CLASSES, IDS)
    return Predictor.from_checkpoint(ckpt, conf=0.0, max_det=3, batch_size=3)


def test_video_frames_stream_the_clip_and_report_its_geometry(tmp_path):
    clip = make_clip(tmp_path / "clip")
    assert is_stream_source(clip) and is_stream_source("0") and is_stream_source("rtsp://cam/1")
    assert not is_stream_source(tmp_path)
    with VideoFrames(clip, max_frames=5) as frames:
        assert (frames.width, frames.height, frames.name) == (96, 64, "clip") and frames.fps == pytest.approx(10.0)
        got = list(frames)
    assert len(got) == 5 and all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in got)
    with pytest.raises(FileNotFoundError):
        VideoFrames(tmp_path / "missing.mp4")
    (tmp_path / "fake.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot be opened"):
        VideoFrames(tmp_path / "fake.mp4")


def test_detect_on_a_video_writes_json_lines_and_a_readable_annotated_video(predictor, tmp_path):
    clip = make_clip(tmp_path / "src" / "clip")
    summary = run_video_detection(predictor, clip, tmp_path / "out")
    assert summary.frames == 7 and summary.frames_per_s > 0 and "frames/s" in str(summary)
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(7))
    assert [r["time_s"] for r in lines] == pytest.approx([i / 10 for i in range(7)])
    first = predictor.predict([next(iter(VideoFrames(clip)))])[0]
    assert [d["score"] for d in lines[0]["detections"]] == pytest.approx(first["scores"].tolist(), abs=1e-5)
    assert all(d["category_id"] in IDS and d["label"] in CLASSES for r in lines for d in r["detections"])
    assert summary.detections == sum(len(r["detections"]) for r in lines) == 21
    assert summary.video is not None and summary.video.parent == tmp_path / "out"
    assert _count_frames(summary.video) == 7
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_max_frames_and_no_video(predictor, tmp_path):
    clip = make_clip(tmp_path / "clip", frames=5)
    summary = run_video_detection(predictor, clip, tmp_path / "out", save_video=False, max_frames=2)
    assert summary.frames == 2 and summary.video is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.jsonl"]


def test_the_output_may_not_be_the_videos_folder(predictor, tmp_path):
    clip = make_clip(tmp_path / "clip", frames=2)
    with pytest.raises(ValueError, match="folder of the source file"):
        run_video_detection(predictor, clip, tmp_path)
