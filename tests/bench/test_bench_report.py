"""The benchmark's arithmetic: steps to a target loss, per-cluster metrics of split runs, distractor
shares, the winner line, the targets, and which overrides a bench passes to its runs."""

import json
import math

import numpy as np
import pytest

from ct_train.bench import quick_overrides, report, user_overrides
from ct_train.bench.strategies import registered
from ct_train.bench.targets import paired_lines, pilot_gate, targets
from ct_train.config import Config
from ct_train.curriculum import CURRICULA


def test_every_curriculum_is_a_strategy_iid_first_and_beyond_iid_prepares():
    s = registered()
    assert list(s)[0] == "iid" and set(s) == set(CURRICULA)
    assert s["it2acl"].overrides == ("curriculum=it2acl",) and s["it2acl"].prepare is None
    assert s["beyond_iid"].prepare is not None


def test_steps_to_interpolates_between_evaluations():
    evals = [(0, 0, {"eval/loss": 5.0}), (10, 100, {"eval/loss": 3.0}), (20, 200, {"eval/loss": 2.0})]
    assert report.steps_to(evals, 2.5) == pytest.approx(15.0)
    assert report.steps_to(evals, 3.0) == pytest.approx(10.0)
    assert report.steps_to(evals, 5.5) == 0.0
    assert report.steps_to(evals, 1.9) is None


def test_cluster_metrics_reads_cells_and_split_runs_alike():
    plain = {
        "eval/add/loss": 2.0,
        "eval/add/L1/loss": 1.0,
        "eval/add/L2/loss": 3.0,
        "eval/add/exact_match": 0.5,
        "eval/add/L1/exact_match": 1.0,
        "eval/add/L2/exact_match": 0.0,
        "eval/loss": 2.0,
    }
    split = {
        "eval/add/L1/loss": 1.0,
        "eval/add/L2/loss": 3.0,
        "eval/add/L1/exact_match": 1.0,
        "eval/add/L2/exact_match": 0.0,
    }
    a, b = report.cluster_metrics(plain), report.cluster_metrics(split)
    assert a["loss"] == b["loss"] == {"add": 2.0, "add/L1": 1.0, "add/L2": 3.0}
    assert a["exact_match"]["add"] == b["exact_match"]["add"] == 0.5
    assert report.base_cluster("lookup_max/L3") == "lookup_max" and report.base_cluster("add") == "add"


def test_quarter_shares_count_samples_per_quarter():
    samples = {s: {"noise": 2 if s <= 2 else 0, "add": 2} for s in range(1, 9)}
    assert report.quarter_shares(samples, 8, "noise") == [0.5, 0.0, 0.0, 0.0]


def _write_run(path, losses, em, noise_per_step, steps=8):
    path.mkdir(parents=True)
    rows = []
    for s in range(1, steps + 1):
        rows.append(
            {
                "step": s,
                "loss": 1.0,
                "tokens": 100 * s,
                "tokens_per_s": 50.0,
                "cluster/add/samples": 4 - noise_per_step[s - 1],
                "cluster/noise/samples": noise_per_step[s - 1],
            }
        )
        if s % 4 == 0:
            loss = losses[s // 4 - 1]
            rows.append(
                {
                    "step": s,
                    "eval/loss": loss,
                    "eval/exact_match": em,
                    "eval/add/loss": loss,
                    "eval/add/exact_match": em,
                    "eval/add/L1/exact_match": em,
                    "eval/add/L2/exact_match": em,
                    "eval/add/L1/loss": loss,
                    "eval/add/L2/loss": loss,
                    "eval/noise/loss": 4.0,
                    "eval/noise/exact_match": 0.0,
                }
            )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_analyse_ratio_winner_and_targets(tmp_path):
    runs = []
    spec = {  # strategy -> per seed: (eval losses at steps 4, 8), EM, noise samples per step
        "iid": [((3.0, 2.0), 0.20, [1] * 8), ((3.0, 2.2), 0.22, [1] * 8)],
        "it2acl": [((2.0, 1.5), 0.40, [1, 1, 0, 0, 0, 0, 0, 0]), ((2.1, 1.6), 0.44, [1, 1, 0, 0, 0, 0, 0, 0])],
    }
    for name, seeds in spec.items():
        for seed, (losses, em, noise) in enumerate(seeds):
            d = tmp_path / name / str(seed)
            _write_run(d, losses, em, noise)
            runs.append({"strategy": name, "seed": seed, "dir": str(d), "wall_s": 1.0})
    meta = {"data": "jsonl", "max_steps": 8, "quick": False}
    a = report.analyse(runs, meta)
    # The target is IID's final loss over the learnable clusters (user data: every cluster, alike):
    # (2.0 + 4.0) / 2 and (2.2 + 4.0) / 2 -> 3.05.
    assert a["target_loss"] == pytest.approx(3.05) and a["gate"] is None  # no planted chain: no gate
    it = a["summary"]["it2acl"]
    # it2acl's first eval (step 4: 3.0 and 3.05) is already at the target
    assert it["reached"] == 2 and it["steps_ratio"][0] == pytest.approx(0.5)
    iid = a["summary"]["iid"]
    assert iid["reached"] == 1  # one IID seed ends at 2.0 <= 2.1, the other at 2.2 does not
    assert it["exact_match"][0] == pytest.approx(0.42) and it["exact_match"][1] == pytest.approx(math.sqrt(0.0008))
    line = report.winner_line(a)  # judged on the learnable loss, EM beside it
    lead = a["summary"]["iid"]["learnable_loss"][0] - it["learnable_loss"][0]
    assert line.startswith("**Winner: it2acl** (learnable loss ") and ", EM 42.0 ± " in line
    assert f"ahead of iid by {lead:.4f};" in line and "within the noise" not in line  # IID named once
    # a failed pilot gate: no winner, only the lowest learnable loss
    failed = report.winner_line({**a, "gate": {"passed": False}})
    assert failed.startswith("**No winner**: the pilot gate failed") and "lowest learnable loss: it2acl" in failed
    # jsonl data: no planted structure, so only the steps target applies
    t = targets(a, "jsonl")
    assert len(t) == 1 and "**met** (mean 0.50x, worst 0.50x, 2/2 seeds" in t[0]

    meta.update(command="ct-train-bench x", model="tiny", global_batch_size=4, world_size=1, seeds=[0, 1])
    meta.update(prepare_s={}, runs_s=4.0, wall_s=5.0, failed={"phased": "no difficulty"})
    report.write(str(tmp_path), runs, meta)
    text = (tmp_path / "report.md").read_text()
    assert "| it2acl | 2.7750 ± 0.0354 | 1.5500 ± 0.0707 | 42.0 ± 2.8 | 0.50 ± 0.00 (2/2) |" in text
    assert "- phased: no difficulty" in text and (tmp_path / "timeline_it2acl.png").exists()
    assert (tmp_path / "results.csv").read_text().count("\n") == 5  # a header and one row per run


def test_bench_passes_the_users_overrides_but_not_the_per_run_keys():
    given = [
        "data=jsonl",
        "data.path=x.jsonl",
        "mode=bench",
        "bench.seeds=2",
        "curriculum=odm",
        "curriculum.eta=1",
        "+trainer.seed=3",
        "trainer.output_dir=o",
        "trainer.max_steps=50",
        "bench_x=1",
    ]
    assert user_overrides(given) == ["data=jsonl", "data.path=x.jsonl", "trainer.max_steps=50", "bench_x=1"]
    cfg = Config()
    cfg.data.name = "jsonl"
    cfg.model.path = "/some/model"
    q = quick_overrides(cfg)
    assert "trainer.max_steps=12" in q and not any(o.startswith(("data.skills", "model.")) for o in q)


def test_an_unknown_strategy_is_a_config_error_naming_the_key():
    from ct_train.compose import check_names
    from ct_train.errors import ConfigError

    cfg = Config()
    cfg.bench.strategies = ["iid", "curriculum_x"]
    with pytest.raises(ConfigError, match=r"bench.strategies='curriculum_x' is not valid; expected one of: iid, "):
        check_names(cfg)


def _suite_run(em_by_step, loss=1.0):
    """A load_run-shaped dict: evals at the given steps with per-cluster exact match."""
    evals = [(s, 0, {**{f"eval/{c}/exact_match": v for c, v in em.items()}, "eval/loss": loss}) for s, em in em_by_step]
    return {"evals": evals, "final": evals[-1][2]}


def test_pilot_gate_checks_the_chain_and_saturation_on_the_first_two_iid_seeds():
    structure = report.suite_structure(["hop1", "hop2", "hop3", "max", "count", "kind", "noise", "noise_hop"], "bench")
    assert structure["chains"] == {"hops": ["hop1", "hop2", "hop3"]} and structure["saturating"] == ["kind"]
    assert "noise" not in structure["learnable"] and "kind" in structure["learnable"]
    good = {"hop1": 0.9, "hop2": 0.5, "hop3": 0.3, "max": 0.6, "kind": 1.0}
    runs = [_suite_run([(50, {"hop1": 0.85}), (100, good)]) for _ in range(2)]
    gate = pilot_gate(runs, structure, max_steps=100)
    assert gate["passed"] and gate["seeds"] == 2  # `kind` may saturate: it is the designated one
    late = [_suite_run([(50, {"hop1": 0.3}), (60, {"hop1": 0.95}), (100, good)]) for _ in range(2)]
    assert not pilot_gate(late, structure, max_steps=100)["checks"][0][2]  # 60 > mid-run: too late
    saturated = [_suite_run([(50, {"hop1": 0.85}), (100, {**good, "max": 0.95})]) for _ in range(2)]
    assert [ok for _, _, ok in pilot_gate(saturated, structure, 100)["checks"]] == [True, True, False]
    assert pilot_gate(runs, report.suite_structure(["a", "b"], "jsonl"), 100) is None


def test_targets_compare_it2acl_with_balanced_paired_by_seed_and_the_distractor_share():
    def summary(loss, sd, shares):
        return {
            "learnable_loss": (loss, sd),
            "steps_ratio": (0.4, 0.05),
            "worst_ratio": 0.45,
            "reached": 3,
            "n": 3,
            "distractor": {"noise": shares},
        }

    def rows(name, losses, ems):
        return [
            {"strategy": name, "seed": k, "learnable_loss": x, "exact_match": e}
            for k, (x, e) in enumerate(zip(losses, ems))
        ]

    a = {
        "summary": {
            "iid": summary(2.0, 0.01, [0.2] * 4),
            "balanced": summary(1.9, 0.02, [0.25] * 4),
            "it2acl": summary(1.8, 0.01, [0.1, 0.12, 0.04, 0.03]),
        },
        "rows": rows("balanced", [1.88, 1.90, 1.92], [0.50, 0.52, 0.54])
        + rows("it2acl", [1.79, 1.80, 1.81], [0.53, 0.55, 0.57]),
        "structure": {"distractors": ["noise"]},
        "clusters": ["a", "b", "c", "noise"],
        "chained": [],
        "has_em": True,
        "hardest": None,
    }
    t = targets(a, "bench")
    assert "**met** (mean 0.40x, worst 0.45x, 3/3" in t[0]
    # 0.1 better than balanced; bar 2 x 0.02; every seed better by 0.09-0.11: p small; EM +3 points
    assert "beats `balanced`" in t[1] and "**met** (1.8000 vs 1.9000: -0.1000, bar 0.0400, paired p=0.00" in t[1]
    assert "EM +3.0 points" in t[1]
    assert "half their uniform share (0.125) from the second quarter on: **met**" in t[2] and len(t) == 3
    lines = paired_lines(a)
    assert lines[0].startswith("## Against `balanced`") and any(row.startswith("| it2acl | -0.1000") for row in lines)
    # EM only +1 point: the exact-match half of the bar is missed
    a["rows"] = rows("balanced", [1.88, 1.90, 1.92], [0.50, 0.52, 0.54]) + rows(
        "it2acl", [1.79, 1.80, 1.81], [0.51, 0.53, 0.55]
    )
    assert "**missed**" in targets(a, "bench")[1]
    # better on average but one seed worse: the paired test does not pass
    a["rows"] = rows("balanced", [1.88, 1.90, 1.92], [0.5, 0.5, 0.5]) + rows("it2acl", [1.70, 1.95, 1.75], [0.6] * 3)
    a["summary"]["it2acl"]["learnable_loss"] = (1.8, 0.01)
    t = targets(a, "bench")
    assert "**missed**" in t[1] and "paired p=0.314" in t[1]  # diffs -0.18, +0.05, -0.17: t = -1.33, 2 df
    a["summary"]["it2acl"]["worst_ratio"] = 0.6  # over 0.5x on one seed
    a["summary"]["it2acl"]["distractor"]["noise"] = [0.1, 0.13, 0.1, 0.1]  # Q2 over half of uniform
    t = targets(a, "bench_v1")
    assert "**missed** (mean 0.40x, worst 0.60x" in t[0] and "**missed**" in t[2]
    # a seed that never reached IID's loss has no ratio: no "worst infx", the count says it
    a["summary"]["it2acl"].update(worst_ratio=float("inf"), reached=2)
    assert "**missed** (mean 0.40x, 2/3 seeds reached it)." in targets(a, "bench")[0]
    assert "no worse than `balanced` beyond the seed spread: **met**" in t[3]
    assert "no worse than IID beyond the seed spread: **met**" in t[4]


def test_phased_gets_one_phase_per_difficulty_value_of_a_suite_that_scores_its_skills():
    from types import SimpleNamespace

    from ct_train.bench.strategies import _prepare_phased
    from ct_train.curriculum import DataIndex, build_curriculum
    from ct_train.curriculum.phased import PhasedConfig
    from ct_train.data.bench_suite import BENCH_V2
    from ct_train.errors import ConfigError

    ctx = lambda name: SimpleNamespace(cfg=SimpleNamespace(data=SimpleNamespace(name=name)))  # noqa: E731
    extra = _prepare_phased(ctx("bench"))
    assert extra == ["curriculum.phases=3", "curriculum.thresholds=[1.5,2.5]"] and _prepare_phased(ctx("jsonl")) == []
    # On the suite's own difficulty mix these cuts give one phase a value; so do the default cuts since
    # they fall between distinct values (the plain quantiles left phase 3 empty until 2026-12-05).
    d = np.concatenate([np.full(n, BENCH_V2.difficulty[c], dtype=float) for c, n in BENCH_V2.sizes.items()])
    index = DataIndex(["x"], np.zeros(len(d), dtype=int), d)
    cur = build_curriculum(PhasedConfig(thresholds=[1.5, 2.5]), index, seed=0, total_steps=600)
    assert [len(p) for p in cur.pools().values()] == [4800, 1400, 4200]
    default = build_curriculum(PhasedConfig(), index, seed=0, total_steps=600)
    assert [len(p) for p in default.pools().values()] == [4800, 1400, 4200]
    with pytest.raises(ConfigError, match="phase 4 of 4"):  # more phases than values: one stays empty
        build_curriculum(PhasedConfig(phases=4), index, seed=0, total_steps=600)
