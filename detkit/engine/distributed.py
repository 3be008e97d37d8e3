"""Device selection and distributed (DDP) helpers: the process group from torchrun's environment and rank queries.

Also reductions across ranks, unwrapping DDP/compiled models, and an unpadded evaluation sampler.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from detkit.collectives import (  # re-exported: the engine's historical home of these
    all_gather_objects,
    all_reduce_sum,
    barrier,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
)
from detkit.models.stages import (
    unwrap_model,  # re-exported: the engine unwraps DDP models with it
)

__all__ = [
    "DistInfo",
    "ShardSampler",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "resolve_device",
    "unwrap_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (selects the CUDA device)
    backend: str | None = None  # "gloo" or "nccl"; None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a config string.

    Args:
        spec: ``auto`` (CUDA device ``local_rank`` when CUDA is available, else CPU), ``cpu``,
            ``cuda`` (device ``local_rank``) or ``cuda:N``.
        local_rank: this process's rank on the machine (torchrun's ``LOCAL_RANK``).
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available; use device=cpu or auto")
        index = local_rank if spec == "cuda" else _cuda_index(spec)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {spec!r}")


def _cuda_index(spec: str) -> int:
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"device: expected cuda:N with an integer N, got {spec!r}") from None


def init_distributed(device_spec: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1), else do nothing.

    The backend is nccl when this process uses a CUDA device and gloo otherwise. Returns this
    process's :class:`DistInfo`; safe to call when a group is already initialised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        logger.info("joined process group: rank %d/%d (local %d), backend %s", rank, world_size, local_rank, backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    backend=dist.get_backend())


def cleanup_distributed() -> None:
    """Leave the process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Evaluation sampler giving rank ``r`` the indices ``r, r + W, r + 2W, ...`` (no padding).

    Unlike ``DistributedSampler`` it never repeats samples to even out the shards, so metrics
    summed over ranks count every sample exactly once.
    """

    def __init__(self, dataset_len: int, rank: int | None = None, world_size: int | None = None) -> None:
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={self.world_size}, got {self.rank}")
        self.dataset_len = dataset_len

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.dataset_len, self.world_size))
