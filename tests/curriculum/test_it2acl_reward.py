"""IT2ACL's reward and bandit dynamics in a planted world (benchmarks/curriculum_micro.py: simulate): gains
that grow with a cluster's share of the batch, planted learnability, the held-out probe signal."""

import json

import numpy as np
import pytest

from benchmarks.curriculum_micro import simulate
from ct_train.config import probe_due
from ct_train.curriculum import ClusterStats, DataIndex, build_curriculum
from ct_train.curriculum.bandit import Exp3S
from ct_train.curriculum.it2acl import (
    ETA_HORIZON,
    LEGACY_ETA,
    NOISE_ETA_HORIZON,
    IT2ACLConfig,
    cap_shares,
    lp_slope,
    slope_t,
)
from ct_train.errors import ConfigError

N = 14
LEGACY = dict(eta=0.1, uniform_mix=0.0, reward_per_share=False, clusters_per_batch=8)  # the 2026-11 defaults
QUANTILE_LP = dict(reward_scale="quantile", lp_window=4, probe_backoff=1.0)  # the lp reward before 2026-12-04


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_identical_arms_stay_near_uniform_although_the_gain_grows_with_the_share(power):
    for seed in range(3):
        p = simulate(IT2ACLConfig(signal="pg", phase2="none"), np.ones(N), 300, seed, share_power=power)
        assert p.max() <= 1.5 / N and p.min() >= 1 / (1.5 * N), (seed, p * N)
    # The same world under the old reward: one arm takes the batch (the confound is real here).
    p = simulate(IT2ACLConfig(signal="pg", phase2="none", **LEGACY), np.ones(N), 300, 0, share_power=power)
    assert p.max() > 5 / N


@pytest.mark.parametrize("signal", ["pg", "loss"])
def test_a_planted_best_arm_gets_twice_uniform_and_arms_without_progress_end_below_it(signal):
    learn = np.ones(N)
    learn[0], learn[1], learn[2] = 3.0, 0.0, -1.0  # best; nothing to learn; held-out loss rises
    # Gain noise sd 0.1 per cluster and step (the planted gain at a uniform share is 0.07 x learnability).
    for seed in range(3):
        p = simulate(IT2ACLConfig(phase2="none", signal=signal), learn, 300, seed, noise=0.1)
        assert p[0] >= 2 / N and p[1] < 1 / N and p[2] < 1 / N, (seed, p * N)


def test_held_out_progress_favours_the_arm_still_learning_and_drops_the_unlearnable_ones():
    learn = np.ones(N)
    learn[0], learn[1], learn[2] = 3.0, 0.0, -1.0
    for seed in range(3):
        p = simulate(IT2ACLConfig(phase2="none", signal="lp", **QUANTILE_LP), learn, 300, seed)
        assert p[0] > p[3:].max() and p[1] < 1 / N and p[2] < 1 / N, (seed, p * N)
    for seed in range(2):
        p = simulate(IT2ACLConfig(phase2="none", signal="lp", **QUANTILE_LP), np.ones(N), 300, seed)
        assert p.max() <= 1.5 / N and p.min() >= 1 / (1.5 * N)


def _index(n=4, per=30):
    return DataIndex([f"c{i}" for i in range(n)], np.repeat(np.arange(n), per), np.ones(n * per))


def test_the_gain_is_divided_by_the_clusters_share_of_the_loss_denominator():
    index = _index(2)
    cur = build_curriculum(
        IT2ACLConfig(signal="pg", phase2="none", clusters_per_batch=64), index, seed=0, total_steps=100
    )
    cur.plan(0)
    share = np.array([0.25, 0.75])
    stats = ClusterStats(index.clusters, np.array([8.0, 24.0]), np.array([8.0, 24.0]), np.array([0.1, 0.3]), share)
    m = cur.observe(0, stats)
    assert m["gain/c0"] == pytest.approx(0.4) and m["gain/c1"] == pytest.approx(0.4)  # equal per unit share
    raw = build_curriculum(
        IT2ACLConfig(signal="pg", phase2="none", clusters_per_batch=64, reward_per_share=False),
        index,
        seed=0,
        total_steps=100,
    )
    raw.plan(0)
    assert raw.observe(0, stats)["gain/c1"] == pytest.approx(0.3)
    rel = build_curriculum(
        IT2ACLConfig(signal="pg", phase2="none", clusters_per_batch=64, reward_normalization="relative"), index, 0, 100
    )
    rel.plan(0)
    loss = np.array([2.0, 4.0])  # mean training loss per cluster: gain / share / loss
    m = rel.observe(0, ClusterStats(index.clusters, loss * [8, 24], np.array([8.0, 24.0]), np.array([0.1, 0.3]), share))
    assert (m["gain/c0"], m["gain/c1"]) == (pytest.approx(0.2), pytest.approx(0.1))


def test_every_cluster_in_the_batch_gives_a_full_information_update():
    index = _index(3)
    cur = build_curriculum(
        IT2ACLConfig(signal="pg", phase2="none", clusters_per_batch=300), index, seed=0, total_steps=200
    )
    ref = Exp3S(3, cur.eta, 0.05)
    for step in range(5):
        draws = cur.plan(step)
        assert len(draws.weights) == 3  # 300 draws: every arm is in the batch
        gain = np.array([0.3, 0.1, -0.2]) + 0.01 * step
        m = cur.observe(step, ClusterStats(index.clusters, np.full(3, 8.0), np.full(3, 8.0), gain, np.full(3, 1 / 3)))
        ref.update_full(np.array([m[f"reward/c{i}"] for i in range(3)]))  # no importance weight
    np.testing.assert_allclose(cur.bandit.w, ref.w, atol=1e-12)


def test_update_full_is_hedge_with_the_fixed_share():
    b = Exp3S(3, eta=0.5, eps=0.1)
    b.update_full(np.array([1.0, 0.0, -1.0]))  # t=1: alpha=1, each weight becomes the mean of the others
    v = np.array([0.5, 0.0, -0.5])
    e = np.exp(v)
    w = np.log([(e[1] + e[2]) / 2, (e[0] + e[2]) / 2, (e[0] + e[1]) / 2])
    np.testing.assert_allclose(b.w, w - w.max(), atol=1e-12)
    assert b.t == 1


def test_eta_defaults_from_the_run_length_and_an_explicit_value_wins():
    index = _index()
    assert build_curriculum(IT2ACLConfig(signal="pg"), index, 0, total_steps=400).eta == pytest.approx(
        ETA_HORIZON / 400
    )
    # per probe: 20 in the first 200 steps, then 10 at the default backoff's doubled period
    lp = IT2ACLConfig(signal="lp", probe_every_steps=10)  # reward_scale=auto: noise
    assert build_curriculum(lp, index, 0, total_steps=400).eta == pytest.approx(NOISE_ETA_HORIZON / 30)
    lp_quantile = IT2ACLConfig(signal="lp", probe_every_steps=10, reward_scale="quantile", probe_backoff=1.0)
    assert build_curriculum(lp_quantile, index, 0, total_steps=400).eta == pytest.approx(ETA_HORIZON / 40)
    assert build_curriculum(IT2ACLConfig(eta=0.3), index, 0, total_steps=400).eta == 0.3
    assert build_curriculum(IT2ACLConfig(signal="pg"), index, 0, total_steps=0).eta == LEGACY_ETA


def test_the_uniform_mix_keeps_a_floor_under_every_cluster():
    index = _index(5)
    cur = build_curriculum(IT2ACLConfig(phase2="none", uniform_mix=0.3, eps=0.0), index, 0, 100)
    cur.bandit.w = np.array([0.0, -50.0, -50.0, -50.0, -50.0])
    p = cur.policy()
    assert p.min() == pytest.approx(0.3 / 5) and p.sum() == pytest.approx(1.0)
    assert cur.plan(0).info["prob/c1"] == pytest.approx(0.3 / 5)


def test_the_share_cap_is_a_ceiling_and_keeps_the_ratios_of_the_rest():
    p = cap_shares(np.array([0.5, 0.2, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03]), 0.25)
    assert p.sum() == pytest.approx(1.0) and p.max() == pytest.approx(0.25)
    # 0.2 rose above the cap once 0.5's excess was shared out, so it is capped in the second round
    assert p[:2].tolist() == [0.25, 0.25]
    np.testing.assert_allclose(p[2:] / p[2], [1, 0.5, 0.5, 0.4, 0.3, 0.3])
    assert cap_shares(np.array([0.4, 0.3, 0.2, 0.1]), 0.25).tolist() == [0.25, 0.25, 0.25, 0.25]
    index = _index(5)
    cur = build_curriculum(IT2ACLConfig(phase2="none", uniform_mix=0.1, eps=0.0, share_cap=2.0), index, 0, 100)
    cur.bandit.w = np.array([0.0, -50.0, -50.0, -50.0, -50.0])
    assert cur.policy()[0] == pytest.approx(2.0 / 5) and cur.policy()[1:] == pytest.approx([0.15] * 4)
    with pytest.raises(ConfigError, match="share_cap"):
        IT2ACLConfig(share_cap=0.5).validate()


def test_lp_is_minus_the_probe_loss_slope_per_unit_share_and_signed():
    assert lp_slope(np.array([0.0, 10, 20]), np.array([[3.0, 1.0], [2.0, 1.5], [1.0, 2.0]])).tolist() == [-0.1, 0.05]
    index = _index(2)
    cfg = IT2ACLConfig(signal="lp", phase2="none", probe_every_steps=2, lp_window=3, reward_scale="quantile")
    cur = build_curriculum(cfg, index, 0, 100)
    share = np.array([0.5, 0.5])
    metrics = []
    for step in range(6):
        cur.plan(step)
        stats = ClusterStats(index.clusters, np.full(2, 16.0), np.full(2, 8.0), share=share)
        if (step + 1) % 2 == 0:
            stats.probe_loss = np.array([3.0 - 0.1 * step, 2.0 + 0.05 * step])  # c0 learns, c1 gets worse
        metrics.append(cur.observe(step, stats))
    assert "gain/c0" not in metrics[1]  # one probe: no slope yet
    assert metrics[5]["gain/c0"] == pytest.approx(0.1 / 0.5) and metrics[5]["gain/c1"] == pytest.approx(-0.05 / 0.5)
    assert metrics[5]["reward/c0"] > metrics[5]["reward/c1"]
    assert metrics[5]["probe/c0"] == pytest.approx(2.5)


def test_lp_state_round_trip_continues_the_identical_stream():
    index = _index(4)
    cfg = IT2ACLConfig(signal="lp", phase2="bandit", probe_every_steps=3)

    def drive(cur, start, steps):
        out = []
        for step in range(start, start + steps):
            plan = cur.plan(step)
            stats = ClusterStats(index.clusters, np.full(4, 16.0), np.full(4, 8.0), share=np.full(4, 0.25))
            if (step + 1) % 3 == 0:
                stats.probe_loss = 3.0 - np.array([0.01, 0.02, 0.0, -0.01]) * step + 0.01 * np.sin(step)
            cur.observe(step, stats)
            out.append(plan.weights)
        return out

    a = build_curriculum(cfg, index, seed=5, total_steps=60)
    drive(a, 0, 20)
    b = build_curriculum(cfg, index, seed=5, total_steps=60)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # through trainer_state.json
    assert drive(a, 20, 25) == drive(b, 20, 25)
    np.testing.assert_array_equal(a.policy(), b.policy())


def test_slope_t_judges_progress_against_the_probe_noise():
    steps = np.arange(6, dtype=np.float64) * 10
    rng = np.random.default_rng(0)
    wiggle = 0.05 * rng.normal(size=(6, 4))
    losses = np.stack([2.0 - 0.01 * steps, np.full(6, 2.3), 1.0 + 0.005 * steps, 0.010 - 4e-5 * steps], 1) + wiggle
    losses[:, 3] = 0.010 - 4e-5 * steps  # saturated: a steady drift of 0.002 nats, no noise
    t, var = slope_t(steps, losses, np.full(4, np.nan))
    assert t[0] > 5  # learning: 0.5 nats over the window against 0.05 noise
    assert abs(t[1]) < 2.5  # flat at its entropy: noise only
    assert t[2] < -2  # rising: fitting noise
    assert 0 < t[3] < 1  # the drift is below the NOISE_FLOOR, not "significant" progress
    assert var[3] == pytest.approx(0.0, abs=1e-12) and var[0] == pytest.approx(0.05**2, rel=0.8)
    # a known noise level replaces the window's own estimate
    t_known, _ = slope_t(steps, losses, np.full(4, 0.5**2))
    assert abs(t_known[0]) < abs(t[0]) / 4


def test_noise_scaled_rewards_cut_flat_and_rising_clusters_and_keep_the_learning_one():
    """reward_scale=noise on the planted held-out world: two unlearnable arms (flat and rising) end at
    the floor, the arms still learning keep more than uniform."""
    learn = np.ones(8)
    learn[6], learn[7] = 0.0, -1.0
    for seed in range(3):
        p = simulate(IT2ACLConfig(phase2="none", signal="lp", reward_scale="noise", eta=0.2), learn, 600, seed)
        assert p[6] + p[7] < 0.5 * 2 / 8 and p[:6].min() > p[6:].max(), (seed, p * 8)
    cfg = IT2ACLConfig(signal="lp", reward_scale="noise")
    index = _index(3)
    cur = build_curriculum(cfg, index, seed=0, total_steps=100)
    metrics = {}
    for step in range(40):
        cur.plan(step)
        stats = ClusterStats(index.clusters, np.full(3, 16.0), np.full(3, 8.0), share=np.full(3, 1 / 3))
        if (step + 1) % 10 == 0:
            stats.probe_loss = np.array([3.0 - 0.03 * step, 2.3 + 0.01 * np.sin(step), 2.0 + 0.01 * step])
        metrics = {**metrics, **cur.observe(step, stats)}
    assert metrics["reward/c0"] == 1.0 and metrics["reward/c2"] < 0 and abs(metrics["reward/c1"]) < 1
    state = json.loads(json.dumps(cur.state_dict()))
    again = build_curriculum(cfg, index, seed=0, total_steps=100)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.noise_var, cur.noise_var)


def test_a_two_probe_window_is_judged_by_the_noise_floor_alone():
    index = _index(2)
    cur = build_curriculum(IT2ACLConfig(signal="lp", lp_window=2, probe_every_steps=1), index, seed=0, total_steps=10)
    share = np.full(2, 0.5)
    for step, probe in enumerate([[2.0, 2.0], [1.9, 2.0]]):
        cur.plan(step)
        metrics = cur.observe(step, ClusterStats(index.clusters, np.full(2, 8.0), np.full(2, 4.0), share=share,
                                                 probe_loss=np.array(probe)))  # fmt: skip
    # 0.1 nats in one step against the 0.01 floor: full reward; flat: none
    assert metrics["reward/c0"] == 1.0 and metrics["reward/c1"] == 0.0


def test_noise_scaled_rewards_need_the_held_out_signal():
    from ct_train.errors import ConfigError

    with pytest.raises(ConfigError, match="curriculum.reward_scale=noise .* needs curriculum.signal=lp"):
        IT2ACLConfig(signal="pg", reward_scale="noise").validate()
    assert IT2ACLConfig(signal="pg").scale == "quantile" and IT2ACLConfig(signal="lp").scale == "noise"  # auto
    IT2ACLConfig(signal="pg").validate()  # auto never asks pg for the probe
    with pytest.raises(ConfigError, match="curriculum.reward_t_full=0"):
        IT2ACLConfig(reward_t_full=0).validate()


def test_lp_min_rate_takes_a_steady_drift_out_of_the_reward():
    """A distractor whose held-out loss drifts down steadily (its answers' marginal, 0.3% of its loss per
    100 steps, almost no noise) scores a large t; with lp_min_rate=2 (percent per 100 steps) that drift
    is no progress, while a cluster falling 10% per 100 steps keeps a clearly positive t."""
    steps = np.arange(10, dtype=np.float64) * 10
    drift = 2.65 * (1 - 0.003 * steps / 100)
    falling = 1.2 * (1 - 0.10 * steps / 100) + 0.02 * np.random.default_rng(1).normal(size=10)
    losses = np.stack([drift, falling], 1)
    t, _ = slope_t(steps, losses, np.full(2, np.nan))
    assert t[0] > 0.5 and t[1] > 5  # the floor (0.01 nats) lets the steady drift score
    min_fall = 2.0 / 100 * losses.mean(axis=0) / 100
    t_min, _ = slope_t(steps, losses, np.full(2, np.nan), min_fall)
    assert t_min[0] < 0 and t_min[1] > 3
    with pytest.raises(ConfigError, match="lp_min_rate=-1 must be >= 0"):
        IT2ACLConfig(lp_min_rate=-1).validate()


def test_probe_backoff_spaces_the_second_halfs_probes_and_eta_counts_the_probes_that_run():
    """probe_backoff=2 over 600 steps at every 10: steps 10..300, then 320..600 (45 probes, not 60),
    and the default eta spreads NOISE_ETA_HORIZON over the 45; backoff 1 is the fixed period."""
    due = [s for s in range(1, 601) if probe_due(s, 10, 2.0, 600)]
    assert due == list(range(10, 301, 10)) + list(range(320, 601, 20))
    assert [s for s in range(1, 601) if probe_due(s, 10, 1.0, 600)] == list(range(10, 601, 10))
    assert [s for s in range(1, 31) if probe_due(s, 10, 2.0, 0)] == [10, 20, 30]  # run length unknown
    cfg = IT2ACLConfig(signal="lp", probe_every_steps=10, probe_backoff=2.0)
    assert cfg.needs().probe_due(320, 600) and not cfg.needs().probe_due(310, 600)
    assert build_curriculum(cfg, _index(), 0, total_steps=600).eta == pytest.approx(NOISE_ETA_HORIZON / 45)
    with pytest.raises(ConfigError, match="probe_backoff=0.5 must be >= 1"):
        IT2ACLConfig(probe_backoff=0.5).validate()


def test_the_noise_floor_decides_whether_a_nearly_learned_clusters_last_fall_counts():
    """A cluster at 0.04 nats falling to 0.01 over the window, with almost no noise: significant
    progress at the 0.01-nat floor (t > 3), not at 0.05 (t < 1); a fall of 0.3 nats counts at both."""
    steps = np.arange(10, dtype=np.float64) * 10
    rng = np.random.default_rng(0)
    losses = np.stack([np.linspace(0.04, 0.01, 10), np.linspace(0.9, 0.6, 10)], 1) + 0.001 * rng.normal(size=(10, 2))
    t_low, _ = slope_t(steps, losses, np.full(2, np.nan), floor=0.01)
    t_high, _ = slope_t(steps, losses, np.full(2, np.nan), floor=0.05)
    assert t_low[0] > 3 and t_high[0] < 1
    assert t_high[1] > 3
    assert IT2ACLConfig().reward_noise_floor == 0.01
    for bad, match in (
        (dict(reward_noise_floor=0), "reward_noise_floor=0 must be > 0"),
        (dict(forget=1.0), "forget=1.0"),
    ):
        with pytest.raises(ConfigError, match=match):
            IT2ACLConfig(**bad).validate()


def test_a_fall_without_prompt_information_earns_nothing_and_a_rise_is_still_punished():
    """learnability_every_steps: c0 and c1 fall alike, but only c0's answers use the prompt (4 standard
    errors of information); c1 (an unlearnable cluster learning its answers' marginal) gets no positive
    reward; c2 rises and is punished whatever its information; c3 at 1 se gets half the reward."""
    index = _index(4)
    cfg = IT2ACLConfig(signal="lp", learnability_every_steps=20, learnability_z=2.0, probe_every_steps=10)
    cfg.validate()
    assert cfg.needs().probe_twin_every_steps == 20
    off = IT2ACLConfig(signal="lp", probe_every_steps=10, learnability_every_steps=0)
    runs = {}
    for name, c in (("on", cfg), ("off", off)):
        cur = build_curriculum(c, index, seed=0, total_steps=100)
        for step in range(60):
            cur.plan(step)
            stats = ClusterStats(index.clusters, np.full(4, 16.0), np.full(4, 8.0), share=np.full(4, 0.25))
            if (step + 1) % 10 == 0:
                stats.probe_loss = np.array(
                    [3.0 - 0.03 * step, 3.0 - 0.03 * step, 2.0 + 0.03 * step, 3.0 - 0.03 * step]
                )
            if (step + 1) % 20 == 0:  # the trainer sends the twins' information only when they were scored
                stats.probe_info, stats.probe_info_se = np.array([0.4, 0.0, 0.4, 0.1]), np.array([0.1, 0.05, 0.1, 0.1])
            metrics = cur.observe(step, stats)
        runs[name] = (metrics, cur)
    on, off_metrics = runs["on"][0], runs["off"][0]
    assert off_metrics["reward/c0"] == off_metrics["reward/c1"] == off_metrics["reward/c3"] == 1.0
    assert on["reward/c0"] == 1.0 and on["reward/c1"] == 0.0 and on["reward/c3"] == 0.5
    assert on["reward/c2"] == off_metrics["reward/c2"] == -1.0
    assert on["info/c0"] == 0.4 and on["info_se/c1"] == 0.05
    probs = runs["on"][1].bandit.probs()
    assert probs[0] > probs[3] > probs[1]
    state = json.loads(json.dumps(runs["on"][1].state_dict()))
    again = build_curriculum(cfg, index, seed=0, total_steps=100)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.info_t, runs["on"][1].info_t)
    # the other signals have no probe: no twins are asked for
    assert IT2ACLConfig(signal="pg", learnability_every_steps=30).needs().probe_twin_every_steps == 0
    with pytest.raises(ConfigError, match="curriculum.learnability_every_steps=-1 must be >= 0"):
        IT2ACLConfig(learnability_every_steps=-1).validate()


def test_a_forget_share_below_one_over_the_updates_is_named_as_changing_nothing():
    """Exp3.S forgets at max(forget, 1/t): with 45 probe updates (600 steps) forget=0.02 is a no-op
    (docs/results.md, 2026-12-05), 0.05 is not."""
    index = _index(3)
    with pytest.warns(UserWarning, match=r"curriculum.forget=0.02 changes nothing .* 1/t >= 1/45 .* above 0.0222"):
        build_curriculum(IT2ACLConfig(signal="lp", forget=0.02), index, seed=0, total_steps=600)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_curriculum(IT2ACLConfig(signal="lp", forget=0.05), index, seed=0, total_steps=600)
        build_curriculum(IT2ACLConfig(signal="lp"), index, seed=0, total_steps=600)
