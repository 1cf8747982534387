"""Wrap a batch sampler so it yields a fixed number of batches across epochs, resumably."""
from __future__ import annotations

from typing import Iterator, List

from torch.utils.data import Sampler


class IterationBasedBatchSampler(Sampler[List[int]]):
    """Yield batches ``start_iter .. num_iterations - 1`` of an endless stream of epochs.

    The stream is epoch 0's batches, then epoch 1's, ... where before each epoch ``e`` the wrapped
    sampler gets ``set_epoch(e)`` (when it has one). With a sampler whose order depends only on
    ``(seed, epoch)`` (e.g. :class:`DistributedSampler`) the batch at iteration ``t`` is the same
    whatever ``start_iter`` was, so a resumed run sees exactly the batches a never-interrupted run
    would have. (Skipped epochs are re-generated, not loaded: this costs only index shuffling.)

    Args:
        batch_sampler: yields lists of indices; its ``.sampler`` may have ``set_epoch``.
        num_iterations: total iterations of the run (the last batch yielded is number
            ``num_iterations - 1``).
        start_iter: first iteration to yield (0 for a fresh run, the checkpoint's iteration on resume).
    """

    def __init__(self, batch_sampler, num_iterations: int, start_iter: int = 0):
        self.batch_sampler = batch_sampler
        self.num_iterations = int(num_iterations)
        self.start_iter = int(start_iter)

    def _set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.batch_sampler, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[List[int]]:
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
                        yield batch
                    iteration += 1
            epoch += 1
            if len(self.batch_sampler) == 0:
                raise RuntimeError("IterationBasedBatchSampler: the batch sampler yields no batches "
                                   "(empty dataset, or drop_last with fewer images than a batch)")

    def __len__(self) -> int:
        return max(self.num_iterations - self.start_iter, 0)
