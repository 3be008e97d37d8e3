"""Detection on videos, cameras and streams: an annotated video and one JSON line per frame, in bounded memory.

Frames are read, detected (``predictor.batch_size`` at a time) and written as they come; nothing holds the whole video.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from detkit.infer.sources import VideoFrames
from detkit.infer.writers import check_output_location
from detkit.io import atomic_write
from detkit.viz.draw import draw_detections

__all__ = ["VideoRunSummary", "VideoSink", "run_video_detection"]

logger = logging.getLogger(__name__)


class VideoSink:
    """An OpenCV video writer that shows its file under the final name only once it is complete.

    Frames go to a hidden ``.NAME.<random>.tmp.EXT`` beside ``path``; :meth:`finish` renames it to the final
    name, :meth:`discard` deletes it. The ``mp4v`` codec in an ``.mp4`` is tried first, then ``MJPG`` in an
    ``.avi`` (the final name's extension follows the codec that opened).

    Args:
        path: the wanted output file (``.mp4``).
        fps: frames per second.
        size: ``(width, height)`` of every frame in pixels.

    Raises:
        ValueError: when OpenCV can open neither writer.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.size = size
        for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
            self.path = path.with_suffix(suffix)
            self._tmp = path.parent / f".{self.path.name}.{secrets.token_hex(4)}.tmp{suffix}"
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*codec), float(fps), size)
            if self._writer.isOpened():
                return
            self._writer.release()
            self._tmp.unlink(missing_ok=True)
        raise ValueError(f"OpenCV cannot write a video at {path} (neither mp4v/.mp4 nor MJPG/.avi opened)")

    def write(self, frame: np.ndarray) -> None:
        """Append an ``ndarray[H, W, 3]`` uint8 RGB frame of ``size``."""
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def finish(self) -> Path:
        """Close the file and move it to its final name; returns that path."""
        self._writer.release()
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Close and delete the unfinished file."""
        self._writer.release()
        self._tmp.unlink(missing_ok=True)


@dataclass
class VideoRunSummary:
    """What :func:`run_video_detection` did; ``str()`` gives a one-line summary."""

    source: str
    jsonl: Path
    video: Path | None = None  # the annotated video (None with save_video=False)
    frames: int = 0  # frames read and detected
    detections: int = 0  # detections written
    seconds: float = 0.0  # wall time of reading, detection and writing
    interrupted: bool = False  # stopped by Ctrl-C (a camera or stream); the files hold the frames so far

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        video = f" and {self.video}" if self.video else ""
        stop = " (interrupted)" if self.interrupted else ""
        return (f"{self.frames} frames, {self.detections} detections, {self.frames_per_s:.1f} frames/s{stop}; "
                f"results in {self.jsonl}{video}")


def _frame_record(index: int, fps: float, det: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    xywh = det["boxes"].clone()
    xywh[:, 2:] -= xywh[:, :2]
    found = [{"label": classes[int(lab)], "category_id": int(cat), "bbox": [round(v, 2) for v in box],
              "score": round(float(s), 5)}
             for box, s, lab, cat in zip(xywh.tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                         det["category_ids"].tolist())]
    return {"frame": index, "time_s": round(index / fps, 4), "detections": found}


def _detect_frames(predictor: Any, frames: VideoFrames, out: IO[str], sink: VideoSink | None,
                   summary: VideoRunSummary) -> None:
    """Detect batch by batch, writing a JSON line (and an annotated frame) per frame; Ctrl-C ends the loop."""
    batch: list[np.ndarray] = []

    def flush() -> None:
        for frame, det in zip(batch, predictor.predict(batch)):
            out.write(json.dumps(_frame_record(summary.frames, frames.fps, det, predictor.classes)) + "\n")
            if sink is not None:
                sink.write(draw_detections(frame, det["boxes"], det["labels"], predictor.classes, det["scores"]))
            summary.frames += 1
            summary.detections += len(det["scores"])
        batch.clear()

    try:
        for frame in frames:
            batch.append(frame)
            if len(batch) == predictor.batch_size:
                flush()
    except KeyboardInterrupt:
        summary.interrupted = True
    if batch:
        flush()


def run_video_detection(
    predictor: Any,
    source: str | int | os.PathLike,
    output: str | os.PathLike,
    *,
    save_video: bool = True,
    max_frames: int | None = None,
) -> VideoRunSummary:
    """Detect on every frame of a video file, camera or stream and write the results to ``output``.

    Writes ``OUTPUT/<name>.jsonl`` (one line per frame: ``frame``, ``time_s``, ``detections`` with ``label``,
    ``category_id``, ``bbox`` ``[x, y, w, h]`` frame pixels, ``score``) and, with ``save_video``, the annotated
    ``OUTPUT/<name>.mp4`` (``.avi`` where OpenCV has no mp4v writer) at the source's frame rate; ``<name>`` is
    the video's stem, ``camera<N>`` or ``stream``. Both appear under their names only when complete. Ctrl-C
    stops a camera cleanly (the files keep the frames so far).

    Args:
        predictor: a :class:`~detkit.infer.predictor.Predictor` or :class:`~detkit.infer.tiling.TiledPredictor`.
        source: a video file (any format OpenCV reads), a camera index or a stream URL.
        output: results folder (created); not the folder of the source video.
        save_video: write the annotated video.
        max_frames: stop after this many frames (None: the whole video; a camera until Ctrl-C).

    Returns:
        A :class:`VideoRunSummary`.
    """
    output = Path(output)
    with VideoFrames(source, max_frames=max_frames) as frames:
        if not frames.is_camera and "://" not in frames.source:
            check_output_location(frames.source, output, [Path(frames.source)])
        output.mkdir(parents=True, exist_ok=True)
        summary = VideoRunSummary(source=frames.source, jsonl=output / f"{frames.name}.jsonl")
        size = (frames.width, frames.height)
        sink = VideoSink(output / f"{frames.name}.mp4", frames.fps, size) if save_video else None
        start = time.perf_counter()
        try:
            atomic_write(summary.jsonl, lambda f: _detect_frames(predictor, frames, f, sink, summary), binary=False)
        except BaseException:
            if sink is not None:
                sink.discard()
            raise
        summary.video = sink.finish() if sink is not None else None
        summary.seconds = time.perf_counter() - start
    logger.info("%s", summary)
    return summary
