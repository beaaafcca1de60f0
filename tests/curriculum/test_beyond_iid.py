"""Beyond IID: the LP mix on hand-solvable instances, infeasible settings, the dependency taxonomy
on synthetic matrices with a known chain, and the curriculum's pools, stages and plans."""

import json

import numpy as np
import pytest

from ct_train.curriculum import DataIndex
from ct_train.curriculum import build_curriculum as _build_curriculum
from ct_train.curriculum.beyond_iid import BeyondIIDConfig
from ct_train.curriculum.lp_mix import solve_mix
from ct_train.curriculum.taxonomy import check_prerequisites, derive_prerequisites, layers
from ct_train.errors import ConfigError
from ct_train.io import read_inputs
from ct_train.sampler import CurriculumSampler

CATS = ["a", "b", "c"]


def test_lp_fills_the_budget_with_the_most_beneficial_categories():
    sol = solve_mix(np.array([3.0, 2.0, 1.0]), np.array([10, 10, 10]), CATS, budget=15)
    assert sol.counts.tolist() == [10, 5, 0]
    assert sol.objective == pytest.approx(40.0)


def test_lp_share_bound_caps_the_best_category():
    # n_a <= 0.4 (n_a + n_b + n_c) with a budget of 15: a gets 6, b the other 9 (objective 36).
    shares = np.array([[0.0, 0.4], [0.0, 1.0], [0.0, 1.0]])
    sol = solve_mix(np.array([3.0, 2.0, 1.0]), np.array([10, 10, 10]), CATS, budget=15, share_bounds=shares)
    assert sol.counts.tolist() == [6, 9, 0]
    assert sol.objective == pytest.approx(36.0)


def test_lp_minimum_and_lower_share_are_met():
    sol = solve_mix(np.array([3.0, 2.0, 1.0]), np.array([10, 10, 10]), CATS, budget=15, min_samples=np.array([0, 0, 4]))
    assert sol.counts.tolist() == [10, 1, 4]
    shares = np.array([[0.0, 1.0], [0.0, 1.0], [0.2, 1.0]])  # c >= 20% of 15 = 3
    sol = solve_mix(np.array([3.0, 2.0, 1.0]), np.array([10, 10, 10]), CATS, budget=15, share_bounds=shares)
    assert sol.counts.tolist() == [10, 2, 3]


def test_lp_without_budget_keeps_every_helpful_sample_and_none_of_a_harmful_one():
    sol = solve_mix(np.array([1.0, -0.5, 0.2]), np.array([5, 7, 3]), CATS)
    assert sol.counts.tolist() == [5, 0, 3]


def test_lp_rounds_down_fractional_solutions():
    # a <= 1/3 of the total with budget 10: the LP gives a = 3.33, b = 6.67; kept counts are floors.
    shares = np.array([[0.0, 1 / 3], [0.0, 1.0]])
    sol = solve_mix(np.array([2.0, 1.0]), np.array([10, 10]), ["a", "b"], budget=10, share_bounds=shares)
    assert sol.exact == pytest.approx([10 / 3, 20 / 3])
    assert sol.counts.tolist() == [3, 6]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(min_samples=np.array([0, 11, 0])), "curriculum.min_samples.b=11 exceeds the 10 training samples of b"),
        (
            dict(budget=5, min_samples=np.array([3, 3, 0])),
            "min_samples add up to 6 samples, more than curriculum.budget=5",
        ),
        (dict(share_bounds=np.array([[0.6, 1.0], [0.5, 1.0], [0.0, 1.0]])), "lower bounds add up to 1.1 > 1"),
        (dict(share_bounds=np.array([[0.5, 0.2], [0.0, 1.0], [0.0, 1.0]])), "curriculum.share_bounds.a=[0.5, 0.2]"),
    ],
)
def test_lp_infeasible_settings_name_the_constraint(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        solve_mix(np.array([1.0, 1.0, 1.0]), np.array([10, 10, 10]), CATS, **kwargs)


def test_lp_jointly_infeasible_constraints_say_which_group_to_drop():
    # a must be at least half of the kept set, but only 2 samples of a exist while b needs 10.
    shares = np.array([[0.5, 1.0], [0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ConfigError, match="dropping curriculum.share_bounds or curriculum.min_samples"):
        solve_mix(np.ones(3), np.array([2, 10, 10]), CATS, min_samples=np.array([0, 10, 0]), share_bounds=shares)


def test_lp_that_keeps_nothing_is_an_error():
    with pytest.raises(ConfigError, match="keeps no sample"):
        solve_mix(np.array([-1.0, -2.0, -0.1]), np.array([10, 10, 10]), CATS)


def chain_benefit(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """a -> b -> c planted (a helps b, b helps c, one way), d unrelated; plus small symmetric noise."""
    rng = np.random.default_rng(seed)
    b = noise * rng.standard_normal((4, 4))
    b = (b + b.T) / 2
    np.fill_diagonal(b, 1.0)
    b[1, 0], b[0, 1] = 0.5, 0.05  # B[j][k]: training k helps j
    b[2, 1], b[1, 2] = 0.4, 0.0
    return b


def test_derived_taxonomy_recovers_a_planted_chain_and_stages_it():
    cats = ["a", "b", "c", "d"]
    prereq, kept, dropped = derive_prerequisites(chain_benefit(noise=0.02), cats, threshold=0.2)
    assert prereq == {"a": [], "b": ["a"], "c": ["b"], "d": []}
    assert [(p, d) for p, d, _ in kept] == [("a", "b"), ("b", "c")] and dropped == []
    assert layers(prereq, cats) == [["a", "d"], ["b"], ["c"]]


def test_threshold_removes_weak_edges():
    cats = ["a", "b", "c", "d"]
    prereq, kept, _ = derive_prerequisites(
        chain_benefit(), cats, threshold=0.85
    )  # a->b: margin 0.45 > 0.85 x 0.5; b->c: 0.4 not
    assert [(p, d) for p, d, _ in kept] == [("a", "b")]
    assert layers(prereq, cats) == [["a", "c", "d"], ["b"]]


def test_cycles_are_broken_by_dropping_the_weakest_edge():
    cats = ["a", "b", "c"]
    b = np.eye(3)
    b[1, 0], b[2, 1], b[0, 2] = 0.5, 0.4, 0.3  # a -> b -> c -> a
    prereq, kept, dropped = derive_prerequisites(b, cats, threshold=0.1)
    assert [(p, d) for p, d, _ in dropped] == [("c", "a")]
    assert layers(prereq, cats) == [["a"], ["b"], ["c"]]


def test_configured_taxonomy_errors_name_the_unknown_category_or_the_cycle():
    with pytest.raises(ConfigError, match="unknown category 'x'"):
        check_prerequisites({"b": ["x"]}, CATS, "curriculum.prerequisites")
    with pytest.raises(
        ConfigError, match="curriculum.prerequisites has a cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"
    ):
        check_prerequisites({"b": ["a"], "c": ["b"], "a": ["c"]}, CATS, "curriculum.prerequisites")


def write_matrix(tmp_path, cats, benefit):
    path = tmp_path / "interaction.json"
    path.write_text(json.dumps({"categories": cats, "probe": {"effect": (-benefit).tolist()}}))
    return str(path)


def build_curriculum(cfg, index, **kw):
    """As the trainer does: the matrix file the config names is read by the caller and passed in."""
    return _build_curriculum(cfg, index, inputs=read_inputs(cfg.needs().inputs), **kw)


def make_index(sizes, difficulty=None):
    cats = ["a", "b", "c", "d"]
    ids = np.repeat(np.arange(4), sizes)
    d = np.arange(len(ids), dtype=np.float64) if difficulty is None else difficulty
    return DataIndex(cats, ids, d)


def build(tmp_path, index, total_steps=40, **kw):
    cfg = BeyondIIDConfig(interaction_file=write_matrix(tmp_path, index.clusters, chain_benefit()), **kw)
    cfg.validate()
    return build_curriculum(cfg, index, seed=3, total_steps=total_steps, global_batch_size=8)


def test_curriculum_keeps_the_lp_counts_and_stages_prerequisites_first(tmp_path):
    index = make_index([30, 30, 30, 30])
    # benefits per sample (w = 1): a 1.05+... computed by the LP; the budget binds.
    cur = build(tmp_path, index, budget=70, share_bounds={"a": [0.0, 0.5]}, selection="hardest", replay=0.25)
    b = chain_benefit()
    per_sample = b.sum(axis=0)  # column sums: a 1.55, b 1.4, c 1.0, d 1.0
    assert per_sample[0] > per_sample[1] > per_sample[2] == per_sample[3]
    # a is capped at half of 70 = 35 > 30 available: a 30, b 30, then 10 of c or d (tie) -> one of them.
    assert cur.counts["a"] == 30 and cur.counts["b"] == 30 and cur.counts["c"] + cur.counts["d"] == 10
    pools = cur.pools()
    assert {k: len(v) for k, v in pools.items()} == {c: n for c, n in cur.counts.items() if n > 0}
    if cur.counts["c"]:
        # hardest = the largest difficulty (here the sample index) of c
        assert pools["c"].tolist() == list(range(90 - cur.counts["c"], 90))
    stage_cats = cur.stage_categories
    assert stage_cats[0][0] == "a" and ["b"] in stage_cats and stage_cats.index(["b"]) == 1
    # stage lengths split 40 steps by each stage's new samples; the plan replays earlier stages at 25%
    assert cur.stages[-1].end == 40
    second = cur.plan(cur.stages[1].start)
    assert second.exact and second.info == {"stage": 2}
    assert second.weights["b"] == pytest.approx(0.75)
    assert sum(v for c, v in second.weights.items() if c != "b") == pytest.approx(0.25)
    sampler = CurriculumSampler(pools, 8, seed=1)
    batch = sampler.global_batch(cur.stages[1].start, second)
    assert np.isin(batch, pools["b"]).sum() == 6  # 0.75 x 8, exact


def test_curriculum_without_matrix_needs_mix_all_and_a_taxonomy(tmp_path):
    with pytest.raises(ConfigError, match="needs curriculum.interaction_file"):
        BeyondIIDConfig().validate()
    cfg = BeyondIIDConfig(mix="all", prerequisites={"c": ["a", "b"]})
    cfg.validate()
    cur = build_curriculum(cfg, make_index([5, 6, 7, 8]), seed=0, total_steps=10, global_batch_size=4)
    assert cur.counts == {"a": 5, "b": 6, "c": 7, "d": 8}
    assert cur.stage_categories == [["a", "b", "d"], ["c"]]


def test_matrix_from_other_data_is_refused(tmp_path):
    path = tmp_path / "interaction.json"
    path.write_text(json.dumps({"categories": ["a", "b"], "probe": {"effect": [[0, 0], [0, 0]]}}))
    cfg = BeyondIIDConfig(interaction_file=str(path))
    with pytest.raises(ConfigError, match=r"has no entry for categories \['c', 'd'\]"):
        build_curriculum(cfg, make_index([5, 5, 5, 5]), seed=0, total_steps=10, global_batch_size=4)
    cfg = BeyondIIDConfig(interaction_file=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="missing.json: no such file"):
        cfg.validate()


def test_default_share_bounds_keep_every_category_in_the_mix(tmp_path):
    index = make_index([30, 30, 30, 30])
    benefit = chain_benefit()
    benefit[:, 3] = -1.0  # d hurts everything: without bounds the LP drops it
    path = write_matrix(tmp_path, index.clusters, benefit)
    free = build_curriculum(BeyondIIDConfig(interaction_file=path), index, seed=0, total_steps=10, global_batch_size=4)
    assert free.counts["d"] == 0
    cfg = BeyondIIDConfig(interaction_file=path, default_share_bounds=[0.1, 0.4])
    bounded = build_curriculum(cfg, index, seed=0, total_steps=10, global_batch_size=4)
    total = sum(bounded.counts.values())
    assert bounded.counts["d"] >= int(0.1 * total) and max(bounded.counts.values()) <= 0.4 * total + 1
