"""Helpers for the CLI end-to-end tests: tiny-run flags, an offline environment, tool runners, a tiny detector.

A module of its own (not conftest.py) so that test files import it by a name no other test folder uses.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from model_files import save_tiny_detector  # noqa: F401  (re-exported: the CLI tests' tiny detector)

REPO = Path(__file__).resolve().parents[2]

# Flags that make a run tiny: timm's 0.4M-parameter test_resnet at 32 px, one epoch, no worker processes.
TINY_FLAGS = ["--model", "timm:test_resnet", "--weights", "none", "--img-size", "32", "--batch-size", "4",
              "--epochs", "1", "--workers", "0", "--device", "cpu", "train.tensorboard=false",
              "data.stats_max_images=30", "data.scan_workers=2"]


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


def run_in_process(tool: str, argv: list[str], monkeypatch: Any, capsys: Any) -> tuple[int, str, str]:
    """Run ``tools/<tool>.py ARGV`` through its ``_run_cli`` in this process; returns (exit code, stdout, stderr)."""
    module = load_tool(tool)
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *argv])
    rc = module._run_cli()
    out = capsys.readouterr()
    return rc, out.out, out.err
