"""DataLoaders for training (shuffled or class-balanced, seeded, sharded under DDP) and evaluation (in order, unpadded
shards).

The trainer reseeds the shuffle generator and the workers every epoch, so a resumed run repeats the same order.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detkit.config.sections import DataConfig
from detkit.data.sampling import BalancedSampler, balanced_sample_weights, image_labels
from detkit.engine.distributed import DistInfo, ShardSampler
from detkit.engine.tasks.base import Task
from detkit.engine.trainer import seed_worker

__all__ = ["SAMPLERS", "build_loader"]

#: ``data.sampler`` values
SAMPLERS = ("shuffle", "balanced")

logger = logging.getLogger(__name__)


def build_loader(
    dataset: Dataset,
    task: Task,
    data_cfg: DataConfig,
    *,
    train: bool,
    device: torch.device,
    seed: int = 0,
    dist_info: DistInfo | None = None,
) -> DataLoader:
    """A DataLoader for training (shuffled, seeded, sharded under DDP) or evaluation (in order, unpadded shards).

    Args:
        dataset: yields ``(image Tensor[3, H, W], target, path)``.
        task: provides ``collate_fn``.
        data_cfg: batch sizes, workers, pinning, persistence, ``drop_last``, ``sampler`` (``balanced``: training
            images drawn with replacement so that every class is drawn about equally often, see
            :func:`detkit.data.sampling.balanced_sample_weights`).
        train: training loader (shuffle, drop_last) or evaluation loader.
        device: pinning is only used for a CUDA device.
        seed: seeds the shuffle generator and the workers (the trainer reseeds both every epoch).
        dist_info: rank and world size; None for a single process.
    """
    dist_info = dist_info or DistInfo()
    if data_cfg.workers < 0:
        raise ValueError(f"data.workers: expected >= 0, got {data_cfg.workers}")
    if data_cfg.batch_size < 1:
        raise ValueError(f"data.batch_size: expected >= 1, got {data_cfg.batch_size}")
    if data_cfg.sampler not in SAMPLERS:
        raise ValueError(f"data.sampler: expected one of {SAMPLERS}, got {data_cfg.sampler!r}")
    workers = data_cfg.workers
    worker_args: dict[str, Any] = {}
    if workers > 0:
        worker_args = {"persistent_workers": data_cfg.persistent_workers, "prefetch_factor": data_cfg.prefetch_factor}
    generator = torch.Generator()
    generator.manual_seed(seed)
    distributed = dist_info.world_size > 1
    if train:
        batch_size = data_cfg.batch_size
        per_rank = len(dataset) // dist_info.world_size
        drop_last = data_cfg.drop_last and per_rank >= batch_size
        if data_cfg.drop_last and not drop_last:
            logger.warning("data.drop_last ignored: %d training images per process < batch_size %d",
                           per_rank, batch_size)
        sampler = (DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                      shuffle=True, seed=seed) if distributed else None)
        if data_cfg.sampler == "balanced":
            weights = balanced_sample_weights(image_labels(dataset), len(dataset.classes))
            sampler = BalancedSampler(weights, max(per_rank, 1), seed=seed, rank=dist_info.rank)
        shuffle = sampler is None
    else:
        batch_size = data_cfg.eval_batch_size or 2 * data_cfg.batch_size
        drop_last = False
        sampler = ShardSampler(len(dataset), dist_info.rank, dist_info.world_size) if distributed else None
        shuffle = False
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
        collate_fn=task.collate_fn, pin_memory=data_cfg.pin_memory and device.type == "cuda", drop_last=drop_last,
        worker_init_fn=seed_worker, generator=generator, **worker_args,
    )
