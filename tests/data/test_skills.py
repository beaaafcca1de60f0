"""The bundled skill suite: deterministic, graded, with a disjoint held-out split and right answers."""

import json
import re

import pytest

from ct_train.data import skills


def test_deterministic_and_every_skill_generates():
    a = skills.generate(list(skills.SKILLS), 3, 20, 5, seed=7)
    b = skills.generate(list(skills.SKILLS), 3, 20, 5, seed=7)
    assert a == b
    assert len({r["cluster"] for r in a["train"]}) == len(skills.SKILLS) >= 15
    assert len(skills.DEFAULT_SUITE) == 10 and set(skills.DEFAULT_SUITE) < set(skills.SKILLS)
    assert skills.generate(["add"], 1, 5, 2, seed=8) != skills.generate(["add"], 1, 5, 2, seed=7)


def test_held_out_items_never_in_training():
    data = skills.generate(list(skills.SKILLS), 3, 200, 16, seed=1)
    train = {(r["prompt"], r["response"]) for r in data["train"]}
    assert not train & {(r["prompt"], r["response"]) for r in data["eval"]}


def test_levels_get_harder_and_answers_are_right():
    data = skills.generate(["add", "reverse", "brackets", "cjk_reverse"], 3, 50, 1, seed=3)["train"]
    by = lambda c, lv: [r for r in data if r["cluster"] == c and r["difficulty"] == lv]  # noqa: E731
    assert max(len(r["response"]) for r in by("add", 1)) <= 2 < max(len(r["response"]) for r in by("add", 3))
    for r in by("add", 3):
        nums = [int(t.strip("?.")) for t in r["prompt"].split() if t.strip("?.").isdigit()]
        assert int(r["response"]) == sum(nums)
    for r in by("reverse", 2):
        word = next(t.strip(".:") for t in r["prompt"].split() if set(t.strip(".:")) <= set("abcdefghijkl"))
        assert r["response"] == word[::-1]
    for r in by("brackets", 3):
        s = next(t for t in r["prompt"].replace(":", " ").split() if set(t) <= set("()") and t)
        depth, ok = 0, True
        for ch in s:
            depth += 1 if ch == "(" else -1
            ok &= depth >= 0
        assert r["response"] == ("yes" if ok and depth == 0 else "no")
    assert all(r["response"][::-1] in r["prompt"] for r in by("cjk_reverse", 2))


def test_materialize_writes_loadable_jsonl_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CT_TRAIN_CACHE", str(tmp_path))
    paths = skills.materialize(["copy", "sort"], 2, 10, 3, seed=5)
    rows = [json.loads(line) for line in open(paths["train"], encoding="utf-8")]
    assert len(rows) == 2 * 2 * 10 and {"id", "prompt", "response", "cluster", "difficulty"} <= set(rows[0])
    mtime = (tmp_path / paths["train"]).stat().st_mtime_ns
    assert skills.materialize(["copy", "sort"], 2, 10, 3, seed=5) == paths
    assert (tmp_path / paths["train"]).stat().st_mtime_ns == mtime


def _numbers(prompt):
    return [int(t.strip("?.,")) for t in prompt.split() if t.strip("?.,").isdigit()]


def test_benchmark_suite_chains_answers_and_distractor():
    assert len(skills.BENCH_SUITE) >= 12 and set(skills.BENCH_SUITE) <= set(skills.SKILLS)
    data = skills.generate(skills.BENCH_SUITE, 3, 200, 1, seed=11)["train"]
    by = lambda c, lv: [r for r in data if r["cluster"] == c and r["difficulty"] == lv]  # noqa: E731
    for r in by("add3", 2):
        assert int(r["response"]) == sum(_numbers(r["prompt"]))
    for r in by("expr", 3):
        a, b, c = _numbers(r["prompt"])
        assert int(r["response"]) == a + b - c >= 0
    for r in by("lookup2", 2):  # follow the pointer, then read the digit
        pointers = dict(re.findall(r"([a-z])->([a-z])", r["prompt"]))
        values = dict(re.findall(r"([a-z])=([0-9])", r["prompt"]))
        q = re.search(r"follow ([a-z]) to|does ([a-z]) lead|Resolve ([a-z]) in", r["prompt"])
        q = next(g for g in q.groups() if g)
        assert len(pointers) == len(values) == 3 and r["response"] == values[pointers[q]]
    for r in by("lookup_max", 1):
        values = dict(re.findall(r"([a-z])=([0-9])", r["prompt"]))
        x, y = re.search(r"(?:larger, |of |up )([a-z]) (?:or|and) ([a-z])", r["prompt"]).groups()
        assert r["response"] == max(values[x], values[y])
    # Within a chain, a level's answers have about the same length in every member (the dependency is
    # not an answer-length prior); across levels they grow.
    for chain in skills.CHAINS.values():
        for lv in (1, 2, 3):
            means = [sum(len(r["response"]) for r in by(c, lv)) / len(by(c, lv)) for c in chain]
            assert max(means) - min(means) <= 1.2, (chain, lv, means)
    # The distractor: a prompt seen twice gets two different answers (nothing to learn from it).
    answers = {}
    for r in skills.generate(["noise"], 1, 3000, 1, seed=2)["train"]:
        answers.setdefault(r["prompt"], []).append(r["response"])
    repeated = [v for v in answers.values() if len(v) > 1]
    assert len(repeated) > 50 and all(len(set(v)) == len(v) for v in repeated)


def test_suite_v2_sizes_answers_and_planted_structure():
    from ct_train.data.bench_suite import BENCH_V2, SKILLS_V2

    data = skills.generate(BENCH_V2.clusters, 1, 600, 8, seed=3, sizes=BENCH_V2.sizes, suite="bench")
    by = {}
    for r in data["train"]:
        by.setdefault(r["cluster"], []).append(r)
    assert {c: len(v) for c, v in by.items()} == BENCH_V2.sizes  # unequal sizes: mixture != IID
    assert len(by["kind"]) >= 4 * len(by["hop2"]) and BENCH_V2.learnable() == [
        c for c in BENCH_V2.clusters if c not in ("noise", "noise_hop")
    ]
    # Following the bindings from the query reaches the answer: hop1 one binding, hop2 the queried
    # one of three, hop3 through a pointer (two steps) among four.
    for name, (n_pairs, n_steps) in {"hop1": (1, 1), "hop2": (3, 1), "hop3": (4, 2)}.items():
        for r in by[name][:50]:
            *pairs, query = r["prompt"].split()
            table = dict(p.split("=") for p in pairs)
            value, steps = query[1:], 0
            while not value.isdigit():
                value, steps = table[value], steps + 1
            assert (value, steps, len(pairs)) == (r["response"], n_steps, n_pairs)
    # noise_hop looks like hop1 but its answer is not the looked-up digit (about 1 in 10 is, by chance)
    agree = sum(
        dict(p.split("=") for p in r["prompt"].split()[:-1])[r["prompt"][-1]] == r["response"] for r in by["noise_hop"]
    )
    assert agree / len(by["noise_hop"]) < 0.2
    assert set(BENCH_V2.clusters) <= set(SKILLS_V2)


@pytest.mark.parametrize("name", ["bench", "bench_v2"])
def test_each_suites_yaml_trains_its_planted_sizes_and_v2_is_kept_as_it_was(name):
    """`data=bench` (suite v3) and the held-back `data=bench_v2` compose to the sizes their Suite
    declares (the report reads the Suite, the runs the YAML); v3 differs from v2 in hop1, max and count
    only, and v2's sizes are the 2026-12-04 grid's."""
    from ct_train.compose import to_typed
    from ct_train.data.bench_suite import BENCH_V2, SUITES
    from tests.test_config import _compose

    cfg = to_typed(_compose([f"data={name}"])).data
    sizes = {c: (cfg.skills.sizes or {}).get(c, cfg.skills.train_per_level) for c in cfg.skills.clusters}
    assert cfg.name == name and sizes == SUITES[name].sizes and cfg.skills.clusters == SUITES[name].clusters
    assert BENCH_V2.sizes == {
        "hop1": 2400, "hop2": 600, "hop3": 600, "max": 200, "count": 600, "kind": 2400, "noise": 1800, "noise_hop": 1800
    }  # fmt: skip
    changed = {c for c in BENCH_V2.sizes if SUITES["bench"].sizes[c] != BENCH_V2.sizes[c]}
    assert changed == {"hop1", "max", "count"}


def test_suite_v2_sizes_are_checked_and_keep_old_cache_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("CT_TRAIN_CACHE", str(tmp_path))
    from ct_train.errors import ConfigError

    with pytest.raises(ConfigError, match="data.skills.sizes names unknown skills"):
        skills.materialize(["hop1"], 1, 5, 2, seed=1, sizes={"hopp1": 3}, suite="bench")
    v2 = skills.materialize(["hop1", "kind"], 1, 5, 2, seed=1, sizes={"kind": 9, "noise": 4}, suite="bench")
    assert sum(1 for _ in open(v2["train"])) == 14  # noise is not in the suite: its size is ignored
    with pytest.raises(ConfigError, match="unknown skills"):
        skills.materialize(["hop1"], 1, 5, 2, seed=1)  # hop1 is a v2 skill only


def test_ct_train_sample_writes_a_file_the_loaders_read_and_never_overwrites(tmp_path):
    """The README's walk-through data (issue 34: it read ../shared/data, which a user's clone lacks)."""
    import subprocess
    import sys
    from pathlib import Path

    from ct_train.data.loading import FileSpec, load_examples

    exe = Path(sys.executable).parent / "ct-train-sample"
    out = tmp_path / "sample.jsonl"
    proc = subprocess.run(
        [str(exe), str(out), "--per-level", "4", "--clusters", "add,reverse"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 24 records (2 clusters x 3 levels)" in proc.stdout
    ds, stats = load_examples([FileSpec(str(out))], "auto", None, None, "error")
    rows = ds.to_list()
    assert stats["records"] == 24 and {r["cluster"] for r in rows} == {"add", "reverse"}
    assert sorted({r["difficulty"] for r in rows}) == [1.0, 2.0, 3.0]
    before = out.read_text()
    again = subprocess.run([str(exe), str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "exists; nothing is overwritten" in again.stderr and out.read_text() == before
