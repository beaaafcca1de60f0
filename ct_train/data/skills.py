"""The bundled skill suite (`data=skills`): synthetic instruction tasks with graded difficulty.

Each skill is a task cluster; `level` 1..L makes the same task harder (longer strings, more digits,
more pairs). Instructions are paraphrased (several phrasings per skill) so a model must read them.
Generation is deterministic in (seed, skill, level, split); the held-out split is generated first and
excluded from training, and both are written as JSON lines into a cache directory and loaded through
the same `datasets` path as user data. Exact match (the response string, whole) is the task metric.

Level 1 of every skill is within reach of a ~1M-parameter model in a few minutes of CPU training.
`DEFAULT_SUITE` is `data=skills`; `BENCH_SUITE` (`data=bench_v1`, the first curriculum benchmark) adds
prerequisite chains (`CHAINS`) and an unlearnable distractor (`noise`). `data=bench` (suite v3) and
`data=bench_v2` have their own generators: `ct_train.data.bench_suite`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ct_train import io

GENERATED = ("skills", "bench", "bench_v2", "bench_v1")  # the data.name values this module generates
GENERATOR_VERSION = 1  # part of the cache key: bump when a generator changes its output

Instance = Tuple[str, str]  # (prompt, response)

CJK_CHARS = "天地人日月山水火木金土风云雨雪春夏秋冬东南西北大小上下左右中文字"


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase[:12]) for _ in range(n))


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _pick(rng: random.Random, phrasings: List[str], **kw: object) -> str:
    return rng.choice(phrasings).format(**kw)


def copy(rng: random.Random, level: int) -> Instance:
    s = _letters(rng, 2 + 2 * level)
    return _pick(rng, ["Repeat exactly: {s}", "Copy this text: {s}", "Write {s} again."], s=s), s


def reverse(rng: random.Random, level: int) -> Instance:
    s = _letters(rng, 1 + 2 * level)
    return _pick(rng, ["Reverse the string: {s}", "Write {s} backwards.", "Spell {s} in reverse order."], s=s), s[::-1]


def sort(rng: random.Random, level: int) -> Instance:
    s = _letters(rng, 1 + 2 * level)
    return _pick(
        rng,
        ["Sort the letters of {s} alphabetically.", "Put these letters in order: {s}", "Arrange {s} from a to z."],
        s=s,
    ), "".join(sorted(s))


def count(rng: random.Random, level: int) -> Instance:
    s = _letters(rng, 2 + 3 * level)
    c = rng.choice(s)
    return _pick(
        rng,
        ["How many times does {c} appear in {s}?", "Count the letter {c} in {s}.", "In {s}, how often is {c} used?"],
        c=c,
        s=s,
    ), str(s.count(c))


def add(rng: random.Random, level: int) -> Instance:
    a, b = _number(rng, level), _number(rng, level)
    return _pick(rng, ["What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."], a=a, b=b), str(
        a + b
    )


def multiply(rng: random.Random, level: int) -> Instance:
    a, b = _number(rng, (level + 1) // 2), _number(rng, level // 2 + 1)  # 1x1, 1x2, 2x2, 2x3 digits
    return _pick(
        rng, ["What is {a} * {b}?", "Multiply {a} by {b}.", "Compute the product of {a} and {b}."], a=a, b=b
    ), str(a * b)


def compare(rng: random.Random, level: int) -> Instance:
    a, b = _number(rng, level), _number(rng, level)
    while b == a:
        b = _number(rng, level)
    return _pick(
        rng,
        ["Which is larger, {a} or {b}?", "Name the bigger number: {a}, {b}.", "Between {a} and {b}, which is greater?"],
        a=a,
        b=b,
    ), str(max(a, b))


def brackets(rng: random.Random, level: int) -> Instance:
    n = 1 + level
    chars, depth = [], 0
    for _ in range(2 * n):  # a random balanced string, then maybe one flip
        if depth == 0 or (rng.random() < 0.5 and len(chars) + depth < 2 * n):
            chars.append("(")
            depth += 1
        else:
            chars.append(")")
            depth -= 1
    chars += [")"] * depth
    if rng.random() < 0.5:
        i = rng.randrange(len(chars))
        chars[i] = "(" if chars[i] == ")" else ")"
    s = "".join(chars)
    balanced, depth = True, 0
    for ch in s:
        depth += 1 if ch == "(" else -1
        balanced &= depth >= 0
    balanced &= depth == 0
    return _pick(
        rng,
        [
            "Are the brackets balanced: {s}",
            "Is {s} properly nested? Answer yes or no.",
            "Check the parentheses {s}: balanced?",
        ],
        s=s,
    ), "yes" if balanced else "no"


def lookup(rng: random.Random, level: int) -> Instance:
    keys = rng.sample(string.ascii_lowercase, 1 + level)
    table = {k: rng.randint(0, 9) for k in keys}
    pairs = ", ".join(f"{k}={v}" for k, v in table.items())
    q = rng.choice(keys)
    return _pick(rng, ["Given {p}, what is {q}?", "With {p}: find {q}.", "Look up {q} in {p}."], p=pairs, q=q), str(
        table[q]
    )


def cjk_reverse(rng: random.Random, level: int) -> Instance:
    s = "".join(rng.choice(CJK_CHARS) for _ in range(1 + level))
    return _pick(rng, ["把这些字倒过来写：{s}", "请反转：{s}", "倒序输出：{s}"], s=s), s[::-1]


# Skills added for the curriculum benchmark (`data=bench`). Each chain below is a prerequisite chain:
# the later skill reuses the earlier one, and at a given level every member's answer has about the
# same length, so a measured dependency is not a length prior in disguise.


def add3(rng: random.Random, level: int) -> Instance:
    """add, twice: three `level`-digit numbers."""
    a, b, c = (_number(rng, level) for _ in range(3))
    return _pick(
        rng,
        ["What is {a} + {b} + {c}?", "Add {a}, {b} and {c}.", "Compute the sum of {a}, {b} and {c}."],
        a=a,
        b=b,
        c=c,
    ), str(a + b + c)


def expr(rng: random.Random, level: int) -> Instance:
    """An expression: add, then subtract (`level`-digit numbers, a non-negative result)."""
    a, b = _number(rng, level), _number(rng, level)
    c = _number(rng, level)
    while c > a + b:
        c = _number(rng, level)
    return _pick(
        rng, ["What is {a} + {b} - {c}?", "Evaluate {a} + {b} - {c}.", "Compute {a} plus {b} minus {c}."], a=a, b=b, c=c
    ), str(a + b - c)


def _table(rng: random.Random, keys: List[str]) -> Dict[str, int]:
    return {k: rng.randint(0, 9) for k in keys}


def lookup2(rng: random.Random, level: int) -> Instance:
    """lookup, twice: a letter points to another letter, which holds the digit."""
    letters = rng.sample(string.ascii_lowercase, 2 * (1 + level))
    pointers, holders = letters[: 1 + level], letters[1 + level :]
    values = _table(rng, holders)
    targets = rng.sample(holders, len(holders))
    pairs = [f"{p}->{t}" for p, t in zip(pointers, targets)] + [f"{h}={v}" for h, v in values.items()]
    rng.shuffle(pairs)
    q = rng.randrange(len(pointers))
    return _pick(
        rng,
        ["Given {p}, follow {q} to its number.", "With {p}: where does {q} lead?", "Resolve {q} in {p}."],
        p=", ".join(pairs),
        q=pointers[q],
    ), str(values[targets[q]])


def lookup_max(rng: random.Random, level: int) -> Instance:
    """lookup, then compare: the larger of two looked-up digits."""
    keys = rng.sample(string.ascii_lowercase, 2 + level)
    table = _table(rng, keys)
    x, y = rng.sample(keys, 2)
    while table[x] == table[y]:
        table[y] = rng.randint(0, 9)
    pairs = ", ".join(f"{k}={v}" for k, v in table.items())
    return _pick(
        rng,
        [
            "Given {p}, which is larger, {x} or {y}?",
            "With {p}: give the bigger of {x} and {y}.",
            "Look up {x} and {y} in {p}; name the larger value.",
        ],
        p=pairs,
        x=x,
        y=y,
    ), str(max(table[x], table[y]))


def noise(rng: random.Random, level: int) -> Instance:
    """The distractor: the answer is random letters, independent of the prompt (nothing to learn)."""
    s = _letters(rng, 2 + level)
    answer = "".join(rng.choice(string.ascii_lowercase) for _ in range(2 + level))
    return _pick(rng, ["Say the code for {s}.", "What is the secret word of {s}?", "Decode {s}."], s=s), answer


SKILLS: Dict[str, Callable[[random.Random, int], Instance]] = {
    "copy": copy,
    "reverse": reverse,
    "sort": sort,
    "count": count,
    "add": add,
    "multiply": multiply,
    "compare": compare,
    "brackets": brackets,
    "lookup": lookup,
    "cjk_reverse": cjk_reverse,
    "add3": add3,
    "expr": expr,
    "lookup2": lookup2,
    "lookup_max": lookup_max,
    "noise": noise,
}

# `data=skills` (data.skills.clusters empty): the original ten.
DEFAULT_SUITE = ["copy", "reverse", "sort", "count", "add", "multiply", "compare", "brackets", "lookup", "cjk_reverse"]

# `data=bench_v1`: three planted prerequisite chains, four unrelated clusters and one distractor.
CHAINS: Dict[str, List[str]] = {
    "strings": ["copy", "reverse", "sort"],
    "arithmetic": ["add", "add3", "expr"],
    "lookup": ["lookup", "lookup2", "lookup_max"],
}
UNRELATED = ["count", "compare", "brackets", "cjk_reverse"]
DISTRACTORS = ["noise"]
BENCH_SUITE = [c for chain in CHAINS.values() for c in chain] + UNRELATED + DISTRACTORS


def _rng(seed: int, skill: str, level: int, split: str) -> random.Random:
    return random.Random(f"{seed}:{zlib.crc32(skill.encode())}:{level}:{split}")


def registry(suite: str) -> Dict[str, Callable[[random.Random, int], Instance]]:
    """The generators of a suite by `data.name`: `bench` (v3) and `bench_v2` have their own, the others
    share SKILLS."""
    from ct_train.data.bench_suite import SKILLS_V2

    return SKILLS_V2 if suite in ("bench", "bench_v2") else SKILLS


def generate(
    skills: List[str],
    levels: int,
    train_per_level: int,
    eval_per_level: int,
    seed: int,
    sizes: Optional[Dict[str, int]] = None,
    suite: str = "skills",
) -> Dict[str, List[dict]]:
    """Both splits as lists of prompt/response records with `cluster`, `difficulty` and `id`.

    `sizes`: training samples per level of the listed skills (the others get `train_per_level`)."""
    from ct_train.data.bench_suite import SUITES

    out: Dict[str, List[dict]] = {"train": [], "eval": []}
    known = registry(suite)
    scale = SUITES[suite].difficulty if suite in SUITES else {}
    for skill in skills:
        make = known[skill]
        n_train = (sizes or {}).get(skill, train_per_level)
        for level in range(1, levels + 1):
            rng = _rng(seed, skill, level, "eval")
            held_out = set()
            for i in range(eval_per_level):
                for _ in range(50):  # prefer distinct held-out items; tiny levels have few
                    prompt, response = make(rng, level)
                    if (prompt, response) not in held_out:
                        break
                held_out.add((prompt, response))
                out["eval"].append(
                    dict(
                        id=f"{skill}-L{level}-eval-{i}",
                        prompt=prompt,
                        response=response,
                        cluster=skill,
                        difficulty=float(scale.get(skill, level)),
                    )
                )
            rng = _rng(seed, skill, level, "train")
            for i in range(n_train):
                for _ in range(1000):
                    prompt, response = make(rng, level)
                    if (prompt, response) not in held_out:
                        break
                out["train"].append(
                    dict(
                        id=f"{skill}-L{level}-train-{i}",
                        prompt=prompt,
                        response=response,
                        cluster=skill,
                        difficulty=float(scale.get(skill, level)),
                    )
                )
    return out


def cache_dir() -> Path:
    root = os.environ.get("CT_TRAIN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ct_train")
    return Path(root)


def materialize(
    skills: List[str],
    levels: int,
    train_per_level: int,
    eval_per_level: int,
    seed: int,
    sizes: Optional[Dict[str, int]] = None,
    suite: str = "skills",
) -> Dict[str, str]:
    """Write the suite as train.jsonl / eval.jsonl (once per setting) and return their paths.

    Written to a temporary name and renamed, so concurrent ranks or an interrupted run never leave a
    half-written file under the final name.
    """
    from ct_train.errors import ConfigError

    known = registry(suite)
    unknown = sorted(set(skills) - set(known))
    if unknown:
        raise ConfigError(f"data.skills.clusters: unknown skills {unknown} for data={suite}; known: {sorted(known)}")
    bad = sorted(set(sizes or {}) - set(known))
    if bad:
        raise ConfigError(f"data.skills.sizes names unknown skills {bad} for data={suite}; known: {sorted(known)}")
    sizes = {k: v for k, v in (sizes or {}).items() if k in skills}  # (a suite's sizes for clusters left out)
    key = [GENERATOR_VERSION, skills, levels, train_per_level, eval_per_level, seed]
    if sizes or suite in ("bench", "bench_v2"):  # (every earlier setting's key stays the same: caches stay valid)
        key += [dict(sorted((sizes or {}).items())), suite, "difficulty-by-skill"]
    key = json.dumps(key)
    folder = cache_dir() / "skills" / hashlib.sha1(key.encode()).hexdigest()[:16]
    paths = {split: str(folder / f"{split}.jsonl") for split in ("train", "eval")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    data = generate(skills, levels, train_per_level, eval_per_level, seed, sizes, suite)
    for split, path in paths.items():
        io.write_atomic(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in data[split]))
    return paths


def write_sample(path: str, clusters: List[str], levels: int, per_level: int, seed: int) -> int:
    """The skill suite's training records as a JSON lines file of the user's own (`ct-train-sample`):
    prompt/response with `cluster` and `difficulty` (the level). Returns how many records it wrote.
    ValueError on an unknown skill or a file that exists (nothing is overwritten)."""
    unknown = sorted(set(clusters) - set(SKILLS))
    if unknown:
        raise ValueError(f"unknown skills {unknown}; known: {sorted(SKILLS)}")
    if os.path.exists(path):
        raise ValueError(f"{path} exists; nothing is overwritten")
    records = generate(clusters, levels, per_level, 1, seed)["train"]
    io.write_atomic(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
    return len(records)
