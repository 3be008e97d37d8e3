"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread(monkeypatch):
    """One intra-op thread (tiny models on a shared 2-core machine: spinning OpenMP threads make them 10x slower)
    and offline pretrained-weight lookups (``DETKIT_OFFLINE=1`` even where the environment says otherwise);
    deterministic algorithms are switched off again afterwards."""
    monkeypatch.setenv("DETKIT_OFFLINE", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    torch.use_deterministic_algorithms(False)
