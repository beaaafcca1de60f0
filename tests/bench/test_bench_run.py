"""`ct-train-bench --quick` end to end: IID and two strategies x 2 seeds through the trainer, the
report, the CSV and the plots; the same command again re-uses the finished runs."""

import csv
import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, cli_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _bench(args, timeout=600):
    code = "from ct_train.cli import bench_main; bench_main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=cli_env(2)
    )


def test_quick_bench_runs_the_strategies_and_writes_the_report(tmp_path):
    # Two strategies besides IID and balanced (which always join as the references): one with a bandit timeline and
    # the one with a prepare step. That every registered curriculum is a strategy is tested in
    # test_bench_report.py; Phased IFT's staged runs in tests/integration, its refusal below.
    out = tmp_path / "bench"
    args = ["--quick", "bench.strategies=[it2acl,beyond_iid]", f"trainer.output_dir={out}"]
    args += ["logger.progress_bar=false"]
    proc = _bench(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = ["iid", "balanced", "it2acl", "beyond_iid"]

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["strategy"], r["seed"]) for r in rows) == sorted((n, s) for n in names for s in ("42", "43"))
    for r in rows:  # the same budget for every run; numbers, not blanks
        assert int(r["steps"]) == 12 and int(r["tokens"]) > 0 and float(r["loss"]) > 0
        assert 0 <= float(r["exact_match"]) <= 1
        for d in ("noise", "noise_hop"):  # the suite's two distractors
            shares = [float(r[f"{d}_share_q{q}"]) for q in range(1, 5)]
            assert all(0 <= x <= 1 for x in shares)
        for c in ("hop1", "hop3", "kind", "noise"):  # per cluster
            assert float(r[f"loss/{c}"]) > 0
        # the yardstick: the mean over the learnable clusters (all but the distractors), each alike
        learnable = ["hop1", "hop2", "hop3", "max", "count", "kind"]
        assert float(r["learnable_loss"]) == pytest.approx(sum(float(r[f"loss/{c}"]) for c in learnable) / 6)
    by = {(r["strategy"], r["seed"]): r for r in rows}
    assert by[("iid", "42")]["loss"] != by[("iid", "43")]["loss"]  # the seeds differ
    assert by[("iid", "42")]["loss"] != by[("it2acl", "42")]["loss"]  # so do the strategies
    # every run is an ordinary training run of its strategy and seed, on the same data and budget
    for n in names:
        for seed in (42, 43):
            cfg = yaml.safe_load((out / "runs" / n / f"seed{seed}" / "config.yaml").read_text())
            assert cfg["curriculum"]["name"] == n and cfg["trainer"]["seed"] == seed
            assert cfg["trainer"]["max_steps"] == 12 and cfg["trainer"]["global_batch_size"] == 8
            assert cfg["data"]["name"] == "bench" and cfg["data"]["skills"]["clusters"][-1] == "noise_hop"
    # beyond_iid trains on the mix from the interaction matrix measured first (one level per cluster
    # in this suite: its categories are the clusters, no split by difficulty)
    bi = yaml.safe_load((out / "runs/beyond_iid/seed42/config.yaml").read_text())
    assert not bi["data"]["split_by_difficulty"] and (out / "prepare/beyond_iid/interaction.json").exists()
    assert bi["curriculum"]["interaction_file"].endswith("prepare/beyond_iid/interaction.json")

    text = (out / "report.md").read_text()
    for n in names:
        assert f"| {n} | " in text
    verdict = "**No winner**: the pilot gate failed" if "**FAILED**" in text else "**Winner: "
    assert verdict in text and "## Targets" in text and "IT2ACL reaches IID's final learnable-cluster" in text
    assert "hop1 -> hop2 -> hop3" in text and "Pilot gate (IID, 2 seeds, exact match)" in text
    assert "## Against `balanced`, paired by seed" in text and "| it2acl | " in text.split("## Against")[1]
    assert "IT2ACL beats `balanced` on the learnable loss" in text
    assert "bench: Pilot gate" in proc.stdout  # printed after IID's runs, before the others
    assert "chained None" not in text  # no per-level column for a suite without levels
    for png in ["loss_vs_tokens.png"] + [f"timeline_{n}.png" for n in names if n != "iid"]:
        assert (out / png).stat().st_size > 10_000, png
    assert "Winner" in proc.stdout or "No winner" in proc.stdout

    # The same command again: every run is found finished (none trains again), the report is rebuilt.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/metrics.jsonl")}
    assert len(stamps) == 2 * len(names)
    (out / "report.md").unlink()
    again = _bench(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/metrics.jsonl")} == stamps
    assert (out / "report.md").exists() and again.stdout.count("finished earlier with the same overrides, kept") == len(
        stamps
    )
    with open(out / "results.csv") as f:
        assert list(csv.DictReader(f)) == rows


def test_bench_on_a_users_jsonl_reports_loss_and_a_strategy_the_data_cannot_serve(tmp_path, shared_data):
    """Alpaca records without a difficulty field: IID runs, Phased IFT (difficulty=data) cannot and is
    reported as not run instead of ending the grid; no exact match on free text, so loss only."""
    records = [json.loads(x) for x in (shared_data / "alpaca52k-gpt4-scored-stage3.jsonl").open()][:120]
    data = tmp_path / "alpaca.jsonl"  # the GPT-4 scores removed: no difficulty
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "score"}) + "\n" for r in records))
    out = tmp_path / "bench"
    args = ["--quick", "data=jsonl", f"data.path={data}", "data.max_seq_len=256", "data.eval_fraction=0.2"]
    args += ["bench.strategies=[phased]", "bench.seeds=1", f"trainer.output_dir={out}", "logger.progress_bar=false"]
    proc = _bench(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # iid and balanced join as the references
    assert [(r["strategy"], r["seed"]) for r in rows] == [("iid", "42"), ("balanced", "42")]
    assert all(float(r["loss"]) > 0 and r["exact_match"] == "nan" for r in rows)
    text = (out / "report.md").read_text()
    assert "Did not run" in text and "- phased: " in text and "difficulty" in text.split("- phased: ")[1]
    assert "EM %" not in text and "**Winner: " in text
