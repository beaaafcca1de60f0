"""Phased IFT and TAPIR as pure state machines: stratification, stage lengths, the random control,
rounds' hard sets, alpha and task ratios; and the per-stage LR schedule."""

import numpy as np
import pytest

from ct_train.config import TrainerConfig
from ct_train.curriculum import DataIndex, build_curriculum
from ct_train.curriculum.base import stage_at, stratify
from ct_train.curriculum.phased import PhasedConfig
from ct_train.curriculum.tapir import TapirConfig, TapirRound
from ct_train.engine import lr_lambda
from ct_train.errors import ConfigError
from ct_train.sampler import CurriculumSampler


def _index(difficulty, clusters=2, parts=None):
    d = np.asarray(difficulty, dtype=np.float64)
    ids = np.arange(len(d)) % clusters
    if parts is None:
        return DataIndex([f"c{i}" for i in range(clusters)], ids, d)
    names = sorted(set(parts))
    return DataIndex([f"c{i}" for i in range(clusters)], ids, d, np.array([names.index(p) for p in parts]), names)


def test_thresholds_put_ties_in_the_lower_phase():
    d = np.array([1.0, 1.5, 2.0, 3.5, 3.6, 5.0])
    assert stratify(d, [1.5, 3.5]).tolist() == [0, 0, 1, 1, 2, 2]


def test_phases_by_value_thresholds_on_the_papers_scale():
    d = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 4, 5], dtype=float)
    cur = build_curriculum(PhasedConfig(thresholds=[1.5, 3.5]), _index(d), seed=0, total_steps=12)
    sizes = {k: len(v) for k, v in cur.pools().items()}
    assert sizes == {"phase1": 2, "phase2": 4, "phase3": 6}
    assert set(d[cur.pools()["phase1"]]) == {1.0} and set(d[cur.pools()["phase3"]]) == {4.0, 5.0}
    # max_steps split in proportion to the sizes: 2 : 4 : 6 of 12 steps
    assert [(s.start, s.end) for s in cur.stages] == [(0, 2), (2, 6), (6, 12)]
    assert [cur.plan(s).weights for s in (0, 1, 2, 11)] == [{"phase1": 1.0}] * 2 + [{"phase2": 1.0}, {"phase3": 1.0}]
    assert cur.plan(6).info == {"phase": 3}


def test_quantile_cuts_never_split_a_tie():
    d = np.array([4.25] * 7 + [3.5, 3.5, 5.0, 5.0, 4.5])  # heavy ties, as in the GPT-4 scores
    cur = build_curriculum(PhasedConfig(phases=2), _index(d), seed=0, total_steps=10)
    pools = cur.pools()
    assert set(d[pools["phase1"]]) == {3.5, 4.25} and set(d[pools["phase2"]]) == {4.5, 5.0}  # all 4.25s together


def test_an_empty_phase_is_an_error_before_training(shared_data):
    """The shared file is the paper's hardest stage (scores 3.5-5): the paper's cuts leave phases 1 and 2 empty."""
    from ct_train.data.loading import FileSpec, load_examples

    examples, _ = load_examples(
        [FileSpec(str(shared_data / "alpaca52k-gpt4-scored-stage3.jsonl"))], "auto", None, None, "skip"
    )
    d = np.asarray(examples["difficulty"], dtype=np.float64)
    assert np.isfinite(d).all() and d.min() >= 3.5
    with pytest.raises(ConfigError, match=r"phase 1 of 3 \(difficulty <= 1.5\) has no training sample"):
        build_curriculum(PhasedConfig(thresholds=[1.5, 3.5]), _index(d), seed=0, total_steps=30)
    cur = build_curriculum(PhasedConfig(), _index(d), seed=0, total_steps=30)  # equal-count quantiles work
    sizes = [len(p) for p in cur.pools().values()]
    assert sum(sizes) == len(d) and min(sizes) > len(d) / 6


def test_random_order_keeps_the_phase_sizes_with_random_difficulty():
    d = np.repeat([1.0, 2.0, 3.0], [50, 100, 150])
    by_difficulty = build_curriculum(PhasedConfig(thresholds=[1.5, 2.5]), _index(d), seed=3, total_steps=30)
    control = build_curriculum(PhasedConfig(thresholds=[1.5, 2.5], order="random"), _index(d), seed=3, total_steps=30)
    sizes = {k: len(v) for k, v in by_difficulty.pools().items()}
    assert {k: len(v) for k, v in control.pools().items()} == sizes == {"phase1": 50, "phase2": 100, "phase3": 150}
    assert [s.end for s in control.stages] == [s.end for s in by_difficulty.stages]
    members = np.concatenate(list(control.pools().values()))
    assert sorted(members.tolist()) == list(range(300))  # a partition: every sample in exactly one phase
    means = [d[p].mean() for p in control.pools().values()]
    assert all(abs(m - d.mean()) < 0.35 for m in means)  # each phase mixes the difficulties
    assert set(d[control.pools()["phase1"]]) == {1.0, 2.0, 3.0}
    again = build_curriculum(PhasedConfig(thresholds=[1.5, 2.5], order="random"), _index(d), seed=3, total_steps=30)
    assert all(np.array_equal(again.pools()[k], control.pools()[k]) for k in sizes)
    reverse = build_curriculum(PhasedConfig(thresholds=[1.5, 2.5], order="reverse"), _index(d), seed=3, total_steps=30)
    assert set(d[reverse.pools()["phase1"]]) == {3.0} and set(d[reverse.pools()["phase3"]]) == {1.0}


def test_phase_lengths_from_steps_or_epochs_and_their_checks():
    d = np.repeat([1.0, 2.0], [40, 80])
    cfg = PhasedConfig(phases=2, thresholds=[1.5], phase_epochs=[2, 1])
    cur = build_curriculum(cfg, _index(d), seed=0, total_steps=-1, global_batch_size=16)
    assert [(s.start, s.end) for s in cur.stages] == [(0, 5), (5, 10)]  # ceil(2*40/16), ceil(80/16)
    with pytest.raises(ConfigError, match=r"add up to 10 steps but trainer.max_steps=12; set trainer.max_steps=10"):
        build_curriculum(cfg, _index(d), seed=0, total_steps=12, global_batch_size=16)
    steps = PhasedConfig(phases=2, thresholds=[1.5], phase_steps=[3, 7])
    assert [s.end for s in build_curriculum(steps, _index(d), seed=0, total_steps=10).stages] == [3, 10]
    with pytest.raises(ConfigError, match="must give 2 numbers > 0"):
        build_curriculum(PhasedConfig(phases=2, thresholds=[1.5], phase_steps=[10]), _index(d), seed=0, total_steps=10)
    assert stage_at(cur.stages, 4) == 0 and stage_at(cur.stages, 5) == 1 and stage_at(cur.stages, 99) == 1


def test_lr_rewarms_at_every_stage_start_or_runs_one_schedule():
    tr = TrainerConfig(lr_schedule="cosine", warmup_steps=0, warmup_ratio=0.25, min_lr_ratio=0.0)
    rewarm = lr_lambda(tr, 20, restarts=[8, 12])  # stages of 8, 4 and 8 steps
    assert [round(rewarm(s), 3) for s in (0, 1, 2, 8, 9, 12, 13)] == [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0]
    assert rewarm(7) < 0.1 and rewarm(11) < 0.5 and rewarm(19) < 0.1  # each stage decays to its own end
    one = lr_lambda(tr, 20)
    assert [round(one(s), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]  # 25% of 20 steps of warmup
    assert one(8) > 0.7 and one(12) > one(13) > one(19)


def _tapir(d, clusters=2, parts=None, **kw):
    cfg = TapirConfig(**kw)
    return build_curriculum(cfg, _index(d, clusters, parts), seed=0, total_steps=len(cfg.rounds) * 10)


def test_tapir_rounds_split_hard_and_easy_by_delta_with_a_rising_alpha():
    d = np.tile([0.0, 1.0, 2.0, 3.0], 10)  # clusters alternate: c0 gets 0 and 2, c1 gets 1 and 3
    cur = _tapir(d, delta=1.5)
    assert [(s.start, s.end) for s in cur.stages] == [(0, 10), (10, 20), (20, 30)]
    assert cur.stage_candidates(0) is None  # auto: the data has a difficulty for every sample
    info = cur.begin_stage(0)
    assert (info["hard"], info["easy"], info["alpha"]) == (20, 20, pytest.approx(0.3))
    pools = cur.pools()
    assert set(d[pools["r1/c0/hard"]]) == {2.0} and set(d[pools["r1/c1/easy"]]) == {1.0}
    plan = cur.plan(3)
    assert sum(w for p, w in plan.weights.items() if p.endswith("hard")) == pytest.approx(0.3)
    assert plan.info["round"] == 1
    with pytest.raises(RuntimeError, match="round 2"):
        cur.plan(10)  # the trainer must build round 2 first
    cur.begin_stage(2)
    assert cur.plan(25).info["alpha"] == pytest.approx(0.7) and cur.plan(25).info["hard_share"] == pytest.approx(0.7)


def test_tapir_task_weights_set_each_clusters_share_and_the_sampler_follows():
    d = np.tile([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 50)  # 3 clusters x 100
    cur = _tapir(d, clusters=3, task_weights={"c0": 2.0}, hard_quantile=0.5)
    cur.begin_stage(1)  # alpha 0.5
    share = {}
    for p, w in cur.plan(15).weights.items():
        share[p.split("/")[1]] = share.get(p.split("/")[1], 0.0) + w
    assert share == pytest.approx({"c0": 0.5, "c1": 0.25, "c2": 0.25})
    sampler = CurriculumSampler(cur.pools(), 40, seed=1)
    counts = np.zeros(3)
    hard = 0
    for step in range(10, 20):
        batch = sampler.global_batch(step, cur.plan(step))
        counts += np.bincount(np.arange(len(d))[batch] % 3, minlength=3)
        hard += int((d[batch] > np.quantile(d, 0.5)).sum())
    assert counts / counts.sum() == pytest.approx([0.5, 0.25, 0.25], abs=0.06)
    assert hard / 400 == pytest.approx(0.5, abs=0.08)


def test_tapir_with_a_cluster_lacking_hard_samples_gives_its_share_to_easy():
    d = np.tile([0.0, 5.0, 0.0, 6.0], 10)  # c0 only 0s: no hard sample above delta 1
    cur = _tapir(d, delta=1.0)
    cur.begin_stage(0)
    assert "r1/c0/hard" not in cur.pools() and cur.plan(0).weights["r1/c0/easy"] == pytest.approx(0.5)


def test_tapir_scores_each_round_with_the_model_when_the_data_has_none():
    d = np.full(40, np.nan)
    cur = _tapir(d, difficulty="auto")
    idx = cur.stage_candidates(1)
    assert idx.tolist() == list(range(40))
    scores = np.linspace(0, 1, 40)
    info = cur.begin_stage(1, scores)
    assert info["scored_by"] == "loss" and info["hard"] == 20  # above the median
    with pytest.raises(ConfigError, match="samples of round 1 have no difficulty"):
        _tapir(d, difficulty="data").stage_candidates(0)


def test_tapir_rounds_with_their_own_data_draw_only_from_it():
    parts = [""] * 20 + ["round2"] * 10
    d = np.arange(30, dtype=float)
    cur = _tapir(d, parts=parts, rounds=[TapirRound(), TapirRound(data="r2.jsonl")], delta=100.0)
    cur.begin_stage(0)
    assert sorted(np.concatenate(list(cur.pools().values())).tolist()) == list(range(20))
    cur.begin_stage(1)
    assert sorted(np.concatenate(list(cur.pools().values())).tolist()) == list(range(20, 30))
    with pytest.raises(ConfigError, match="round 2 has no training sample"):
        _tapir(d, rounds=[TapirRound(), TapirRound(data="r2.jsonl")])  # no sample tagged round2


def test_phased_replay_mixes_earlier_phases_by_size_and_is_off_by_default():
    d = np.repeat([1.0, 2.0, 3.0], [40, 20, 20])
    index = _index(d)
    plain = build_curriculum(PhasedConfig(thresholds=[1.5, 2.5]), index, seed=0, total_steps=30)
    assert plain.plan(29).weights == {"phase3": 1.0}
    cur = build_curriculum(PhasedConfig(thresholds=[1.5, 2.5], replay=0.3), index, seed=0, total_steps=30)
    assert cur.plan(0).weights == {"phase1": 1.0}  # nothing earlier to replay
    assert cur.plan(cur.stages[1].start).weights == pytest.approx({"phase1": 0.3, "phase2": 0.7})
    # phase 3 replays phases 1 and 2 by their sizes (40 : 20): every earlier sample alike.
    assert cur.plan(29).weights == pytest.approx({"phase1": 0.2, "phase2": 0.1, "phase3": 0.7})
    counts = CurriculumSampler(cur.pools(), 1000, seed=0).counts(29, cur.plan(29))
    assert counts["phase3"] == pytest.approx(700, abs=60) and counts["phase1"] > counts["phase2"]
    with pytest.raises(ConfigError, match=r"curriculum.replay=1.0 must be in \[0, 1\)"):
        PhasedConfig(replay=1.0).validate()


def test_default_cuts_on_discrete_levels_give_one_phase_a_level():
    """Levels 1-3 in 3 phases (the README's ct-train-sample walk-through): the quantiles 1/3 and 2/3
    land on the values 2 and 3 and the third phase was empty, an error (issue 34)."""
    d = np.repeat([1.0, 2.0, 3.0], [197, 197, 196])
    cur = build_curriculum(PhasedConfig(), _index(d), seed=0, total_steps=30)
    assert [sorted(set(d[p])) for p in cur.pools().values()] == [[1.0], [2.0], [3.0]]
    skewed = np.repeat([1.0, 2.0, 3.0, 4.0], [10, 10, 10, 70])  # 3 phases: the 4s stay together
    pools = build_curriculum(PhasedConfig(), _index(skewed), seed=0, total_steps=30).pools()
    assert [sorted(set(skewed[p])) for p in pools.values()] == [[1.0, 2.0], [3.0], [4.0]]
    continuous = np.random.default_rng(0).normal(size=300)
    sizes = [
        len(p) for p in build_curriculum(PhasedConfig(), _index(continuous), seed=0, total_steps=30).pools().values()
    ]
    assert sizes == [100, 100, 100]
    with pytest.raises(ConfigError, match="phase 3 of 3"):  # two values cannot fill three phases
        build_curriculum(PhasedConfig(), _index(np.repeat([1.0, 2.0], 50)), seed=0, total_steps=30)
