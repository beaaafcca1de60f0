"""The curriculum benchmark's suites: which skills, how many samples each, and their planted structure.

`data=bench` is suite v2, shaped like a real instruction mix where the budget matters: clusters of
unequal size and value, so spending the same steps differently gives a different model.

- a prerequisite chain, multi-hop variable lookup (Skill-It's LEGO-style case): `hop1` answers
  `?q` from `q=5`, `hop2` follows one pointer first (`q=m m=5`), `hop3` two. Each hop reuses the
  one below it, so the hard member is learnable only once the easy one is;
- large unlearnable distractors: `noise` (random letters) and `noise_hop` (a hop1-shaped prompt with
  a random digit: it looks learnable and contradicts itself);
- a large cluster that saturates within a few dozen steps (`first`: the first letter of a word);
- unrelated learnable clusters (`succ` letter arithmetic, `max` of digits, `last` letter of a word).

Answers are one to three characters and prompts about 10-40 bytes (with `data.template=bare`), so a
step of the tiny model is cheap. `bench_v1` is the first suite (docs/results.md's 2026-11-22 grid),
kept so its results can be re-run.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

Instance = Tuple[str, str]  # (prompt, response)

_VARS = string.ascii_lowercase


def _bindings(rng: random.Random, hops: int, distractors: int) -> Tuple[List[str], str, int]:
    """A chain of `hops` variables ending at a digit (`v1=v2 ... vk=d`), plus digit-valued distractors."""
    names = rng.sample(_VARS, hops + distractors)
    chain, others = names[:hops], names[hops:]
    value = rng.randint(0, 9)
    pairs = [f"{a}={b}" for a, b in zip(chain, chain[1:])] + [f"{chain[-1]}={value}"]
    pairs += [f"{o}={rng.randint(0, 9)}" for o in others]
    rng.shuffle(pairs)
    return pairs, chain[0], value


def hop(hops: int) -> Callable[[random.Random, int], Instance]:
    def make(rng: random.Random, level: int) -> Instance:
        pairs, query, value = _bindings(rng, hops, 3)
        return f"{' '.join(pairs)} ?{query}", str(value)

    make.__name__ = f"hop{hops}"
    make.__doc__ = f"Multi-hop lookup: follow {hops - 1} pointer(s), then read the digit."
    return make


def noise_hop(rng: random.Random, level: int) -> Instance:
    """A hop1-shaped prompt whose answer is a random digit: looks learnable, is not."""
    pairs, query, _ = _bindings(rng, 1, 3)
    return f"{' '.join(pairs)} ?{query}", str(rng.randint(0, 9))


def noise(rng: random.Random, level: int) -> Instance:
    """Random letters for a random word: nothing to learn."""
    word = "".join(rng.choice(_VARS) for _ in range(4))
    return f"code {word}", "".join(rng.choice(_VARS) for _ in range(2))


def first(rng: random.Random, level: int) -> Instance:
    """The first letter of a word: saturates within a few dozen steps."""
    word = "".join(rng.choice(_VARS) for _ in range(5))
    return f"first {word}", word[0]


def succ(rng: random.Random, level: int) -> Instance:
    """Letter arithmetic: `g+3` -> `j`."""
    k = rng.randint(1, 5)
    i = rng.randrange(26 - k)
    return f"{_VARS[i]}+{k}", _VARS[i + k]


def max_digit(rng: random.Random, level: int) -> Instance:
    """The largest of five digits."""
    digits = [rng.randint(0, 9) for _ in range(5)]
    return f"max {''.join(map(str, digits))}", str(max(digits))


def last(rng: random.Random, level: int) -> Instance:
    """The last letter of a word of 3-8 letters (it has to be found: the length varies)."""
    word = "".join(rng.choice(_VARS) for _ in range(rng.randint(3, 8)))
    return f"last {word}", word[-1]


SKILLS_V2: Dict[str, Callable[[random.Random, int], Instance]] = {
    "hop1": hop(1),
    "hop2": hop(2),
    "hop3": hop(3),
    "succ": succ,
    "max": max_digit,
    "last": last,
    "first": first,
    "noise": noise,
    "noise_hop": noise_hop,
}


@dataclass(frozen=True)
class Suite:
    """A benchmark suite's planted structure (the report reads it) and its training sizes."""

    clusters: List[str]
    chains: Dict[str, List[str]]  # name -> members, easiest first
    distractors: List[str]  # unlearnable
    saturating: List[str] = field(default_factory=list)  # learnable within a few dozen steps
    sizes: Dict[str, int] = field(default_factory=dict)  # training samples per level; {} = data.skills

    def learnable(self) -> List[str]:
        """The clusters whose held-out loss the benchmark's targets average (all but the distractors)."""
        return [c for c in self.clusters if c not in self.distractors]


BENCH_V2 = Suite(
    clusters=["hop1", "hop2", "hop3", "succ", "max", "last", "first", "noise", "noise_hop"],
    chains={"hops": ["hop1", "hop2", "hop3"]},
    distractors=["noise", "noise_hop"],
    saturating=["first"],
    sizes={
        "hop1": 600,
        "hop2": 600,
        "hop3": 600,
        "succ": 600,
        "max": 600,
        "last": 600,
        "first": 2400,
        "noise": 1800,
        "noise_hop": 1800,
    },
)

BENCH_V1 = Suite(
    clusters=[
        "copy",
        "reverse",
        "sort",
        "add",
        "add3",
        "expr",
        "lookup",
        "lookup2",
        "lookup_max",
        "count",
        "compare",
        "brackets",
        "cjk_reverse",
        "noise",
    ],
    chains={
        "strings": ["copy", "reverse", "sort"],
        "arithmetic": ["add", "add3", "expr"],
        "lookup": ["lookup", "lookup2", "lookup_max"],
    },
    distractors=["noise"],
)

SUITES: Dict[str, Suite] = {"bench": BENCH_V2, "bench_v1": BENCH_V1}
