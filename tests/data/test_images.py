"""Tests for detkit.data.images: conversions on read, corrupt-file detection, the parallel scan, atomic writes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.data import images
from detkit.data.images import DatasetError, read_image, scan_images, write_image

from data_testutils import jpeg_bytes, random_rgb, save_rgb


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".tif", ".tiff"])
def test_read_image_lossless_formats_round_trip_rgb(tmp_path: Path, ext: str) -> None:
    rgb = random_rgb(0)
    rgb[0, 0] = (255, 0, 0)  # a pure red pixel catches a BGR/RGB swap
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # quality > 100 = lossless WebP
    path = tmp_path / f"img{ext}"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_read_image_jpeg_is_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 250  # red
    out = read_image(save_rgb(tmp_path / "red.jpg", rgb))
    assert out.shape == (16, 16, 3)
    assert out[..., 0].min() > 230 and out[..., 1:].max() < 20


def test_read_image_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    out = read_image(save_rgb(tmp_path / "g.png", gray))
    assert out.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_read_image_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([random_rgb(1), np.linspace(0, 255, 12 * 16).reshape(12, 16).astype(np.uint8)])
    out = read_image(save_rgb(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_read_image_16bit_is_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # -> 0, 1, 128, 255
    rgb16 = np.repeat(values[..., None], 3, axis=2)
    rgb16[0, 3] = (65535, 0, 257 * 10)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # the file really is 16-bit
    out = read_image(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :3, 0], [0, 1, 128])
    np.testing.assert_array_equal(out[0, 3], [255, 0, 10])


def test_read_image_16bit_grayscale(tmp_path: Path) -> None:
    gray16 = np.full((4, 5), 65535, np.uint16)
    gray16[0, 0] = 0
    out = read_image(save_rgb(tmp_path / "g16.png", gray16))
    assert out.shape == (4, 5, 3) and out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [255, 255, 255]


def test_read_image_applies_jpeg_exif_orientation(tmp_path: Path) -> None:
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = 255  # left half white
    data = _with_exif_orientation(cv2.imencode(".jpg", rgb)[1].tobytes(), orientation=6)  # rotate 90° cw
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    out = read_image(path)
    assert out.shape == (40, 20, 3)  # height and width swapped
    assert out[:15].mean() > 200 and out[25:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not a png, just text\n", "cannot decode"),
        ("text.jpg", b"\xff\xd8\xffhello", "truncated JPEG"),
    ],
)
def test_read_image_rejects_bad_files_naming_the_path(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=reason) as info:
        read_image(path)
    assert str(info.value).startswith(f"cannot read image {path}: ")


def test_read_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_read_image_rejects_truncated_jpeg(tmp_path: Path, keep: float) -> None:
    data = jpeg_bytes(seed=3, height=48, width=64)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DatasetError, match="truncated JPEG"):
        read_image(path)


def test_jpeg_structure_walk_accepts_complete_files_and_trailing_data() -> None:
    data = jpeg_bytes(seed=4)
    assert images._jpeg_structure_problem(data) is None
    assert images._jpeg_structure_problem(data + b"\x00" * 100 + b"trailer") is None  # data after EOI is fine
    assert images._jpeg_structure_problem(_with_exif_orientation(data, 3)) is None  # APP1 segment skipped


def test_jpeg_structure_walk_flags_every_truncation_point() -> None:
    # OpenCV builds differ on truncated JPEGs (some decode them partially), so the walk must catch
    # every cut on its own: missing only the final end-of-image marker included.
    data = jpeg_bytes(seed=5)
    cuts = list(range(3, len(data) - 1, 7)) + [len(data) - 2, len(data) - 1]
    problems = [images._jpeg_structure_problem(data[:n]) for n in cuts]
    assert all(p is not None and "JPEG" in p for p in problems)


def test_jpeg_structure_walk_handles_progressive_jpeg() -> None:
    rgb = random_rgb(6, 40, 40)
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    data = buf.tobytes()
    assert data.count(b"\xff\xda") > 1  # really several scans
    assert images._jpeg_structure_problem(data) is None
    assert images._jpeg_structure_problem(data[: len(data) * 2 // 3]) is not None


def test_scan_images_separates_good_from_bad_in_input_order(tmp_path: Path) -> None:
    good = [save_rgb(tmp_path / f"ok{i}{ext}", random_rgb(i)) for i, ext in enumerate([".png", ".jpg", ".bmp"])]
    full = jpeg_bytes(seed=7, height=40, width=40)
    (tmp_path / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "fake.png").write_text("hello")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    png = cv2.imencode(".png", random_rgb(9))[1].tobytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) - 40])
    bad_names = ["trunc.jpg", "zero.png", "fake.png", "anim.gif", "cut.png", "missing.png"]
    paths = [good[0], tmp_path / "trunc.jpg", good[1], tmp_path / "zero.png", tmp_path / "fake.png"]
    paths += [tmp_path / "anim.gif", good[2], tmp_path / "cut.png", tmp_path / "missing.png"]
    for workers in (0, 4):
        ok, bad = scan_images([str(p) for p in paths], workers=workers)
        assert ok == good
        assert [p.name for p, _ in bad] == bad_names
        reasons = dict((p.name, r) for p, r in bad)
        assert "truncated JPEG" in reasons["trunc.jpg"]
        assert "empty file" in reasons["zero.png"]
        assert "unsupported file type '.gif'" in reasons["anim.gif"]
        assert "file not found" in reasons["missing.png"]


def test_scan_images_rejects_bad_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        scan_images([], workers=-1)


def test_write_image_is_atomic_and_round_trips(tmp_path: Path) -> None:
    rgb = random_rgb(11)
    path = write_image(tmp_path / "out.png", rgb)
    np.testing.assert_array_equal(read_image(path), rgb)
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary file left behind


def test_write_image_interrupted_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(images.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", random_rgb(12))
    assert os.listdir(tmp_path) == []


def test_write_image_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path must end with"):
        write_image(tmp_path / "x.gif", random_rgb(0))
    with pytest.raises(ValueError, match="uint8"):
        write_image(tmp_path / "x.png", random_rgb(0).astype(np.float32))


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal APP1/Exif segment holding only the Orientation tag (0x0112) after SOI."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_a_failed_write_leaves_no_partial_image_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno
    import os

    import detkit.io

    path = tmp_path / "out.jpg"
    write_image(path, np.full((8, 8, 3), 200, np.uint8))
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(detkit.io.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_image(path, np.zeros((8, 8, 3), np.uint8))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.jpg"]  # no temporary file left behind


@pytest.mark.parametrize(("height", "width"), [(20, 40), (37, 23), (17, 9), (16, 10), (64, 64), (1, 300)])
def test_scan_image_sizes_are_exact_for_jpegs_decoded_at_one_eighth_even_when_exif_rotates_them(
        tmp_path: Path, height: int, width: int) -> None:
    data = cv2.imencode(".jpg", random_rgb(3, height, width))[1].tobytes()
    paths = []
    for orientation in (1, 3, 5, 6, 8):  # 5-8 swap height and width
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(_with_exif_orientation(data, orientation))
        paths.append(path)
    progressive = tmp_path / "progressive.jpg"
    progressive.write_bytes(cv2.imencode(".jpg", random_rgb(3, height, width), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1])
    png = save_rgb(tmp_path / "p.png", random_rgb(4, height, width))
    sizes = images.scan_image_sizes([*paths, progressive, png, tmp_path / "missing.png"], workers=2)
    for path in [*paths, progressive, png]:
        assert sizes[path] == read_image(path).shape[:2], path.name
    assert sizes[tmp_path / "missing.png"] == "file not found"
