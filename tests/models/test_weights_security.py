"""Untrusted weight files never run code: pickled payloads beside a real state dict are refused, not executed.

Each payload would create a marker file when unpickled; the marker must never appear, and the error names the file.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from detkit.models import create_classifier, create_detector, read_state_dict


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


class _SubprocessPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, ([sys.executable, "-c", f"open({str(self.marker)!r}, 'w').write('ran')"],)


class _SystemPayload:  # os.system pickles as posix.system, a module torch's unpickler blocks (another message)
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {str(self.marker)!r}",)


PAYLOADS = {"builtins.exec": _ExecPayload, "subprocess.call": _SubprocessPayload, "os.system": _SystemPayload}


def _poisoned(path: Path, payload: type, marker: Path) -> Path:
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"state_dict": state, "extra": payload(marker)}, path)
    return path


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_weights_file_with_a_payload_is_refused_and_never_executed(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "marker"
    path = _poisoned(tmp_path / "resnet18.pth", PAYLOADS[kind], marker)
    with pytest.raises(ValueError, match="holds Python objects beyond tensors") as err:
        create_classifier("resnet18", 3, weights=str(path))
    assert str(path) in str(err.value) and "clean.pt" in str(err.value)
    with pytest.raises(ValueError, match="beyond tensors"):
        create_detector("resnet18_ssd", 2, weights=str(path))
    assert not marker.exists(), "the payload ran"


def test_poisoned_file_in_the_torch_cache_is_refused_under_weights_auto(offline_cache: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    offline_cache.mkdir(parents=True)
    _poisoned(offline_cache / "resnet18-f37072fd.pth", _ExecPayload, marker)
    with pytest.raises(ValueError, match="beyond tensors"):
        create_classifier("resnet18", 3, weights="auto")
    assert not marker.exists(), "the payload ran"


def test_numpy_arrays_and_scalars_beside_tensors_still_load(tmp_path: Path) -> None:
    state = {"w": torch.arange(4.0)}
    torch.save({"state_dict": state, "rng": np.random.get_state(), "step": np.int64(3),
                "mean": np.array([0.5, 0.25], np.float32)}, tmp_path / "ok.pth")
    loaded, _ = read_state_dict(tmp_path / "ok.pth")
    assert torch.equal(loaded["w"], state["w"])
