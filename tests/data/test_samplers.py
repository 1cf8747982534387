import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from maskrcnn_benchmark.data.samplers import DistributedSampler, GroupedBatchSampler, IterationBasedBatchSampler


def _reference_grouping(order, group_ids, batch_size):
    """Plain re-derivation: per group, consecutive chunks in sampler order; sorted by first element."""
    pos = {idx: p for p, idx in enumerate(order)}
    batches = []
    for g in sorted(set(group_ids[i] for i in order)):
        members = [i for i in order if group_ids[i] == g]
        batches += [members[k:k + batch_size] for k in range(0, len(members), batch_size)]
    return sorted(batches, key=lambda b: pos[b[0]])


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_batches_are_homogeneous_and_match_reference(batch_size, seed):
    group_ids = torch.randint(0, 2, (23,), generator=torch.Generator().manual_seed(seed + 10)).tolist()
    sampler = DistributedSampler(range(23), num_replicas=1, rank=0, shuffle=True, seed=seed)
    batches = list(GroupedBatchSampler(sampler, group_ids, batch_size))
    assert batches == _reference_grouping(list(sampler), group_ids, batch_size)
    assert sorted(i for b in batches for i in b) == list(range(23))
    assert all(len({group_ids[i] for i in b}) == 1 for b in batches)
    assert all(len(b) <= batch_size for b in batches)
    dropped = list(GroupedBatchSampler(sampler, group_ids, batch_size, drop_uneven=True))
    assert dropped == [b for b in batches if len(b) == batch_size]
    assert len(GroupedBatchSampler(sampler, group_ids, batch_size)) == len(batches)


def test_distributed_sampler_shards_disjoint_and_cover():
    n = 10
    for shuffle in (True, False):
        shards = [list(DistributedSampler(range(n), num_replicas=3, rank=r, shuffle=shuffle, seed=5, pad=False))
                  for r in range(3)]
        flat = [i for s in shards for i in s]
        assert sorted(flat) == list(range(n))  # disjoint and covering, no padding
        padded = [list(DistributedSampler(range(n), num_replicas=3, rank=r, shuffle=shuffle, seed=5))
                  for r in range(3)]
        assert all(len(s) == 4 for s in padded)
        assert set(i for s in padded for i in s) == set(range(n))
    s = DistributedSampler(range(n), num_replicas=1, rank=0, seed=5)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0 and sorted(list(s)) == list(range(n))
    s.set_epoch(0)
    assert list(s) == e0  # a function of (seed, epoch) only
    assert list(SequentialSampler(range(n))) == list(DistributedSampler(range(n), 1, 0, shuffle=False))
    with pytest.raises(ValueError, match="rank 3"):
        DistributedSampler(range(n), num_replicas=3, rank=3)


def _stream(start_iter, num_iterations=17, grouped=True):
    group_ids = [i % 3 == 0 for i in range(11)]
    sampler = DistributedSampler(range(11), num_replicas=1, rank=0, shuffle=True, seed=3)
    if grouped:
        bs = GroupedBatchSampler(sampler, group_ids, 2)
    else:
        bs = BatchSampler(sampler, 4, drop_last=False)
    return list(IterationBasedBatchSampler(bs, num_iterations, start_iter))


@pytest.mark.parametrize("grouped", [True, False])
def test_iteration_based_resume_continues_same_order(grouped):
    full = _stream(0, grouped=grouped)
    assert len(full) == 17
    assert full == _stream(0, grouped=grouped)  # deterministic
    for k in (1, 5, 6, 7, 12, 16, 17):
        assert _stream(k, grouped=grouped) == full[k:]
    # epochs differ (set_epoch is called), so the stream is not one epoch repeated
    group_ids = [i % 3 == 0 for i in range(11)]
    per_epoch = len(GroupedBatchSampler(DistributedSampler(range(11), 1, 0, seed=3), group_ids, 2)) if grouped else 3
    assert full[:per_epoch] != full[per_epoch:2 * per_epoch]
    assert len(IterationBasedBatchSampler(None, 17, 5)) == 12


def test_iteration_based_empty_batch_sampler_raises():
    with pytest.raises(RuntimeError, match="no batches"):
        list(IterationBasedBatchSampler(BatchSampler(range(0), 2, False), 3))
