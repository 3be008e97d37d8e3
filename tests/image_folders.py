"""The tiny ImageFolder set that trainer, DDP and CLI tests train on (a module named so no test folder shadows it)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

COLOURS = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255)}  # BGR for cv2


def make_image_folder(root: Path, n_train: int = 4, n_val: int = 2, size: int = 32) -> Path:
    """``root/{train,val}/{blue,green,red}/*.png``: a coloured disc on noise, one colour per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                cv2.circle(image, (int(rng.integers(10, 22)), int(rng.integers(10, 22))), 8, colour, -1)
                cv2.imwrite(str(folder / f"{i}.png"), image)
    return root
