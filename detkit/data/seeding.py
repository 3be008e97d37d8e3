"""Seeding augmentation pipelines: albumentations keeps its own RNG, apart from numpy's and torch's.

One mechanism for every dataset: reseed at each epoch start in the main process, and in each DataLoader worker
from the worker's own seed (so forked workers never replay each other's augmentations).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import get_worker_info

__all__ = ["SeededTransform", "reseed_transforms"]


def _seed_transform(transform: Any, seed: int) -> int | None:
    """Seed ``transform`` if it has its own RNG (``set_random_seed``); returns the seed used, or None."""
    if transform is None or not hasattr(transform, "set_random_seed"):
        return None
    seed = int(seed) % 2**32
    transform.set_random_seed(seed)
    return seed


class SeededTransform:
    """Mixin for datasets with a ``transform`` attribute: :meth:`reseed_transform`, and reseeding in workers.

    Call :meth:`_reseed_in_worker` at the start of ``__getitem__``.
    """

    transform: Any
    _transform_seed: int | None = None

    def reseed_transform(self, seed: int) -> None:
        """Seed the transform's own random state (an albumentations ``Compose`` ignores global seeds).

        DataLoader workers reseed automatically from their per-epoch worker seed; call this at each epoch
        start for reproducible augmentations when loading in the main process (``num_workers=0``).
        """
        used = _seed_transform(self.transform, seed)
        if used is not None:
            self._transform_seed = used

    def _reseed_in_worker(self) -> None:
        # Workers are copies of one process: without this each would replay the same augmentation stream.
        # torch gives every worker a distinct seed (new each epoch, reproducible under torch.manual_seed).
        info = get_worker_info()
        if info is not None and int(info.seed) % 2**32 != self._transform_seed:
            self.reseed_transform(info.seed)


def reseed_transforms(dataset: Any, seed: int) -> None:
    """Reseed the augmentation of ``dataset``, or of the dataset it wraps (``Subset``, ...), if it has one."""
    while dataset is not None:
        if isinstance(dataset, SeededTransform):
            dataset.reseed_transform(seed)
            return
        if _seed_transform(getattr(dataset, "transform", None), seed) is not None:
            return
        dataset = getattr(dataset, "dataset", None)
