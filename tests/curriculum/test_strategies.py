"""IT2ACL, ODM and mixture as pure state machines, driven by fake all-reduced signals."""

import json

import numpy as np
import pytest

from ct_train.curriculum import CURRICULA, ClusterStats, DataIndex, build_curriculum
from ct_train.curriculum.it2acl import IT2ACLConfig, competence
from ct_train.curriculum.mixture import MixtureConfig
from ct_train.curriculum.odm import ODMConfig, exploration_rate
from ct_train.errors import ConfigError
from ct_train.sampler import CurriculumSampler


def _index(n_clusters=4, per_cluster=30, levels=3):
    clusters = [f"c{i}" for i in range(n_clusters)]
    ids = np.repeat(np.arange(n_clusters), per_cluster)
    difficulty = np.tile(np.arange(per_cluster) % levels + 1.0, n_clusters)
    return DataIndex(clusters, ids, difficulty)


def _drawn(plan):
    """cluster -> band of an exact single-band plan."""
    return {name.split("@")[0]: int(name.split("@")[1]) for name in plan.weights}


def _stats(index, counts, gain=None, loss=None):
    counts = np.asarray(counts, dtype=np.float64)
    loss = np.full(len(counts), 2.0) if loss is None else np.asarray(loss, dtype=np.float64)
    return ClusterStats(index.clusters, loss * counts, counts, None if gain is None else np.asarray(gain, float))


def _run_it2acl(cur, index, steps, gain_of, start=0, rng=None):
    """Drive `cur` with a fake prediction gain: gain_of(step, cluster, band) + noise."""
    rng = rng or np.random.default_rng(0)
    history = []
    for step in range(start, start + steps):
        plan = cur.plan(step)
        drawn = _drawn(plan)
        counts, gain = np.zeros(len(index.clusters)), np.full(len(index.clusters), np.nan)
        for c, band in drawn.items():
            i = index.clusters.index(c)
            counts[i] = 8
            gain[i] = gain_of(step, c, band) + 0.3 * rng.normal()
        cur.observe(step, _stats(index, counts, gain))
        history.append((plan.weights, cur.bandit.probs().copy()))
    return history


def test_it2acl_concentrates_on_the_arm_with_higher_gain_and_leaves_it_when_the_gain_stops():
    index = _index(n_clusters=6)
    cur = build_curriculum(IT2ACLConfig(signal="pg", phase2="none", clusters_per_batch=1), index, seed=0, total_steps=0)
    good = {"c2"}
    _run_it2acl(cur, index, 150, lambda s, c, b: 1.0 if c in good else 0.0)
    p = dict(zip(cur.arms, cur.bandit.probs()))
    assert max(p, key=p.get) == "c2" and p["c2"] > 0.6
    good = {"c4"}  # non-stationary: c2 stops paying, c4 starts
    history = _run_it2acl(cur, index, 250, lambda s, c, b: 1.0 if c in good else 0.0, start=150)
    p = dict(zip(cur.arms, cur.bandit.probs()))
    assert max(p, key=p.get) == "c4" and p["c4"] > 0.6 and p["c2"] < 0.1
    # The last 100 steps trained mostly on c4.
    late = [next(iter(w)).split("@")[0] for w, _ in history[-100:]]
    assert late.count("c4") > 60


def test_it2acl_with_equal_gains_stays_spread_out():
    index = _index(n_clusters=5)
    cur = build_curriculum(IT2ACLConfig(signal="pg", phase2="none", clusters_per_batch=1), index, seed=1, total_steps=0)
    _run_it2acl(cur, index, 300, lambda s, c, b: 0.5)
    assert cur.bandit.probs().max() < 0.5


def test_phase2_bandit_starts_easy_and_moves_to_a_harder_band_that_pays_more():
    index = _index(n_clusters=1, per_cluster=60, levels=3)
    cur = build_curriculum(
        IT2ACLConfig(signal="pg", phase2="bandit", phase2_bands=3, clusters_per_batch=1), index, seed=0, total_steps=0
    )
    assert [len(b) for b in cur.bands["c0"]] == [20, 20, 20]
    assert set(index.difficulty[cur.bands["c0"][0]]) == {1.0} and set(index.difficulty[cur.bands["c0"][2]]) == {3.0}
    bands = []
    for step in range(300):
        plan = cur.plan(step)
        band = _drawn(plan)["c0"]
        bands.append(band)
        gain = 0.2 if step < 30 else (1.0 if band == 2 else 0.0)  # flat first, then the hardest band pays
        cur.observe(step, _stats(index, [8], [gain + 0.1 * np.sin(step)]))
    first = bands[:30]
    assert first.count(0) > first.count(1) > first.count(2)  # easy first, from the prior
    assert bands[-100:].count(2) > 60


def test_phase2_pacing_unlocks_bands_in_order():
    index = _index(n_clusters=2, per_cluster=90, levels=3)
    cfg = IT2ACLConfig(signal="pg", phase2="pacing", pacing_start=0.2, pacing="linear", clusters_per_batch=1)
    cur = build_curriculum(cfg, index, seed=0, total_steps=100)
    hardest = []
    for step in range(120):
        plan = cur.plan(step)
        hardest.append(max(int(n.split("@")[1]) for n in plan.weights))
        weights = [w for n, w in plan.weights.items()]
        assert sum(weights) == pytest.approx(1.0)  # one draw, split over the unlocked bands by size
        cur.observe(step, _stats(index, [8, 0], [0.1, np.nan]))
    assert hardest[0] == 0 and hardest[-1] == 2 and hardest == sorted(hardest)
    assert competence(0, 100, 0.2, "linear") == pytest.approx(0.2) and competence(100, 100, 0.2, "sqrt") == 1.0
    assert competence(25, 100, 0.2, "sqrt") > competence(25, 100, 0.2, "linear")  # sqrt unlocks sooner


def test_bands_come_from_quantiles_when_difficulty_is_continuous():
    index = DataIndex(["a"], np.zeros(100, dtype=int), np.linspace(0.0, 10.0, 100))
    cur = build_curriculum(IT2ACLConfig(signal="pg", phase2="bandit", phase2_bands=4), index, seed=0, total_steps=0)
    sizes = [len(b) for b in cur.bands["a"]]
    assert sizes == [25, 25, 25, 25]
    maxima = [index.difficulty[b].max() for b in cur.bands["a"]]
    assert maxima == sorted(maxima)


def test_missing_difficulty_is_a_clear_error_for_phase2():
    index = DataIndex(["a"], np.zeros(10, dtype=int), np.full(10, np.nan))
    with pytest.raises(ConfigError, match="cluster 'a' has 10 without"):
        build_curriculum(IT2ACLConfig(signal="pg", phase2="bandit"), index, seed=0, total_steps=0)
    build_curriculum(
        IT2ACLConfig(signal="pg", phase2="none", clusters_per_batch=1), index, seed=0, total_steps=0
    )  # fine without bands


def test_loss_signal_rewards_the_drop_since_the_pool_was_last_drawn():
    index = _index(n_clusters=2, levels=1)
    cur = build_curriculum(
        IT2ACLConfig(signal="loss", phase2="none", clusters_per_batch=1), index, seed=0, total_steps=0
    )
    seen = {}
    for step in range(6):
        (c,) = _drawn(cur.plan(step))
        i = index.clusters.index(c)
        loss = np.full(2, np.nan)
        loss[i] = 3.0 - 0.1 * step
        counts = np.where(np.arange(2) == i, 8.0, 0.0)
        m = cur.observe(step, _stats(index, counts, loss=np.nan_to_num(loss)))
        if c in seen:
            assert m[f"gain/{c}"] == pytest.approx(seen[c] - loss[i])
        else:
            assert f"gain/{c}" not in m  # the first visit has nothing to compare with
        seen[c] = loss[i]


def test_several_clusters_per_batch_split_the_batch_exactly_and_each_gain_goes_to_its_arm():
    index = _index(n_clusters=4, per_cluster=40)
    cur = build_curriculum(IT2ACLConfig(signal="pg", phase2="none", clusters_per_batch=4), index, seed=3, total_steps=0)
    pools = cur.pools()
    sampler = CurriculumSampler(pools, 16, seed=0)
    plan = cur.plan(0)
    assert plan.exact and sum(plan.weights.values()) == pytest.approx(4.0)
    counts = sampler.counts(0, plan)
    assert sum(counts.values()) == 16
    for pool, n in counts.items():
        assert n == pytest.approx(16 * plan.weights[pool] / 4)
    for step in range(200):
        plan = cur.plan(step)
        drawn = {n.split("@")[0] for n in plan.weights}
        gain = np.array([1.0 if c == "c1" else 0.0 for c in index.clusters])
        counts = np.array([8.0 if c in drawn else 0.0 for c in index.clusters])
        cur.observe(step, _stats(index, counts, np.where(counts > 0, gain, np.nan)))
    assert cur.bandit.probs().argmax() == 1


def test_it2acl_state_round_trip_continues_the_identical_decision_stream():
    index = _index(n_clusters=5, levels=3)
    cfg = IT2ACLConfig(signal="pg", phase2="bandit", clusters_per_batch=3)
    gain = lambda s, c, b: 0.1 * int(c[1:]) + 0.2 * b  # noqa: E731
    a = build_curriculum(cfg, index, seed=9, total_steps=0)
    _run_it2acl(a, index, 40, gain)
    state = json.loads(json.dumps(a.state_dict()))  # it goes through trainer_state.json
    b = build_curriculum(cfg, index, seed=9, total_steps=0)
    b.load_state_dict(state)
    ha = _run_it2acl(a, index, 40, gain, start=40, rng=np.random.default_rng(5))
    hb = _run_it2acl(b, index, 40, gain, start=40, rng=np.random.default_rng(5))
    assert [w for w, _ in ha] == [w for w, _ in hb]
    np.testing.assert_array_equal(ha[-1][1], hb[-1][1])
    with pytest.raises(ValueError, match="seed"):
        build_curriculum(cfg, index, seed=10, total_steps=0).load_state_dict(state)


def test_empty_cluster_is_excluded_with_a_warning():
    index = DataIndex(["a", "b", "empty"], np.array([0] * 5 + [1] * 5), np.ones(10))
    with pytest.warns(UserWarning, match="empty"):
        cur = build_curriculum(IT2ACLConfig(signal="pg"), index, seed=0, total_steps=0)
    assert cur.arms == ["a", "b"] and all(not n.startswith("empty") for n in cur.pools())


def test_odm_follows_the_paper_update_and_favours_the_high_loss_cluster():
    index = _index(n_clusters=4)
    cur = build_curriculum(ODMConfig(clusters_per_batch=1), index, seed=0, total_steps=0)
    np.testing.assert_allclose(cur.probs(0), 0.25)  # eps_1 = 1/K: uniform at the start
    (c,) = cur.plan(0).weights
    i = index.clusters.index(c)
    loss = np.array([1.0, 1.0, 1.0, 3.0])
    m = cur.observe(0, _stats(index, np.eye(4)[i] * 8, loss=loss))
    assert m[f"reward/{c}"] == pytest.approx(0.1 * loss[i] / 0.25)  # (1 - alpha) * L / pi
    for step in range(1, 400):
        (c,) = cur.plan(step).weights
        cur.observe(step, _stats(index, np.eye(4)[index.clusters.index(c)] * 8, loss=loss))
    assert cur.probs(400).argmax() == 3
    assert exploration_rate(1000, 4) == pytest.approx(np.sqrt(np.log(4) / 4000))
    assert cur.probs(400).min() >= exploration_rate(401, 4) - 1e-12


def test_mixture_weights_temperature_and_errors():
    index = DataIndex(["a", "b", "c"], np.array([0] * 10 + [1] * 90 + [2] * 0), np.ones(100))
    cur = build_curriculum(MixtureConfig(weights={"a": 3, "b": 1}), index, seed=0, total_steps=0)
    assert cur.plan(0).weights == {"a": 0.75, "b": 0.25} and not cur.plan(0).exact
    assert build_curriculum(MixtureConfig(), index, seed=0, total_steps=0).probs == {"a": 0.1, "b": 0.9}
    flat = build_curriculum(MixtureConfig(temperature=1000.0), index, seed=0, total_steps=0).probs
    assert flat["a"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConfigError, match=r"unknown clusters \['z'\]"):
        build_curriculum(MixtureConfig(weights={"z": 1}), index, seed=0, total_steps=0)
    with pytest.raises(ConfigError, match="curriculum.weights.a=-1"):
        MixtureConfig(weights={"a": -1}).validate()
    # Sampled shares follow the weights.
    sampler = CurriculumSampler(cur.pools(), 8, seed=0)  # a (10 samples) can fill its 75%
    share_a = np.mean([sampler.counts(s, cur.plan(s)).get("a", 0) / 8 for s in range(1000)])
    assert share_a == pytest.approx(0.75, abs=0.02)


def test_balanced_is_exactly_uniform_over_clusters_whatever_their_sizes():
    from ct_train.curriculum.mixture import BalancedConfig

    index = DataIndex(["a", "b", "c", "d"], np.array([0] * 50 + [1] * 500 + [2] * 95 + [3] * 0), np.ones(645))
    cur = build_curriculum(BalancedConfig(), index, seed=0, total_steps=0)
    assert cur.plan(0).weights == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}  # d has no sample
    assert set(cur.pools()) == {"a", "b", "c"} and not cur.plan(0).exact
    assert build_curriculum(BalancedConfig(exact=True), index, seed=0, total_steps=0).plan(0).exact
    sampler = CurriculumSampler(cur.pools(), 30, seed=0)
    share_b = np.mean([sampler.counts(s, cur.plan(s)).get("b", 0) / 30 for s in range(500)])
    assert share_b == pytest.approx(1 / 3, abs=0.02)  # IID would give b 500/645
    state = cur.state_dict()
    cur.load_state_dict(state)
    other = DataIndex(["a", "b"], np.array([0, 1]), np.ones(2))
    with pytest.raises(ValueError, match="mixture state"):
        build_curriculum(BalancedConfig(), other, seed=0, total_steps=0).load_state_dict(state)


def test_every_registered_strategy_has_a_yaml_and_a_schema():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "hydra_conf" / "curriculum"
    assert {p.stem for p in conf.glob("*.yaml")} == set(CURRICULA) >= {"iid", "mixture", "balanced", "odm", "it2acl"}
    for name in CURRICULA:
        assert f"- {name}_schema" in (conf / f"{name}.yaml").read_text()
