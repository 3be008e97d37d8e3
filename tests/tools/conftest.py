"""Fixtures for the CLI end-to-end tests: the tiny ImageFolder set and one trained run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cli_helpers import TINY_FLAGS, cli_env, run_tool
from image_folders import make_image_folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("cli_data") / "shapes")


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``tools/finetune.py`` run once; returns the run directory and the finished process."""
    tmp = tmp_path_factory.mktemp("cli_run")
    out = tmp / "run"
    proc = run_tool("finetune.py", "--data", str(tiny_data), "--output", str(out), "--lr", "0.02", *TINY_FLAGS,
                    "optim.head_lr_mult=5", env=cli_env(tmp))
    return out, proc
