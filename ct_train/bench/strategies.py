"""The strategies `ct-train-bench` compares, by name.

Every registered curriculum (`ct_train.curriculum.CURRICULA`) is a strategy with the override
`curriculum=<name>`: a new curriculum joins the benchmark by registering itself. A strategy that
needs more than its curriculum (an input measured first, data split differently) registers a
`prepare` step here: it runs once per benchmark, before that strategy's runs, and returns the
overrides the runs add.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from ct_train.data.skills import GENERATED

# prepare(context) -> extra Hydra overrides; context: see ct_train.bench.Context
Prepare = Callable[["object"], List[str]]


@dataclass(frozen=True)
class Strategy:
    name: str
    overrides: Sequence[str]
    prepare: Optional[Prepare] = None


_EXTRA: Dict[str, Strategy] = {}


def register_strategy(name: str, overrides: Sequence[str] = (), prepare: Optional[Prepare] = None) -> None:
    """Give a curriculum's strategy extra overrides or a prepare step (a strategy is a curriculum)."""
    from ct_train.curriculum import CURRICULA

    if name not in CURRICULA:
        raise ValueError(f"bench strategy {name!r} is not a registered curriculum")
    _EXTRA[name] = Strategy(name, tuple(overrides) or (f"curriculum={name}",), prepare)


def registered() -> Dict[str, Strategy]:
    """Every strategy, IID first, then in registration order."""
    from ct_train.curriculum import CURRICULA

    out = {name: Strategy(name, (f"curriculum={name}",)) for name in CURRICULA}
    out.update(_EXTRA)
    order = ["iid"] + [n for n in out if n != "iid"]
    return {n: out[n] for n in order if n in out}


def _prepare_beyond_iid(ctx) -> List[str]:
    """Beyond IID trains on a mix and an order chosen from measured category interactions: measure
    them once (the gradient estimate after a warmup on the IID mix; the skill suite's categories are
    (cluster, level) pairs), outside the training budget, like Phased IFT's scores come from outside.
    The LP keeps every category between half and twice its uniform share, so it cannot drop one."""
    from ct_train.interaction import INTERACTION_FILE, measure

    split = ctx.cfg.data.name in GENERATED and ctx.cfg.data.skills.levels > 1  # (task, level) categories
    out = os.path.join(ctx.root, "prepare", "beyond_iid")
    overrides = (
        [
            "mode=interaction",
            "interaction.method=gradient",
            f"interaction.warmup_steps={max(1, ctx.cfg.trainer.max_steps // 4)}",
            f"trainer.output_dir={out}",
        ]
        + (["data.split_by_difficulty=true"] if split else [])
        + (["interaction.grad_samples=8"] if ctx.cfg.bench.quick else [])
    )
    path = os.path.join(out, INTERACTION_FILE)
    result = ctx.cached(path, overrides)
    if result is None:
        cfg, resolved = ctx.compose(overrides)
        result = measure(cfg, resolved)
        ctx.mark_cached(path, overrides)
    ctx.prepare_s["beyond_iid"] = result["seconds"]
    k = len(result["categories"])
    return (["data.split_by_difficulty=true"] if split else []) + [
        f"curriculum.interaction_file={path}",
        f"curriculum.default_share_bounds=[{0.5 / k:.6f},{2.0 / k:.6f}]",
    ]


register_strategy("beyond_iid", prepare=_prepare_beyond_iid)

# The static baseline users would pick: clusters drawn by size^(1/2) (temperature sampling, as in
# multilingual and multi-task mixes). At temperature 1 it is IID in expectation and says nothing.
register_strategy("mixture", overrides=["curriculum=mixture", "curriculum.temperature=2"])


def _prepare_phased(ctx) -> List[str]:
    """A suite that scores its skills on a few difficulty values (suite v2: 1, 2, 3) gets one phase per
    value, cut at the midpoints; equal-count quantile cuts would leave a phase empty on such ties."""
    from ct_train.data.bench_suite import SUITES

    suite = SUITES.get(ctx.cfg.data.name)
    values = sorted(set(suite.difficulty.values())) if suite is not None and suite.difficulty else []
    if len(values) < 2:
        return []
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:])]
    return [f"curriculum.phases={len(values)}", f"curriculum.thresholds=[{','.join(f'{c:g}' for c in cuts)}]"]


register_strategy("phased", prepare=_prepare_phased)
