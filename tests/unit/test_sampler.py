"""ElasticSampler: deterministic order, exactly-once coverage across resizes."""
import numpy as np
import pytest

from gluon_elastic.data import ElasticSampler, split_evenly


def test_split_evenly():
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 4) == [1, 1, 0, 0]


def test_order_is_a_function_of_seed_and_epoch():
    a, b = ElasticSampler(50, seed=3), ElasticSampler(50, seed=3)
    assert np.array_equal(a.order(2), b.order(2))
    assert not np.array_equal(a.order(1), a.order(2))
    assert sorted(a.order(1)) == list(range(50))


def _run_epoch(sampler, worlds, local_batch_size):
    """Train one epoch, changing the world after each step as ``worlds`` says."""
    seen = []
    step = 0
    while sampler.remaining:
        world = worlds[min(step, len(worlds) - 1)]
        sizes = [local_batch_size] * world
        # Every rank of this world takes its share of the same step.
        per_rank = [next(sampler.iter_batches(sizes, rank)) for rank in range(world)]
        global_batch_size = per_rank[0][1]
        assert all(g == global_batch_size for _, g in per_rank)
        assert sum(len(i) for i, _ in per_rank) == global_batch_size
        for indices, _ in per_rank:
            seen.extend(indices.tolist())
        sampler.record(global_batch_size)
        step += 1
    return seen


def test_every_sample_once_across_resizes():
    sampler = ElasticSampler(103, seed=7)
    seen = _run_epoch(sampler, [2, 2, 3, 1, 5, 5, 2], local_batch_size=4)
    assert sorted(seen) == list(range(103))
    assert seen == sampler.order().tolist()


def test_restore_resumes_the_epoch():
    sampler = ElasticSampler(40, seed=1)
    sampler.set_epoch(4)
    first = next(sampler.iter_batches([5, 5], 0))[0].tolist() + \
        next(sampler.iter_batches([5, 5], 1))[0].tolist()
    sampler.record(10)
    saved = sampler.state_dict()
    resumed = ElasticSampler(40)
    resumed.load_state_dict(saved)
    rest = _run_epoch(resumed, [3], local_batch_size=3)
    assert sorted(first + rest) == list(range(40))
    resumed.set_epoch(4)
    assert resumed.processed == 40  # same epoch: position kept


def test_uncommitted_work_is_redone():
    sampler = ElasticSampler(12, shuffle=False)
    iterator = sampler.iter_batches([4], 0)
    next(iterator)
    next(iterator)  # two steps taken, none recorded: a failure rolls them back
    assert next(sampler.iter_batches([4], 0))[0].tolist() == [0, 1, 2, 3]


def test_tail_is_split_evenly():
    sampler = ElasticSampler(10, shuffle=False)
    sampler.record(8)
    batches = [next(sampler.iter_batches([4, 4, 4], r)) for r in range(3)]
    assert [b[0].tolist() for b in batches] == [[8], [9], []]
    assert {b[1] for b in batches} == {2}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="num_samples"):
        ElasticSampler(0)
    sampler = ElasticSampler(5)
    with pytest.raises(ValueError, match="record"):
        sampler.record(6)
    with pytest.raises(ValueError, match="rank"):
        next(sampler.iter_batches([2, 2], 2))
    with pytest.raises(ValueError, match="samples"):
        sampler.load_state_dict(dict(ElasticSampler(6).state_dict()))
