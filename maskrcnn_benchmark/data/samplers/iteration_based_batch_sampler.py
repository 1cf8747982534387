"""Wrap a batch sampler so it yields a fixed number of batches across epochs, resumably."""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
from torch.utils.data import Sampler


def sample_seed(seed: int, iteration: int, rank: int, position: int) -> int:
    """The seed of the random transforms of the sample at ``position`` of ``rank``'s batch at
    ``iteration`` (a 63-bit integer from ``numpy.random.SeedSequence``; a pure function)."""
    hi, lo = np.random.SeedSequence([int(seed), int(rank), int(iteration), int(position)]).generate_state(2)
    return (int(hi) << 31) ^ int(lo)


class IterationBasedBatchSampler(Sampler[List[int]]):
    """Yield batches ``start_iter .. num_iterations - 1`` of an endless stream of epochs.

    The stream is epoch 0's batches, then epoch 1's, ... where before each epoch ``e`` the wrapped
    sampler gets ``set_epoch(e)`` (when it has one). With a sampler whose order depends only on
    ``(seed, epoch)`` (e.g. :class:`DistributedSampler`) the batch at iteration ``t`` is the same
    whatever ``start_iter`` was, so a resumed run sees exactly the batches a never-interrupted run
    would have. (Skipped epochs are re-generated, not loaded: this costs only index shuffling.)

    With ``seed`` given, every element is a key ``(index, sample_seed(seed, iteration, rank, k))``
    instead of ``index``: the dataset seeds the random transforms of that sample with it, so all
    the randomness of the data pipeline is a function of ``(seed, iteration, rank, position)`` and
    does not depend on the number of loader workers or on where a run was resumed.

    Args:
        batch_sampler: yields lists of indices; its ``.sampler`` may have ``set_epoch``.
        num_iterations: total iterations of the run (the last batch yielded is number
            ``num_iterations - 1``).
        start_iter: first iteration to yield (0 for a fresh run, the checkpoint's iteration on resume).
        seed: data seed (the same on every process) for per-sample seeds; None yields plain indices.
        rank: this process's rank (part of the per-sample seeds).
    """

    def __init__(self, batch_sampler, num_iterations: int, start_iter: int = 0, seed: Optional[int] = None,
                 rank: int = 0):
        self.batch_sampler = batch_sampler
        self.num_iterations = int(num_iterations)
        self.start_iter = int(start_iter)
        self.seed = None if seed is None else int(seed)
        self.rank = int(rank)

    def _keys(self, batch: List[int], iteration: int) -> List[Union[int, Tuple[int, int]]]:
        if self.seed is None:
            return batch
        return [(idx, sample_seed(self.seed, iteration, self.rank, k)) for k, idx in enumerate(batch)]

    def _set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.batch_sampler, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[Union[int, Tuple[int, int]]]]:
        iteration = 0  # stream position of the next batch
        epoch = 0
        while iteration < self.num_iterations:
            self._set_epoch(epoch)
            if iteration + len(self.batch_sampler) <= self.start_iter:
                iteration += len(self.batch_sampler)  # whole epoch before the resume point
            else:
                for batch in self.batch_sampler:
                    if iteration >= self.num_iterations:
                        return
                    if iteration >= self.start_iter:
                        yield self._keys(batch, iteration)
                    iteration += 1
            epoch += 1
            if len(self.batch_sampler) == 0:
                raise RuntimeError("IterationBasedBatchSampler: the batch sampler yields no batches "
                                   "(empty dataset, or drop_last with fewer images than a batch)")

    def __len__(self) -> int:
        return max(self.num_iterations - self.start_iter, 0)
