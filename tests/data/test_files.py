"""Tests for detkit.data.files and the dataset-safety rules built on it: names kept inside their root, a walk that
survives symlink loops and lists each file once, FIFOs never opened for a blocking read."""

from __future__ import annotations

import os
import signal

import pytest
from data_testutils import random_rgb, save_rgb

from detkit.data.classification import ImageFolderDataset
from detkit.data.files import inside_root, resolve_inside, walk_files
from detkit.data.images import DatasetError, read_image, scan_image_sizes, scan_images


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when the test blocks for more than 10 s, e.g. reading a FIFO."""

    def _timeout(signum, frame):
        raise TimeoutError("blocked for 10 s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_resolve_inside_keeps_relative_names_and_refuses_escapes(tmp_path):
    root = tmp_path / "ds"
    assert resolve_inside(root, "a/b.png") == root / "a" / "b.png"
    assert resolve_inside(root, "a/../b.png") == root / "b.png"  # stays inside: fine
    assert resolve_inside(root, str(root / "x.png")) == root / "x.png"  # absolute but inside
    for bad in ("../b.png", "a/../../b.png", "/etc/passwd", str(tmp_path / "other.png"), "", ".", "a\x00b"):
        assert resolve_inside(root, bad) is None, bad
    with pytest.raises(DatasetError, match=r"2 names of x point outside .*'\.\./b\.png', '/etc/passwd'"):
        inside_root(root, ["ok.png", "../b.png", "/etc/passwd"], "names of x")


def test_walk_files_survives_a_symlink_loop_and_lists_each_file_once(tmp_path):
    root = tmp_path / "ds"
    save_rgb(root / "cat" / "a.png", random_rgb(0))
    save_rgb(root / "cat" / "sub" / "b.png", random_rgb(1))
    os.symlink(root / "cat", root / "cat" / "sub" / "loop")  # a loop back to an ancestor
    os.symlink(root / "cat" / "sub", root / "cat" / "again")  # the same folder under a second name
    os.symlink(root / "cat" / "a.png", root / "cat" / "z_link.png")  # the same file under a second name
    os.symlink(tmp_path / "nowhere", root / "cat" / "broken.png")
    (root / "cat" / ".hidden.png").write_bytes(b"x")
    files, ignored = walk_files(root)
    assert files == [root / "cat" / "a.png", root / "cat" / "again" / "b.png"]  # depth first, sorted: "again" < "sub"
    assert {p.name for p in ignored} == {"z_link.png", "broken.png", ".hidden.png"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        walk_files(tmp_path / "missing")


def test_image_folder_with_a_symlink_loop_lists_each_image_once(tmp_path):
    root = tmp_path / "ds"
    for k, cls in enumerate(("cat", "dog")):
        save_rgb(root / "train" / cls / f"{k}.png", random_rgb(k))
    os.symlink(root / "train", root / "train" / "cat" / "up")  # loops through every class
    ds = ImageFolderDataset(root, "train", scan_workers=1)
    assert ds.samples == [(root / "train" / "cat" / "0.png", 0), (root / "train" / "dog" / "1.png", 1)]
    os.symlink(root / "train" / "cat" / "0.png", root / "train" / "dog" / "same.png")  # one file in two classes
    ds = ImageFolderDataset(root, "train", scan_workers=1)
    assert len(ds.samples) == 2 and root / "train" / "dog" / "same.png" in ds.ignored


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_an_image_is_skipped_without_blocking(tmp_path, no_hang):
    root = tmp_path / "ds"
    save_rgb(root / "train" / "cat" / "a.png", random_rgb(0))
    save_rgb(root / "train" / "dog" / "b.png", random_rgb(1))
    os.mkfifo(root / "train" / "dog" / "pipe.jpg")
    ds = ImageFolderDataset(root, "train", scan_workers=1)
    assert [p.name for p, _ in ds.samples] == ["a.png", "b.png"]
    assert root / "train" / "dog" / "pipe.jpg" in ds.ignored
    fifo = root / "train" / "dog" / "pipe.jpg"
    with pytest.raises(DatasetError, match=r"not a regular file \(a FIFO\)"):
        read_image(fifo)
    assert scan_images([fifo])[1] == [(fifo, "not a regular file (a FIFO)")]
    assert scan_image_sizes([fifo, root / "train" / "cat" / "a.png"]) == {
        fifo: "not a regular file (a FIFO)", root / "train" / "cat" / "a.png": (12, 16)}
