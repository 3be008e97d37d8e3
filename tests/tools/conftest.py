"""Fixtures for the CLI end-to-end tests: a tiny ImageFolder set, a subprocess runner and one trained run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CLASSES = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255)}  # BGR

# Flags that make a run tiny: timm's 0.4M-parameter test_resnet at 32 px, one epoch, no worker processes.
TINY_FLAGS = ["--model", "timm:test_resnet", "--weights", "none", "--img-size", "32", "--batch-size", "4",
              "--epochs", "1", "--workers", "0", "--device", "cpu", "train.tensorboard=false",
              "data.stats_max_images=30", "data.scan_workers=2"]


def write_image_folder(root: Path, n_train: int = 4, n_val: int = 2, size: int = 32) -> Path:
    """``root/{train,val}/{blue,green,red}/*.png``: a coloured disc on noise, one colour per class."""
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("val", n_val)):
        for name, colour in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                cv2.circle(image, (16, 16), 9, colour, -1)
                cv2.imwrite(str(folder / f"{i}.png"), image)
    return root


def cli_env(tmp: Path) -> dict[str, str]:
    """Offline, single-threaded, with an empty torch cache: what the CLIs see in these tests."""
    torch_home = tmp / "torch_home"
    torch_home.mkdir(exist_ok=True)
    return {**os.environ, "DETKIT_OFFLINE": "1", "TORCH_HOME": str(torch_home), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def run_tool(tool: str, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python tools/<tool> ARGS`` from the repository root; output is captured as text."""
    return subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (to call its ``_run_cli`` in-process)."""
    spec = importlib.util.spec_from_file_location(f"detkit_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("cli_data") / "shapes")


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``tools/finetune.py`` run once; returns the run directory and the finished process."""
    tmp = tmp_path_factory.mktemp("cli_run")
    out = tmp / "run"
    proc = run_tool("finetune.py", "--data", str(tiny_data), "--output", str(out), "--lr", "0.02", *TINY_FLAGS,
                    "optim.head_lr_mult=5", env=cli_env(tmp))
    return out, proc
