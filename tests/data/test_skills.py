"""The bundled skill suite: deterministic, graded, with a disjoint held-out split and right answers."""

import json

from ct_train.data import skills


def test_deterministic_and_ten_clusters():
    a = skills.generate(list(skills.SKILLS), 3, 20, 5, seed=7)
    b = skills.generate(list(skills.SKILLS), 3, 20, 5, seed=7)
    assert a == b
    assert len({r["cluster"] for r in a["train"]}) == len(skills.SKILLS) >= 8
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
