"""Shared fixtures for the ops tests: seeded random box generators and the list of devices to run on.

Helpers are exposed as session fixtures so hypothesis tests can use them too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]),
]


def random_boxes(
    n: int,
    generator: torch.Generator,
    *,
    extent: float = 100.0,
    max_side: float = 0.4,
    quantum: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``Tensor[n, 4]`` valid xyxy boxes (positive sides) with corners in about ``[0, extent]``.

    ``quantum`` rounds corners and sides to a grid so that equal IoUs (ties) happen often.
    """
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * extent
    wh = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * max_side + 0.01) * extent
    if quantum is not None:
        xy = (xy / quantum).round() * quantum
        wh = (wh / quantum).ceil() * quantum
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def awkward_boxes(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boxes mixing the hard cases: duplicates, zero area, degenerate (x2 < x1), huge and tiny scales."""
    kind = torch.randint(0, 6, (1,), generator=generator).item()
    boxes = random_boxes(n, generator, dtype=torch.float64)
    if kind == 1 and n > 1:  # duplicates
        boxes[n // 2 :] = boxes[: n - n // 2].clone()
    elif kind == 2:  # zero-area: a zero width or height
        boxes[::2, 2] = boxes[::2, 0]
        boxes[1::3, 3] = boxes[1::3, 1]
    elif kind == 3:  # degenerate corners
        boxes[::2] = boxes[::2][:, [2, 3, 0, 1]]
    elif kind == 4:  # huge coordinates
        boxes = boxes * 1e4
    elif kind == 5:  # tiny coordinates
        boxes = boxes * 1e-6
    return boxes.to(dtype)


@pytest.fixture(scope="session")
def make_boxes() -> Callable[..., torch.Tensor]:
    """Factory ``make_boxes(n, generator, **kwargs)`` for random valid boxes (see ``random_boxes``)."""
    return random_boxes


@pytest.fixture(scope="session")
def make_awkward_boxes() -> Callable[..., torch.Tensor]:
    """Factory ``make_awkward_boxes(n, generator)`` for boxes with duplicates, degenerate and extreme values."""
    return awkward_boxes


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each test using it runs on the CPU and, when one is present, on a CUDA device."""
    return torch.device(request.param)


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator seeded the same way in every test."""
    return torch.Generator().manual_seed(1234)
