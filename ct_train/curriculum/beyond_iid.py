"""`curriculum=beyond_iid`: Beyond IID (Zhao et al., 2024): choose the instruction mix by linear
programming over measured category interactions, then train along a dependency taxonomy.

    ct-train mode=interaction data.split_by_difficulty=true trainer.output_dir=outputs/ia   (the matrix)
    ct-train curriculum=beyond_iid curriculum.interaction_file=outputs/ia/interaction.json \
        data.split_by_difficulty=true curriculum.budget=2000

What the paper says: instruction categories help or hurt each other; pick the instruction set with
those interactions in mind by linear programming; train prerequisite categories first, following a
dependency taxonomy. Its full text was not available to us; everything below that is more specific
is inferred, and each choice is a key:
- Categories are the data's clusters (`data.split_by_difficulty` makes them (task, level) pairs).
- The matrix is `interaction.json` from `ct-train mode=interaction` (`estimate`: probe, gradient,
  or auto = probe when present). Benefit B = -E; category k's benefit per sample is
  b_k = sum_j w_j B[j][k] with w_j = `target_weights` (default `default_target_weight` for all).
- `mix=lp` solves lp_mix.solve_mix: `budget` samples in all (default every sample), `min_samples`,
  `share_bounds` ({category: [low, high]} shares of the kept set; `default_share_bounds` for the
  others). The objective is linear, so without share bounds the LP keeps every sample of a category
  with a positive benefit and none of one without (no diminishing returns); bounds such as
  `default_share_bounds=[0.02,0.1]` keep every category in the mix. `mix=all` keeps every sample.
  Which samples of a category are kept: `selection` = random | easiest | hardest (by the data's
  difficulty, or the initial model's loss with `difficulty=initial_loss`).
- The taxonomy is `prerequisites` ({category: [its prerequisites]}) or derived from B
  (taxonomy.derive_prerequisites, `dependency_threshold`); `order=dependency` trains its layers as
  stages, `reverse` the layers backwards (the control), `none` one stage (the LP mix, IID order).
- Stage s trains on its new categories and replays the earlier ones: a share `replay` of every batch
  comes from earlier stages' categories (in proportion to their kept counts). Stage lengths:
  `stage_steps`, `stage_epochs` (over the new samples), or trainer.max_steps split by new samples.
- `lr_schedule=continue` (default: one run) or `rewarm` per stage; stages are logged, evaluated and
  checkpointed like Phased IFT's phases (`curriculum/stage`).
This constructor reads the interaction file once (a static input like the data; every rank reads
the same file, so every rank builds the same curriculum); it is checked at config validation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ct_train.config import CurriculumConfig, Needs, check_choice, check_cluster_weights
from ct_train.curriculum import lp_mix, taxonomy
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
class BeyondIIDConfig(CurriculumConfig):
    name: str = "beyond_iid"
    interaction_file: Optional[str] = None  # interaction.json from `ct-train mode=interaction`
    estimate: str = "auto"  # auto | probe | gradient
    mix: str = "lp"  # lp | all
    target_weights: Any = None  # category -> w_j in the LP objective
    default_target_weight: float = 1.0
    budget: Optional[int] = None  # samples kept in all; None: up to every sample
    min_samples: Any = None  # category -> minimum kept
    share_bounds: Any = None  # category -> [low, high] share of the kept samples
    default_share_bounds: Optional[List[float]] = None  # [low, high] for categories not in share_bounds
    selection: str = "random"  # random | easiest | hardest: which samples of a category are kept
    difficulty: str = "data"  # for easiest/hardest: data | initial_loss
    prerequisites: Any = None  # category -> [prerequisite categories]; None: derived from the matrix
    dependency_threshold: float = 0.1  # share of the largest off-diagonal benefit an edge must exceed
    order: str = "dependency"  # dependency | reverse | none
    replay: float = 0.2  # share of every batch replaying earlier stages' categories
    stage_steps: Optional[List[int]] = None
    stage_epochs: Optional[List[float]] = None
    lr_schedule: str = "continue"  # continue | rewarm

    def validate(self) -> None:
        super().validate()
        for key, value, options in (
            ("estimate", self.estimate, ("auto", "probe", "gradient")),
            ("mix", self.mix, ("lp", "all")),
            ("selection", self.selection, ("random", "easiest", "hardest")),
            ("difficulty", self.difficulty, ("data", "initial_loss")),
            ("order", self.order, ("dependency", "reverse", "none")),
            ("lr_schedule", self.lr_schedule, ("continue", "rewarm")),
        ):
            check_choice(f"curriculum.{key}", value, options)
        check_cluster_weights("curriculum.target_weights", self.target_weights)
        check_cluster_weights("curriculum.min_samples", self.min_samples)
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"curriculum.budget={self.budget!r} must be > 0 (or null: every sample)")
        if not 0.0 <= self.replay < 1.0:
            raise ConfigError(f"curriculum.replay={self.replay!r} must be in [0, 1)")
        if self.share_bounds is not None:
            if not isinstance(self.share_bounds, dict):
                raise ConfigError(
                    f"curriculum.share_bounds must map categories to [low, high], got {self.share_bounds!r}"
                )
            for c, b in self.share_bounds.items():
                if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(isinstance(v, (int, float)) for v in b)):
                    raise ConfigError(f"curriculum.share_bounds.{c}={b!r} must be [low, high]")
        if self.default_share_bounds is not None and len(self.default_share_bounds) != 2:
            raise ConfigError(
                f"curriculum.default_share_bounds={list(self.default_share_bounds)!r} must be [low, high]"
            )
        if self.prerequisites is not None and not isinstance(self.prerequisites, dict):
            raise ConfigError(
                f"curriculum.prerequisites must map categories to lists of categories, got {self.prerequisites!r}"
            )
        needs_matrix = self.mix == "lp" or (self.order != "none" and self.prerequisites is None)
        if needs_matrix and not self.interaction_file:
            raise ConfigError(
                "curriculum=beyond_iid needs curriculum.interaction_file=.../interaction.json (from ct-train "
                "mode=interaction) for the LP mix or a derived taxonomy; or set curriculum.mix=all with "
                "curriculum.prerequisites"
            )
        if self.interaction_file and not os.path.isfile(self.interaction_file):
            raise ConfigError(f"curriculum.interaction_file={self.interaction_file}: no such file")

    def needs(self) -> Needs:
        return Needs(
            difficulty=self.difficulty if self.selection != "random" else "none",
            sets_length=self.stage_steps is not None or self.stage_epochs is not None,
            inputs={"curriculum.interaction_file": self.interaction_file} if self.interaction_file else {},
        )


def load_effect(saved: Dict[str, Any], path: str, estimate: str) -> tuple:
    """(categories, E, estimate) from an interaction.json's content (read by the caller: a curriculum
    does no I/O); ConfigError naming the file when it is not one."""
    try:
        if estimate == "auto":
            estimate = "probe" if "probe" in saved else "gradient"
        if estimate not in saved:
            raise ConfigError(f"curriculum.interaction_file={path} has no {estimate} estimate (curriculum.estimate)")
        return list(saved["categories"]), np.asarray(saved[estimate]["effect"], dtype=np.float64), estimate
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"curriculum.interaction_file={path}: not an interaction.json from ct-train mode=interaction ({e})"
        ) from None


@register("beyond_iid", BeyondIIDConfig)
class BeyondIIDCurriculum:
    def __init__(
        self,
        cfg: BeyondIIDConfig,
        index: DataIndex,
        seed: int = 0,
        total_steps: int = 0,
        global_batch_size: int = 0,
        inputs: Optional[Dict[str, Any]] = None,
    ) -> None:
        """`inputs`: the JSON files `cfg.needs().inputs` names, read by the caller (io.read_inputs)."""
        pools = index.cluster_pools()
        cats = [c for c in index.clusters if c in pools]
        available = np.array([len(pools[c]) for c in cats])
        self.benefit = None
        self.estimate = None
        if cfg.interaction_file:
            saved = (inputs or {}).get("curriculum.interaction_file")
            if saved is None:
                raise ValueError("beyond_iid: the caller reads curriculum.interaction_file and passes it in `inputs`")
            file_cats, effect, self.estimate = load_effect(saved, cfg.interaction_file, cfg.estimate)
            missing = [c for c in cats if c not in file_cats]
            if missing:
                raise ConfigError(
                    f"curriculum.interaction_file={cfg.interaction_file} has no entry for categories {missing} of "
                    f"the data (measured on other data? with data.split_by_difficulty?); it has {file_cats}"
                )
            pos = [file_cats.index(c) for c in cats]
            self.benefit = -effect[np.ix_(pos, pos)]
        for key, mapping in (
            ("target_weights", cfg.target_weights),
            ("min_samples", cfg.min_samples),
            ("share_bounds", cfg.share_bounds),
            ("prerequisites", cfg.prerequisites),
        ):
            unknown = sorted(set(mapping or {}) - set(cats))
            if unknown:
                raise ConfigError(f"curriculum.{key} names unknown categories {unknown}; the data has {cats}")
        # Step 2: the mix.
        counts = self._mix(cfg, cats, available)
        self.counts = dict(zip(cats, counts.tolist()))
        kept = [c for c, n in self.counts.items() if n > 0]
        self.category_pools = {
            c: self._select(pools[c], self.counts[c], index.difficulty, cfg.selection, seed) for c in kept
        }
        # Step 3: the order.
        self.dropped_edges: list = []
        if cfg.order == "none":
            stage_cats = [kept]
            self.prerequisites = {}
        else:
            if cfg.prerequisites is not None:
                prereq = {c: list(v) for c, v in cfg.prerequisites.items()}
                taxonomy.check_prerequisites(prereq, cats, "curriculum.prerequisites")
            else:
                prereq, _, self.dropped_edges = taxonomy.derive_prerequisites(
                    self.benefit, cats, cfg.dependency_threshold
                )
            self.prerequisites = {c: [p for p in v if p in kept] for c, v in prereq.items() if c in kept}
            stage_cats = taxonomy.layers(self.prerequisites, kept)
            if cfg.order == "reverse":
                stage_cats = stage_cats[::-1]
        self.stage_categories = stage_cats
        new_sizes = np.array([sum(self.counts[c] for c in layer) for layer in stage_cats])
        lengths = stage_lengths(
            "stage", len(stage_cats), total_steps, new_sizes, cfg.stage_steps, cfg.stage_epochs, global_batch_size
        )
        self.stages = stages_from_lengths("stage", lengths, rewarm=cfg.lr_schedule == "rewarm")
        self.replay = cfg.replay
        self.order = cfg.order

    def _mix(self, cfg: BeyondIIDConfig, cats: List[str], available: np.ndarray) -> np.ndarray:
        """Samples kept per category: the LP's choice (Zhao et al.'s step 2), or every sample."""
        if cfg.mix != "lp":
            self.objective, self.per_sample_benefit = None, {}
            return available.copy()
        w = np.array([float((cfg.target_weights or {}).get(c, cfg.default_target_weight)) for c in cats])
        per_sample = w @ self.benefit  # b_k = sum_j w_j B[j][k]
        mins = np.array([float((cfg.min_samples or {}).get(c, 0)) for c in cats])
        default = list(cfg.default_share_bounds) if cfg.default_share_bounds is not None else [0.0, 1.0]
        shares = np.array([list((cfg.share_bounds or {}).get(c, default)) for c in cats], dtype=np.float64)
        solution = lp_mix.solve_mix(per_sample, available, cats, cfg.budget, mins, shares)
        self.objective = solution.objective
        self.per_sample_benefit = dict(zip(cats, per_sample.tolist()))
        return solution.counts

    @staticmethod
    def _select(pool: np.ndarray, n: int, difficulty: np.ndarray, rule: str, seed: int) -> np.ndarray:
        """n samples of a category's pool: a seeded random subset, or the easiest/hardest by difficulty
        (ties broken by the same random order)."""
        order = np.random.default_rng([seed, 0xB11D, len(pool), int(pool[0])]).permutation(len(pool))
        if rule != "random":
            d = difficulty[pool][order]
            order = order[np.argsort(-d if rule == "hardest" else d, kind="stable")]
        return np.sort(pool[order[:n]])

    def plan_weights(self, k: int) -> Dict[str, float]:
        """Stage k's pool weights: its new categories share 1 - replay, earlier ones share `replay`
        (none in the first stage), each in proportion to its kept count."""
        new = self.stage_categories[k]
        old = [c for layer in self.stage_categories[:k] for c in layer]
        weights: Dict[str, float] = {}
        for group, share in ((new, 1.0 - self.replay if old else 1.0), (old, self.replay)):
            total = sum(self.counts[c] for c in group)
            for c in group:
                if share > 0 and total > 0:
                    weights[c] = share * self.counts[c] / total
        return weights

    # -- Staged: the stages' pools are fixed when the curriculum is built --------------------------
    def stage_candidates(self, k: int) -> Optional[np.ndarray]:
        return None

    def begin_stage(self, k: int, scores: Optional[np.ndarray] = None) -> None:
        return None

    def describe(self) -> str:
        parts = [f"{c} {n}" for c, n in self.counts.items()]
        how = (
            f"LP mix ({self.estimate} estimate, objective {self.objective:.4g})"
            if self.objective is not None
            else "all samples"
        )
        stages = "; ".join(
            f"{s.name} (steps {s.start}-{s.end}): {', '.join(cats)}"
            for s, cats in zip(self.stages, self.stage_categories)
        )
        dropped = f"; cycle-breaking dropped {[(a, b) for a, b, _ in self.dropped_edges]}" if self.dropped_edges else ""
        return f"beyond_iid: {how}, kept {', '.join(parts)}; {self.order} order: {stages}{dropped}"

    def pools(self) -> Dict[str, np.ndarray]:
        return dict(self.category_pools)

    def plan(self, step: int) -> Plan:
        k = stage_at(self.stages, step)
        return Plan(weights=self.plan_weights(k), info={"stage": k + 1}, exact=True)

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {"counts": self.counts, "stages": [[s.start, s.end] for s in self.stages]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        check_state("beyond_iid", state, **self.state_dict())
