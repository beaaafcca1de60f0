"""`curriculum=tapir`: Task-Aware Curriculum Planning for Instruction Refinement (Yue et al.,
Findings of EMNLP 2024), the training side of its multi-round distillation.

What the paper says: distil a student from a teacher LLM over several rounds. Each round scores how
hard every instruction is *for the current student* (Model Fitting Difficulty, MFD: a judge's score
of the teacher's response minus its score of the student's), keeps the instructions whose MFD
exceeds a threshold delta as the hard set, trains on a mix whose share of hard instructions rises
from round to round, and resamples tasks to a target ratio (up-weighting e.g. reasoning and code).
Between rounds the teacher expands and refines the data.

How it maps here:
- Rounds are the run's stages (`base.Stage`); each continues from the last round's weights (the
  trainer checkpoints and evaluates at every round's end). Round r lasts `rounds[r].steps` steps
  (0: an equal share of trainer.max_steps; all set: trainer.max_steps=-1 takes their total).
- Difficulty per round (`difficulty`): `data` = the round's data carries it (a judge gap from
  data.judge_fields=[teacher_score, student_score], or a difficulty field); `loss` = the current
  student's per-sample loss, re-scored by the trainer at the round's start on every rank (the scores
  are cached in the output dir, so a resumed round keeps its hard set); `auto` = data when every
  sample of the round has one, else loss.
- Hard set: difficulty > `delta`; with `delta` unset, above the round's `hard_quantile` (a loss has no
  fixed scale). The round's batch takes a share alpha_r of hard samples: `rounds[r].alpha`, else
  `alpha_start` rising linearly to `alpha_end` over the rounds.
- Task ratio: cluster c's share of every batch is proportional to `task_weights[c]`
  (`default_task_weight` for clusters not listed; without task_weights, to the cluster's size); inside
  a cluster the hard/easy split is alpha_r (all of it to the other set when one is empty). Every
  batch is split exactly in these proportions (each pool's share rounded down or up, unbiased).
  `loss_weights` scale a cluster's per-sample losses in the objective (a weighted mean).
- Teacher expansion and refinement call a proprietary LLM: data preparation, outside training. A
  round may read its own file (`rounds[r].data`), e.g. what the teacher produced for it; the round
  then draws only from that file (its samples are never held out for eval).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ct_train.config import CurriculumConfig, Needs, as_path_list, check_choice, check_cluster_weights
from ct_train.curriculum.base import (
    ClusterStats,
    DataIndex,
    Plan,
    check_state,
    register,
    stage_at,
    stage_lengths,
    stages_from_lengths,
)
from ct_train.errors import ConfigError


@dataclass
class TapirRound:
    steps: int = 0  # 0: an equal share of trainer.max_steps
    alpha: Optional[float] = None  # share of hard samples; None: alpha_start -> alpha_end
    data: Any = None  # this round's own data file(s); None: the run's data


@dataclass
class TapirConfig(CurriculumConfig):
    name: str = "tapir"
    rounds: List[TapirRound] = field(default_factory=lambda: [TapirRound(), TapirRound(), TapirRound()])
    alpha_start: float = 0.3
    alpha_end: float = 0.7
    delta: Optional[float] = None  # hard: difficulty > delta; None: above hard_quantile
    hard_quantile: float = 0.5
    difficulty: str = "auto"  # auto | data | loss
    task_weights: Any = None  # cluster -> relative share of the batch; None: proportional to size
    default_task_weight: float = 1.0
    loss_weights: Any = None  # cluster -> weight of its per-sample losses in the objective
    lr_schedule: str = "continue"  # continue | rewarm (restart warmup and decay every round)

    def validate(self) -> None:
        super().validate()
        for key, value, options in (
            ("difficulty", self.difficulty, ("auto", "data", "loss")),
            ("lr_schedule", self.lr_schedule, ("continue", "rewarm")),
        ):
            check_choice(f"curriculum.{key}", value, options)
        if not self.rounds:
            raise ConfigError("curriculum.rounds must list at least one round")
        for r, rnd in enumerate(self.rounds):
            if rnd.steps < 0:
                raise ConfigError(f"curriculum.rounds.{r}.steps={rnd.steps!r} must be >= 0")
            if rnd.alpha is not None and not 0.0 <= rnd.alpha <= 1.0:
                raise ConfigError(f"curriculum.rounds.{r}.alpha={rnd.alpha!r} must be in [0, 1]")
            as_path_list(f"curriculum.rounds.{r}.data", rnd.data)
        if any(r.steps for r in self.rounds) and not all(r.steps for r in self.rounds):
            raise ConfigError("curriculum.rounds: set steps for every round or for none")
        for key in ("alpha_start", "alpha_end", "hard_quantile"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"curriculum.{key}={getattr(self, key)!r} must be in [0, 1]")
        for key in ("task_weights", "loss_weights"):
            check_cluster_weights(f"curriculum.{key}", getattr(self, key))
        if self.default_task_weight < 0:
            raise ConfigError(f"curriculum.default_task_weight={self.default_task_weight!r} must be >= 0")

    def needs(self) -> Needs:
        # difficulty=data: the trainer checks every sample has one before training; else scored per round
        return Needs(
            difficulty="data" if self.difficulty == "data" else "none",
            data_parts=self.data_parts(),
            sets_length=all(r.steps for r in self.rounds),
            loss_weights=dict(self.loss_weights) if self.loss_weights else None,
        )

    def alphas(self) -> List[float]:
        n = len(self.rounds)
        ramp = np.linspace(self.alpha_start, self.alpha_end, n) if n > 1 else [self.alpha_start]
        return [float(r.alpha) if r.alpha is not None else float(a) for r, a in zip(self.rounds, ramp)]

    def data_parts(self) -> Dict[str, List[str]]:
        """Part name -> files, for the rounds that read their own data."""
        return {
            f"round{r + 1}": as_path_list(f"curriculum.rounds.{r}.data", rnd.data)
            for r, rnd in enumerate(self.rounds)
            if rnd.data
        }


@register("tapir", TapirConfig)
class TapirCurriculum:
    def __init__(
        self, cfg: TapirConfig, index: DataIndex, seed: int = 0, total_steps: int = 0, global_batch_size: int = 0
    ) -> None:
        self.cfg = cfg
        self.index = index
        self.alphas = cfg.alphas()
        parts = cfg.data_parts()
        self.candidates: List[np.ndarray] = []
        for r in range(len(cfg.rounds)):
            part = f"round{r + 1}" if f"round{r + 1}" in parts else ""
            idx = index.part_indices(part)
            if len(idx) == 0:
                where = f"curriculum.rounds.{r}.data" if part else "the run's data"
                raise ConfigError(f"curriculum=tapir: round {r + 1} has no training sample ({where})")
            self.candidates.append(idx)
        present = sorted({index.clusters[c] for idx in self.candidates for c in np.unique(index.cluster_ids[idx])})
        for key in ("task_weights", "loss_weights"):
            unknown = sorted(set(getattr(cfg, key) or {}) - set(index.clusters))
            if unknown:
                raise ConfigError(f"curriculum.{key} names unknown clusters {unknown}; the data has {present}")
        steps = [r.steps for r in cfg.rounds] if cfg.needs().sets_length else None
        lengths = stage_lengths(
            "round", len(cfg.rounds), total_steps, np.ones(len(cfg.rounds)), steps, None, global_batch_size
        )
        self.stages = stages_from_lengths("round", lengths, rewarm=cfg.lr_schedule == "rewarm")
        for k in range(len(cfg.rounds)):  # a round that must use the data's difficulty fails now, not later
            if cfg.difficulty == "data":
                self.stage_candidates(k)
        self.current = -1
        self.round_pools: Dict[str, np.ndarray] = {}
        self.weights: Dict[str, float] = {}
        self.info: Dict[str, float] = {}

    # -- stages ---------------------------------------------------------------------------------
    def stage_candidates(self, k: int) -> Optional[np.ndarray]:
        """Samples the trainer must score with the current model before round k (None: the data's)."""
        idx = self.candidates[k]
        has_data = bool(np.isfinite(self.index.difficulty[idx]).all())
        if self.cfg.difficulty == "data" and not has_data:
            missing = idx[~np.isfinite(self.index.difficulty[idx])]
            raise ConfigError(
                f"curriculum=tapir difficulty=data: {len(missing)} samples of round {k + 1} have no difficulty "
                f"(first: training sample {int(missing[0])}); set data.judge_fields or data.difficulty_field, "
                "or use curriculum.difficulty=loss"
            )
        if self.cfg.difficulty == "loss" or (self.cfg.difficulty == "auto" and not has_data):
            return idx
        return None

    def begin_stage(self, k: int, scores: Optional[np.ndarray] = None) -> Dict[str, float]:
        """Build round k's pools from its difficulty (the current model's `scores` over
        `stage_candidates(k)`, or the data's); returns what to log about the round."""
        idx = self.candidates[k]
        d = self.index.difficulty[idx] if scores is None else np.asarray(scores, dtype=np.float64)
        if len(d) != len(idx):
            raise ValueError(f"round {k + 1}: {len(d)} scores for {len(idx)} samples")
        delta = self.cfg.delta if self.cfg.delta is not None else float(np.quantile(d, self.cfg.hard_quantile))
        hard = d > delta
        alpha = self.alphas[k]
        cluster_ids = self.index.cluster_ids[idx]
        sizes = np.bincount(cluster_ids, minlength=len(self.index.clusters))
        if self.cfg.task_weights:
            share = np.array(
                [float(self.cfg.task_weights.get(c, self.cfg.default_task_weight)) for c in self.index.clusters]
            )
            share = np.where(sizes > 0, share, 0.0)
        else:
            share = sizes.astype(np.float64)
        if share.sum() <= 0:
            raise ConfigError(f"curriculum.task_weights give every cluster of round {k + 1} weight 0")
        share = share / share.sum()
        dtype = np.int32 if len(self.index.cluster_ids) < 2**31 else np.int64
        pools: Dict[str, np.ndarray] = {}
        weights: Dict[str, float] = {}
        for c, name in enumerate(self.index.clusters):
            if share[c] <= 0:
                continue
            mine = cluster_ids == c
            sets = {"hard": idx[mine & hard].astype(dtype), "easy": idx[mine & ~hard].astype(dtype)}
            split = {"hard": alpha, "easy": 1.0 - alpha}
            if len(sets["hard"]) == 0 or len(sets["easy"]) == 0:  # one set empty: the other takes the share
                split = {s: float(len(v) > 0) for s, v in sets.items()}
            for s, members in sets.items():
                if len(members) and split[s] > 0:
                    pools[f"r{k + 1}/{name}/{s}"] = members
                    weights[f"r{k + 1}/{name}/{s}"] = float(share[c] * split[s])
        self.current, self.round_pools, self.weights = k, pools, weights
        hard_weight = sum(w for p, w in weights.items() if p.endswith("/hard"))
        self.info = {"round": k + 1, "alpha": alpha, "hard_share": hard_weight / sum(weights.values())}
        return {
            "round": k + 1,
            "delta": float(delta),
            "hard": int(hard.sum()),
            "easy": int((~hard).sum()),
            "alpha": alpha,
            "hard_share": self.info["hard_share"],
            "scored_by": "loss" if scores is not None else "data",
        }

    # -- the curriculum contract ----------------------------------------------------------------
    def pools(self) -> Dict[str, np.ndarray]:
        if self.current < 0:
            raise RuntimeError("tapir: begin_stage() must build a round's pools first")
        return dict(self.round_pools)

    def plan(self, step: int) -> Plan:
        k = stage_at(self.stages, step)
        if k != self.current:
            raise RuntimeError(f"tapir: step {step} is in round {k + 1} but round {self.current + 1} is built")
        return Plan(weights=dict(self.weights), info=dict(self.info), exact=True)

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {"round": self.current, "stages": [[s.start, s.end] for s in self.stages], "weights": self.weights}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        check_state("tapir", state, **self.state_dict())

    def describe(self) -> str:
        return ""
