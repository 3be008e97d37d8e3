"""Tiled inference: windows cover the image, a small object the single pass misses is found, border duplicates merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detkit.infer import Predictor, TiledPredictor, tile_windows

MEAN, STD = [0.5] * 3, [0.25] * 3


class _ColourBlobDetector(nn.Module):
    """Finds, per colour channel c, the box of the pixels that are bright in c and dark in the others (label c),
    but only when that box is at least ``min_size`` input pixels on each side: a detector with a scale limit."""

    def __init__(self, min_size: int) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, images, targets=None):
        out = []
        for image in images:  # [3, S, S] normalised: 255 -> 2.0, 0 -> -2.0
            boxes, labels = [], []
            for c in range(3):
                others = [k for k in range(3) if k != c]
                mask = (image[c] > 0.0) & (image[others] < -1.0).all(0)
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if len(xs) and xs.max() - xs.min() + 1 >= self.min_size and ys.max() - ys.min() + 1 >= self.min_size:
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    labels.append(c)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.full((len(boxes),), 0.9), "labels": torch.tensor(labels, dtype=torch.int64)})
        return out


def _predictor(**kwargs) -> Predictor:
    return Predictor(_ColourBlobDetector(min_size=4), ["red", "green", "blue"], [1, 2, 3], mean=MEAN, std=STD,
                     img_size=128, batch_size=4, conf=0.5, **kwargs)


def _scene(size: int, squares: list[tuple[int, int, int, int]]) -> np.ndarray:
    """A black ``size`` x ``size`` image with pure-colour squares ``(x, y, side, channel)``."""
    image = np.zeros((size, size, 3), np.uint8)
    for x, y, side, channel in squares:
        image[y:y + side, x:x + side, channel] = 255
    return image


@pytest.mark.parametrize("h, w, tile, overlap", [(1000, 700, 256, 0.2), (100, 100, 256, 0.2), (300, 513, 128, 0.0),
                                                 (256, 256, 256, 0.5)])
def test_tile_windows_cover_the_image_with_the_overlap_asked(h, w, tile, overlap):
    windows = tile_windows(h, w, tile, overlap)
    covered = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in windows:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert (x2 - x1, y2 - y1) == (min(tile, w), min(tile, h))  # full tiles: the last one is moved back
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    xs = sorted({x1 for x1, _, _, _ in windows})
    assert all(b - a <= tile * (1 - overlap) for a, b in zip(xs, xs[1:]))  # neighbours share >= overlap


def test_tile_windows_reject_bad_arguments():
    with pytest.raises(ValueError, match="tile"):
        tile_windows(10, 10, 0, 0.2)
    with pytest.raises(ValueError, match="tile_overlap"):
        tile_windows(10, 10, 8, 1.0)


def test_tiles_find_a_small_object_that_the_single_pass_misses():
    image = _scene(1024, [(600, 300, 12, 0)])  # 12 px: 1.5 input px in one 1024 -> 128 pass, 6 px in a 256 tile
    single = _predictor().predict([image])[0]
    assert len(single["scores"]) == 0
    tiled = TiledPredictor(_predictor(), tile=256, overlap=0.25).predict([image])[0]
    assert tiled["labels"].tolist() == [0] and tiled["category_ids"].tolist() == [1]
    assert tiled["boxes"][0].tolist() == pytest.approx([600, 300, 612, 312], abs=2.5)


def test_an_object_seen_whole_by_overlapping_tiles_is_one_detection_and_classes_stay_apart():
    # tiles of 256 at stride 192 (overlap 0.25): x and y in [192, 256) lie in two tiles each, so four tiles see it
    image = _scene(640, [(200, 200, 40, 0), (400, 40, 30, 1), (410, 50, 30, 2)])
    windows = tile_windows(640, 640, 256, 0.25)
    assert sum(x1 <= 200 and 240 <= x2 and y1 <= 200 and 240 <= y2 for x1, y1, x2, y2 in windows) == 4
    found = TiledPredictor(_predictor(), tile=256, overlap=0.25).predict([image])[0]
    assert sorted(found["labels"].tolist()) == [0, 1, 2]  # the red square once; overlapping green and blue both kept
    red = found["boxes"][found["labels"] == 0][0]
    assert red.tolist() == pytest.approx([200, 200, 240, 240], abs=2.5)


def test_the_full_image_pass_adds_objects_larger_than_a_tile():
    image = _scene(512, [(20, 20, 400, 2)])  # no 128 px tile holds the blue square whole; the whole image does
    tiled = TiledPredictor(_predictor(), tile=128, overlap=0.2)
    with_full = TiledPredictor(_predictor(), tile=128, overlap=0.2, full_image=True).predict([image])[0]
    big = with_full["boxes"][(with_full["boxes"][:, 2] - with_full["boxes"][:, 0]) > 300]
    assert big.tolist() == [pytest.approx([20, 20, 420, 420], abs=4.5)]
    assert not ((tiled.predict([image])[0]["boxes"][:, 2] - tiled.predict([image])[0]["boxes"][:, 0]) > 300).any()


def test_tiled_predictor_keeps_the_predictor_interface():
    tiled = TiledPredictor(_predictor(), tile=64)
    assert tiled.classes == ["red", "green", "blue"] and tiled.batch_size == 4 and tiled.category_ids == [1, 2, 3]
    assert tiled.predict([]) == []


def test_an_object_cut_by_a_tile_edge_keeps_only_its_whole_view():
    # tiles of 256 at stride 192: the square (x 236..266) is cut by the first tile's right edge (x = 256) and
    # whole in the second tile (x 192..448); the cut view 236..256 has IoU 0.67 with the whole one
    image = _scene(640, [(236, 100, 30, 0)])
    predictor = _predictor(iou=0.9)  # an NMS that keeps both views: the tile-edge rule must merge them
    found = TiledPredictor(predictor, tile=256, overlap=0.25).predict([image])[0]
    assert found["labels"].tolist() == [0]
    assert found["boxes"][0].tolist() == pytest.approx([236, 100, 266, 130], abs=2.5)
