"""`curriculum=odm`: Online Data Mixing (Albalak et al. 2023, "Efficient Online Data Mixing For
Language Model Pre-Training"), EXP3 over clusters rewarded by their smoothed training loss.

The paper's algorithm, as implemented here (t counts optimizer steps from 1, K clusters):
  eps_t   = min(1/K, sqrt(ln K / (K t)))                          exploration rate
  pi(i)   = (1 - K eps_t) * softmax(eps_{t-1} * R)_i + eps_t     policy (eps_0 = 1/K)
  R_i    <- alpha * R_i + (1 - alpha) * L_i / pi(i)               for each cluster i trained this step
where L_i is cluster i's mean training loss this step (no extra forward: the loss the step computed
anyway) and alpha = `curriculum.alpha` (the paper's smoothing, 0.9). A cluster with a high loss is
one the model has not fit yet, so it is drawn more. The paper draws one domain per batch
(`curriculum.clusters_per_batch=1`); the default here draws 8 clusters per step (with replacement)
and splits the global batch between them, the same as `curriculum=it2acl`, because single-cluster
steps made the model forget the clusters not drawn for a while (docs/benchmarks.md) and the two
strategies should be compared on equal batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

from ct_train.config import CurriculumConfig, Needs
from ct_train.curriculum.base import ClusterStats, DataIndex, Plan, check_state, draw_arms, register, step_rng
from ct_train.errors import ConfigError

_SALT = 0x0D4  # separates this strategy's per-step generator from the sampler's


@dataclass
class ODMConfig(CurriculumConfig):
    name: str = "odm"
    alpha: float = 0.9
    clusters_per_batch: int = 8

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"curriculum.alpha={self.alpha!r} must be in [0, 1)")
        if self.clusters_per_batch < 1:
            raise ConfigError(f"curriculum.clusters_per_batch={self.clusters_per_batch!r} must be >= 1")

    def needs(self) -> Needs:
        return Needs(chooses_clusters=True)


def exploration_rate(t: int, k: int) -> float:
    """eps_t of the paper; eps_0 = 1/K."""
    return 1.0 / k if t == 0 else min(1.0 / k, math.sqrt(math.log(k) / (k * t)))


@register("odm", ODMConfig)
class ODMCurriculum:
    def __init__(
        self, cfg: ODMConfig, index: DataIndex, seed: int = 0, total_steps: int = 0, global_batch_size: int = 0
    ) -> None:
        self.cfg, self.index, self.seed = cfg, index, seed
        self.arms = index.present_clusters()
        self.col = np.array([index.clusters.index(c) for c in self.arms])
        self.rewards = np.zeros(len(self.arms))
        self._decision = None

    def pools(self) -> Dict[str, np.ndarray]:
        return {c: idx for c, idx in self.index.cluster_pools().items() if c in self.arms}

    def probs(self, step: int) -> np.ndarray:
        k, t = len(self.arms), step + 1
        if k == 1:
            return np.ones(1)
        eps_t, eps_prev = exploration_rate(t, k), exploration_rate(t - 1, k)
        z = eps_prev * self.rewards
        soft = np.exp(z - z.max())
        return (1.0 - k * eps_t) * soft / soft.sum() + eps_t

    def plan(self, step: int) -> Plan:
        probs = self.probs(step)
        draws = draw_arms(step_rng(self.seed, step, _SALT), probs, self.cfg.clusters_per_batch)
        self._decision = (step, probs)
        info = {f"prob/{c}": float(p) for c, p in zip(self.arms, probs)}
        return Plan({c: float(n) for c, n in zip(self.arms, draws) if n}, info=info, exact=True)

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        if self._decision is None or self._decision[0] != step:
            self.plan(step)
        probs = self._decision[1]
        loss = stats.mean_loss_array()[self.col]
        seen = np.isfinite(loss)
        a = self.cfg.alpha
        self.rewards[seen] = a * self.rewards[seen] + (1.0 - a) * loss[seen] / probs[seen]
        return {f"reward/{c}": float(r) for c, r, s in zip(self.arms, self.rewards, seen) if s}

    def state_dict(self) -> Dict[str, Any]:
        return {"arms": self.arms, "seed": self.seed, "rewards": self.rewards.tolist()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        check_state("odm", state, arms=self.arms, seed=self.seed)
        self.rewards = np.asarray(state["rewards"], dtype=np.float64)

    def describe(self) -> str:
        return ""
