"""Batches whose images share an aspect-ratio group (less padding in a batch)."""
from __future__ import annotations

from typing import Iterator, List, Sequence

from torch.utils.data import BatchSampler, Sampler


class GroupedBatchSampler(BatchSampler):
    """Cut the indices of ``sampler`` into batches of ``batch_size`` indices of one group.

    Within a group the sampler's order is kept; batches are emitted in the order of their first
    element in the sampler's sequence (as in maskrcnn-benchmark). The result is a deterministic
    function of the sampler's output, so a deterministic sampler gives deterministic batches.

    Args:
        sampler: yields dataset indices.
        group_ids: ``group_ids[i]`` is the group of dataset index ``i``.
        batch_size: indices per batch.
        drop_uneven: drop each group's last incomplete batch.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int, drop_uneven: bool = False):
        if batch_size <= 0:
            raise ValueError(f"GroupedBatchSampler: batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = [int(g) for g in group_ids]
        self.batch_size = int(batch_size)
        self.drop_uneven = bool(drop_uneven)
        self.drop_last = self.drop_uneven

    def _prepare_batches(self) -> List[List[int]]:
        open_batches = {}
        batches: List[List[int]] = []  # in order of first element
        for idx in self.sampler:
            g = self.group_ids[idx]
            batch = open_batches.get(g)
            if batch is None:
                batch = open_batches[g] = []
                batches.append(batch)
            batch.append(idx)
            if len(batch) == self.batch_size:
                del open_batches[g]
        if self.drop_uneven:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self._prepare_batches())

    def __len__(self) -> int:
        return len(self._prepare_batches())
