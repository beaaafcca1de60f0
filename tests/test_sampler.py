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


def _simulate_ranks(sampler, plan_of, steps, world, micro):
    """Every rank's micro-batches per step, as one rank's sampler computes them."""
    out = []
    for s in steps:
        batch = sampler.global_batch(s, plan_of(s))
        out.append([CurriculumSampler.rank_micro_batches(batch, r, world, micro) for r in range(world)])
    return out


def test_ranks_agree_get_disjoint_full_micro_batches_and_passes_do_not_repeat():
    """Very unequal clusters (3, 10 and 500 samples), a plan switching between them, 4 simulated ranks."""
    pools = {"tiny": np.arange(3), "small": np.arange(3, 13), "big": np.arange(13, 513)}
    plans = [Plan({"tiny": 1.0}, exact=True), Plan({"small": 1.0, "big": 1.0}, exact=True), Plan({"big": 1.0})]
    plan_of = lambda s: plans[s % 3]  # noqa: E731
    # Each rank builds its own sampler: the same seed gives the same decisions without communication.
    per_rank = [_simulate_ranks(CurriculumSampler(pools, 16, seed=5), plan_of, range(90), 4, 2) for _ in range(4)]
    taken = {name: [] for name in pools}
    for s in range(90):
        views = [per_rank[r][s] for r in range(4)]
        assert all(len(v) == 4 for v in views)
        slices = views[0]
        for v in views[1:]:
            assert all(np.array_equal(a, b) for ra, rb in zip(slices, v) for a, b in zip(ra, rb))
        assert all(len(mb) == 2 for rank in slices for mb in rank)  # never a short micro-batch
        batch = np.concatenate([mb for rank in slices for mb in rank])
        if s % 3 != 0:
            assert len(set(batch.tolist())) == 16  # disjoint across ranks and micro-batches
        for name, idx in pools.items():
            taken[name] += [i for i in batch.tolist() if i in set(idx.tolist())]
    # Within one pass over a pool no sample repeats: chunks of pool size are permutations of it.
    for name in ("small", "big"):
        stream, size = taken[name], len(pools[name])
        assert len(stream) > size
        counts = np.bincount(np.array(stream) - pools[name][0], minlength=size)
        assert counts.max() - counts.min() <= 1  # every sample drawn equally often, +-1 for the open pass


def test_a_pool_smaller_than_its_share_gives_what_it_has_and_the_rest_comes_from_the_others():
    pools = {"a": np.arange(3), "b": np.arange(3, 100)}
    sampler = CurriculumSampler(pools, 8, seed=0)
    assert sampler.counts(0, Plan({"a": 1.0, "b": 1.0}, exact=True)) == {"a": 3, "b": 5}
    for s in range(20):
        batch = sampler.global_batch(s, Plan({"a": 1.0, "b": 1.0}, exact=True))
        assert len(batch) == 8 and len(set(batch.tolist())) == 8


def test_planned_pools_smaller_than_the_batch_repeat_with_a_warning_instead_of_hanging():
    sampler = CurriculumSampler({"a": np.arange(3)}, 8, seed=0)
    with pytest.warns(UserWarning, match="fewer than the global batch"):
        batch = sampler.global_batch(0, Plan({"a": 1.0}))
    assert len(batch) == 8 and set(batch.tolist()) == {0, 1, 2}


def test_a_pass_ending_inside_a_step_never_repeats_a_sample_within_the_step():
    sampler = CurriculumSampler({"a": np.arange(10)}, 4, seed=1)  # 10 is not a multiple of 4
    seen = []
    for s in range(50):
        batch = sampler.global_batch(s, Plan({"a": 1.0}))
        assert len(set(batch.tolist())) == 4
        seen += batch.tolist()
    assert np.bincount(seen).tolist() == [20] * 10  # 200 draws, 20 full passes


def test_largest_remainder_and_exact_counts():
    from ct_train.sampler import largest_remainder

    assert largest_remainder(10, np.array([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    assert largest_remainder(7, np.array([0.5, 0.25, 0.25])).tolist() == [3, 2, 2]
    sampler = CurriculumSampler(POOLS, 12, seed=0)
    assert all(sampler.counts(s, Plan({"a": 1.0, "b": 2.0}, exact=True)) == {"a": 4, "b": 8} for s in range(5))


def test_exact_counts_round_fractional_shares_without_bias():
    """3 equal pools in a batch of 10: each step gives 3 or 4 to each, and on average 10/3 each (largest
    remainder would give the extra unit to the first pool at every step)."""
    pools = {k: np.arange(i * 100, (i + 1) * 100) for i, k in enumerate("abc")}
    sampler = CurriculumSampler(pools, 10, seed=0)
    plan = Plan({"a": 1.0, "b": 1.0, "c": 1.0}, exact=True)
    counts = np.array([[sampler.counts(s, plan)[k] for k in "abc"] for s in range(600)])
    assert (counts.sum(axis=1) == 10).all() and set(counts.ravel()) == {3, 4}
    assert counts.mean(axis=0) == pytest.approx([10 / 3] * 3, abs=0.08)
    assert sampler.counts(7, plan) == sampler.counts(7, plan)  # a pure function of (seed, step)


def test_state_round_trip_mid_pass_after_a_pass_ended_inside_a_step():
    pools = {"a": np.arange(10), "b": np.arange(10, 17)}
    plan_of = lambda s: Plan({"a": 1.0, "b": 1.0}, exact=True)  # noqa: E731
    reference = _stream(CurriculumSampler(pools, 6, seed=2), plan_of, range(30))
    first = CurriculumSampler(pools, 6, seed=2)
    head = _stream(first, plan_of, range(4))  # 12 from a: its first pass ended inside step 3
    state = first.state_dict()
    assert state["cursors"]["a"][0] == 1 and state["cursors"]["a"][2]  # in pass 2, with moved samples
    import json

    resumed = CurriculumSampler(pools, 6, seed=2)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert head + _stream(resumed, plan_of, range(4, 30)) == reference
