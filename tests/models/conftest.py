"""Fixtures for model tests: an empty, private weights cache and no network, so nothing is ever downloaded.

Every test in tests/models runs with TORCH_HOME in a temp dir and DETKIT_OFFLINE=1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from detkit.models import OFFLINE_ENV


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME for the test; returns the torch.hub checkpoints folder inside it."""
    torch_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    return torch_home / "hub" / "checkpoints"
