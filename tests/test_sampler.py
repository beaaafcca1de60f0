"""The curriculum-aware sampler: deterministic, disjoint rank slices, no repeats in a pass, resumable."""

import numpy as np
import pytest

from ct_train.curriculum import ALL, Plan
from ct_train.sampler import CurriculumSampler

POOLS = {ALL: np.arange(100), "a": np.arange(0, 30), "b": np.arange(30, 100)}


def _stream(sampler, plans, steps):
    return [sampler.global_batch(s, plans(s)).tolist() for s in steps]


def test_same_stream_from_same_seed_and_different_from_other_seed():
    iid = lambda s: Plan({ALL: 1.0})  # noqa: E731
    a = _stream(CurriculumSampler(POOLS, 16, seed=1), iid, range(10))
    b = _stream(CurriculumSampler(POOLS, 16, seed=1), iid, range(10))
    c = _stream(CurriculumSampler(POOLS, 16, seed=2), iid, range(10))
    assert a == b and a != c


def test_no_repeat_within_a_pass_and_full_coverage():
    sampler = CurriculumSampler(POOLS, 20, seed=0)
    seen = np.concatenate([sampler.global_batch(s, Plan({ALL: 1.0})) for s in range(5)])  # exactly one pass
    assert sorted(seen.tolist()) == list(range(100))
    second = np.concatenate([sampler.global_batch(s, Plan({ALL: 1.0})) for s in range(5, 10)])
    assert sorted(second.tolist()) == list(range(100)) and not np.array_equal(seen, second)


def test_rank_slices_partition_the_global_batch():
    batch = CurriculumSampler(POOLS, 24, seed=0).global_batch(0, Plan({ALL: 1.0}))
    parts = []
    for rank in range(3):
        micro = CurriculumSampler.rank_micro_batches(batch, rank, 3, micro_batch_size=4)
        assert [len(m) for m in micro] == [4, 4]
        parts += [i for m in micro for i in m.tolist()]
    assert parts == batch.tolist()


def test_plan_weights_pick_the_pools():
    sampler = CurriculumSampler(POOLS, 64, seed=0)
    only_a = sampler.global_batch(0, Plan({"a": 1.0}))
    assert set(only_a.tolist()) <= set(range(30))
    counts = [sampler.counts(s, Plan({"a": 0.25, "b": 0.75})) for s in range(200)]
    share_a = np.mean([c.get("a", 0) / 64 for c in counts])
    assert abs(share_a - 0.25) < 0.02


def test_resume_reproduces_the_stream_also_on_another_world_size():
    plans = lambda s: Plan({"a": 1.0, "b": 2.0} if s % 3 else {ALL: 1.0})  # noqa: E731
    reference = _stream(CurriculumSampler(POOLS, 12, seed=4), plans, range(20))
    first = CurriculumSampler(POOLS, 12, seed=4)
    head = _stream(first, plans, range(8))
    state = first.state_dict()
    resumed = CurriculumSampler(POOLS, 12, seed=4)
    resumed.load_state_dict(state)
    assert head + _stream(resumed, plans, range(8, 20)) == reference
    # The global batch (hence the stream) is independent of how many ranks split it.
    batch = np.array(reference[8])
    two = [i for r in range(2) for m in CurriculumSampler.rank_micro_batches(batch, r, 2, 3) for i in m.tolist()]
    four = [i for r in range(4) for m in CurriculumSampler.rank_micro_batches(batch, r, 4, 3) for i in m.tolist()]
    assert two == four == reference[8]


def test_state_from_another_configuration_is_rejected():
    state = CurriculumSampler(POOLS, 12, seed=4).state_dict()
    with pytest.raises(ValueError, match="global_batch_size=12"):
        CurriculumSampler(POOLS, 16, seed=4).load_state_dict(state)
