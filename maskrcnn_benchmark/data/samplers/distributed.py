"""A seeded, epoch-aware sampler that shards a dataset over processes."""
from __future__ import annotations

import math
from typing import Iterator, List, Optional

import torch
from torch.utils.data import Sampler

from maskrcnn_benchmark.utils import comm


class DistributedSampler(Sampler[int]):
    """Indices of one process's shard of ``dataset``.

    Each epoch's order is a function of ``(seed, epoch)`` only: with ``shuffle`` a permutation
    from ``torch.Generator().manual_seed(seed + epoch)``, else ``0..n-1``. With ``pad=True`` the
    list is extended by wrapping around so every process gets ``ceil(n / num_replicas)`` indices
    (training); with ``pad=False`` the shards are disjoint and together hold every index exactly
    once (testing). Shard ``r`` is ``indices[r::num_replicas]``. Works in a single process too
    (``num_replicas=1``), where it is a seeded random (or sequential) sampler.

    Args:
        dataset: anything with ``len()``.
        num_replicas, rank: default to the world size and rank of ``torch.distributed``.
        shuffle: shuffle each epoch.
        seed: the same on every process.
        pad: pad to a multiple of ``num_replicas``.
    """

    def __init__(self, dataset, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, pad: bool = True):
        self.num_samples_total = len(dataset)
        self.num_replicas = comm.get_world_size() if num_replicas is None else int(num_replicas)
        self.rank = comm.get_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"DistributedSampler: rank {self.rank} not in [0, {self.num_replicas})")
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.pad = bool(pad)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _all_indices(self) -> List[int]:
        n = self.num_samples_total
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        if self.pad and n > 0:
            total = math.ceil(n / self.num_replicas) * self.num_replicas
            indices = (indices * math.ceil(total / n))[:total]
        return indices

    def __iter__(self) -> Iterator[int]:
        return iter(self._all_indices()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        n = self.num_samples_total
        if self.pad:
            return math.ceil(n / self.num_replicas)
        return len(range(self.rank, n, self.num_replicas))
