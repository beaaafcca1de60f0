"""`curriculum=phased`: Phased Instruction Fine-Tuning (Pang et al., Findings of ACL 2024).

What the paper says: score each instruction's difficulty (GPT-4, 1-5), stratify the data into
subsets of rising difficulty, and uptrain on them in sequence with the standard SFT loss, each
phase continuing from the previous phase's checkpoint. Its Alpaca stages cut the GPT-4 scale at
1.5 and 3.5 (`thresholds=[1.5, 3.5]`). Its control forms phases of the same sizes with random
difficulty (`order=random`), which separates "easy to hard" from "several phases".

How it maps here:
- Phases are the run's stages (`base.Stage`): phase k trains only on its own samples (one pool),
  for `phase_steps[k]` steps, or `phase_epochs[k]` passes over its samples, or (neither set) its
  share of trainer.max_steps in proportion to its size (every phase the same number of epochs).
  With steps or epochs given, trainer.max_steps=-1 takes the phases' total.
- `thresholds` are difficulty values; without them the cuts are the `quantiles` of the training
  samples' difficulty (default equal-count phases), each placed between two distinct values (the
  one nearest its quantile), so ties are never split and difficulty levels 1-3 in 3 phases are one
  level a phase. A sample at a threshold goes to the lower phase; a phase left empty is an error
  before training starts.
- `lr_schedule=rewarm` (default) restarts warmup and decay in every phase, as a new fine-tuning run
  per phase would; `continue` runs one schedule over all phases. The optimizer's moments carry over
  between phases (the paper's separate runs would start each phase with a new optimizer; inferred,
  not configurable).
- The trainer evaluates and checkpoints at the end of every phase and logs `curriculum/phase`.
- `order=reverse` (hard first) is the anti-curriculum control.
- `replay` (default 0, the paper's setting): a share of every batch of phase k > 1 drawn from the
  earlier phases' samples (in proportion to their sizes), against forgetting: trained on one phase
  at a time, the tiny model's level-1 held-out loss rose from 1.50 to 2.50 over phases 2-3
  (docs/results.md). An extension, not the paper's method.
- Difficulty comes from the data (`difficulty=data`: data.difficulty_field, or a file written by
  `ct-train-score`), or from the initial model's loss (`difficulty=initial_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ct_train.config import CurriculumConfig, Needs, check_choice
from ct_train.curriculum.base import (
    ClusterStats,
    DataIndex,
    Plan,
    check_state,
    register,
    stage_at,
    stage_lengths,
    stages_from_lengths,
    stratify,
)
from ct_train.errors import ConfigError


@dataclass
class PhasedConfig(CurriculumConfig):
    name: str = "phased"
    phases: int = 3
    thresholds: Optional[List[float]] = None  # difficulty cut points (phases - 1 of them), e.g. [1.5, 3.5]
    quantiles: Optional[List[float]] = None  # cut points as quantiles; default k / phases
    order: str = "difficulty"  # difficulty (easy first) | random (the paper's control) | reverse
    phase_steps: Optional[List[int]] = None
    phase_epochs: Optional[List[float]] = None
    lr_schedule: str = "rewarm"  # rewarm | continue
    difficulty: str = "data"  # data | initial_loss
    replay: float = 0.0  # share of every later phase's batch drawn from the earlier phases

    def validate(self) -> None:
        super().validate()
        for key, value, options in (
            ("order", self.order, ("difficulty", "random", "reverse")),
            ("lr_schedule", self.lr_schedule, ("rewarm", "continue")),
            ("difficulty", self.difficulty, ("data", "initial_loss")),
        ):
            check_choice(f"curriculum.{key}", value, options)
        if self.phases < 1:
            raise ConfigError(f"curriculum.phases={self.phases!r} must be >= 1")
        if not 0.0 <= self.replay < 1.0:
            raise ConfigError(f"curriculum.replay={self.replay!r} must be in [0, 1)")
        if self.thresholds is not None and self.quantiles is not None:
            raise ConfigError("set curriculum.thresholds or curriculum.quantiles, not both")
        for key in ("thresholds", "quantiles"):
            cuts = getattr(self, key)
            if cuts is None:
                continue
            cuts = list(cuts)
            if len(cuts) != self.phases - 1:
                raise ConfigError(
                    f"curriculum.{key}={cuts!r} must give phases - 1 = {self.phases - 1} cut points "
                    f"(or set curriculum.phases={len(cuts) + 1})"
                )
            if any(b <= a for a, b in zip(cuts, cuts[1:])):
                raise ConfigError(f"curriculum.{key}={cuts!r} must increase")
            if key == "quantiles" and not all(0.0 < q < 1.0 for q in cuts):
                raise ConfigError(f"curriculum.quantiles={cuts!r} must lie in (0, 1)")

    def needs(self) -> Needs:
        return Needs(
            difficulty=self.difficulty, sets_length=self.phase_steps is not None or self.phase_epochs is not None
        )


def quantile_cuts(difficulty: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Cut points between distinct difficulty values, each the one whose share of samples below it is
    nearest its quantile (rising, never splitting a tie). On a few discrete values (levels 1, 2, 3 and
    3 phases) that is one phase per value: the quantiles themselves land on the values, 2 and 3, and
    left the last phase empty."""
    values = np.unique(difficulty)
    if len(values) < 2:
        return np.quantile(difficulty, qs) if len(difficulty) else qs
    mids = (values[1:] + values[:-1]) / 2
    share = np.searchsorted(np.sort(difficulty), mids, side="right") / len(difficulty)
    if len(mids) < len(qs):  # fewer distinct values than phases: plain quantiles (a phase stays empty)
        return np.quantile(difficulty, qs)
    cuts, last = [], -1
    for j, q in enumerate(qs):
        # after this cut, room for the cuts still to place
        allowed = np.arange(last + 1, len(mids) - (len(qs) - 1 - j))
        last = int(allowed[np.argmin(np.abs(share[allowed] - q))])
        cuts.append(mids[last])
    return np.asarray(cuts, dtype=np.float64)


def phase_of(difficulty: np.ndarray, phases: int, thresholds=None, quantiles=None) -> tuple:
    """(phase of each sample, the cut points used): by value thresholds or by quantiles."""
    if thresholds is None:
        qs = np.asarray(quantiles if quantiles is not None else np.arange(1, phases) / phases, dtype=np.float64)
        thresholds = quantile_cuts(difficulty, qs)
    cuts = np.asarray(thresholds, dtype=np.float64)
    return stratify(difficulty, cuts), cuts


@register("phased", PhasedConfig)
class PhasedCurriculum:
    def __init__(
        self, cfg: PhasedConfig, index: DataIndex, seed: int = 0, total_steps: int = 0, global_batch_size: int = 0
    ) -> None:
        d = index.difficulty
        if np.isnan(d).any():  # the trainer names the record first; this guards direct use
            raise ConfigError(f"curriculum=phased: {int(np.isnan(d).sum())} training samples have no difficulty")
        phase, cuts = phase_of(d, cfg.phases, cfg.thresholds, cfg.quantiles)
        sizes = np.bincount(phase, minlength=cfg.phases)
        for k, n in enumerate(sizes):
            if n == 0:
                lo = f"{cuts[k - 1]:g} < " if k > 0 else ""
                hi = f" <= {cuts[k]:g}" if k < len(cuts) else ""
                how = "curriculum.thresholds" if cfg.thresholds is not None else "the quantile cut points"
                raise ConfigError(
                    f"curriculum=phased: phase {k + 1} of {cfg.phases} ({lo}difficulty{hi}) has no training sample "
                    f"(phase sizes {sizes.tolist()}, cuts {[round(float(c), 4) for c in cuts]} from {how}; the "
                    f"difficulty spans {d.min():g}..{d.max():g}); change curriculum.thresholds or curriculum.phases"
                )
        order = np.argsort(phase, kind="stable")
        if cfg.order == "random":  # the same phase sizes, random membership (the paper's control)
            order = np.random.default_rng([seed, 0x9A5ED]).permutation(len(d))
        members = np.split(order, np.cumsum(sizes)[:-1])
        if cfg.order == "reverse":
            members, sizes = members[::-1], sizes[::-1]
        dtype = np.int32 if len(d) < 2**31 else np.int64
        self.phase_pools = {f"phase{k + 1}": np.sort(m).astype(dtype) for k, m in enumerate(members)}
        self.cuts = cuts
        self.order = cfg.order
        self.replay = cfg.replay
        lengths = stage_lengths(
            "phase", cfg.phases, total_steps, sizes, cfg.phase_steps, cfg.phase_epochs, global_batch_size
        )
        self.stages = stages_from_lengths("phase", lengths, rewarm=cfg.lr_schedule == "rewarm")
        self.mean_difficulty = [float(d[m].mean()) for m in self.phase_pools.values()]

    # -- Staged: the stages' pools are fixed when the curriculum is built --------------------------
    def stage_candidates(self, k: int) -> Optional[np.ndarray]:
        return None

    def begin_stage(self, k: int, scores: Optional[np.ndarray] = None) -> None:
        return None

    def describe(self) -> str:
        """One line for the run log: the phases' sizes, difficulty and steps."""
        parts = [
            f"{s.name}: {len(p):,} samples, mean difficulty {md:.3g}, steps {s.start}-{s.end}"
            for s, p, md in zip(self.stages, self.phase_pools.values(), self.mean_difficulty)
        ]
        return f"phased ({self.order} order, cuts {[round(float(c), 4) for c in self.cuts]}): " + "; ".join(parts)

    def pools(self) -> Dict[str, np.ndarray]:
        return dict(self.phase_pools)

    def plan(self, step: int) -> Plan:
        k = stage_at(self.stages, step)
        if k == 0 or self.replay == 0:
            return Plan(weights={self.stages[k].name: 1.0}, info={"phase": k + 1})
        # Replay: the earlier phases share `replay` of the batch by size (each earlier sample alike).
        earlier = {s.name: float(len(self.phase_pools[s.name])) for s in self.stages[:k]}
        total = sum(earlier.values())
        weights = {name: self.replay * n / total for name, n in earlier.items()}
        weights[self.stages[k].name] = 1.0 - self.replay
        return Plan(weights=weights, info={"phase": k + 1, "replay": self.replay})

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {
            "sizes": [len(p) for p in self.phase_pools.values()],
            "stages": [[s.start, s.end] for s in self.stages],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        check_state("phased", state, **self.state_dict())
