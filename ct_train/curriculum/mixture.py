"""`curriculum=mixture`: static per-cluster sampling weights, the data mixing TRL, axolotl and
LLaMA-Factory offer.

`curriculum.weights={math: 2, chat: 1}` gives the listed clusters those relative weights and every
other cluster `curriculum.default_weight` (0 leaves it out). Without `weights`, cluster i is drawn
with probability proportional to size_i ** (1 / temperature): temperature 1 is proportional to size
(IID in expectation), a large temperature is uniform over clusters (the multilingual-LM recipe).
Each sample of the global batch picks its cluster independently from these probabilities; with
`curriculum.exact=true` every batch is split in proportion to them instead (each cluster's share
rounded down or up, unbiased), which removes the composition noise of short runs (the interaction
probes use it).

`curriculum=balanced` is the same draw with every cluster alike (uniform over clusters, whatever their
sizes): stratified sampling, the static mix the data-mixing literature finds hardest to beat. It is
the baseline an adaptive curriculum must beat, so `ct-train-bench` always runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

from ct_train.config import CurriculumConfig, check_cluster_weights
from ct_train.curriculum.base import ClusterStats, DataIndex, Plan, register
from ct_train.errors import ConfigError

BALANCED = "balanced"


@dataclass
class MixtureConfig(CurriculumConfig):
    name: str = "mixture"
    weights: Any = None  # cluster -> relative weight (`Any`, so `curriculum.weights={a: 1}` merges)
    default_weight: float = 1.0
    temperature: float = 1.0
    exact: bool = False  # split every batch by the weights (systematic rounding), not a draw per sample

    def validate(self) -> None:
        super().validate()
        check_cluster_weights("curriculum.weights", self.weights)
        if self.default_weight < 0:
            raise ConfigError(f"curriculum.default_weight={self.default_weight!r} must be >= 0")
        if self.temperature <= 0:
            raise ConfigError(f"curriculum.temperature={self.temperature!r} must be > 0")


@register("mixture", MixtureConfig)
class MixtureCurriculum:
    def __init__(
        self, cfg: MixtureConfig, index: DataIndex, seed: int = 0, total_steps: int = 0, global_batch_size: int = 0
    ) -> None:
        self.index = index
        present = index.present_clusters()
        sizes = dict(zip(index.clusters, index.sizes.tolist()))
        if cfg.weights:
            unknown = sorted(set(cfg.weights) - set(index.clusters))
            if unknown:
                raise ConfigError(f"curriculum.weights names unknown clusters {unknown}; the data has {index.clusters}")
            raw = {c: float(cfg.weights.get(c, cfg.default_weight)) for c in present}
        else:
            raw = {c: sizes[c] ** (1.0 / cfg.temperature) for c in present}
        total = sum(raw.values())
        if total <= 0:
            raise ConfigError("curriculum.weights give every cluster with training samples weight 0")
        self.probs = {c: w / total for c, w in raw.items() if w > 0}
        self.exact = cfg.exact

    def pools(self) -> Dict[str, np.ndarray]:
        return {c: idx for c, idx in self.index.cluster_pools().items() if c in self.probs}

    def plan(self, step: int) -> Plan:
        return Plan(weights=dict(self.probs), info={f"prob/{c}": p for c, p in self.probs.items()}, exact=self.exact)

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {"probs": self.probs}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("probs") != self.probs:
            raise ValueError(f"mixture state has probabilities {state.get('probs')}, this run has {self.probs}")

    def describe(self) -> str:
        return ""


@dataclass
class BalancedConfig(CurriculumConfig):
    name: str = BALANCED
    exact: bool = False  # split every batch evenly (systematic rounding), not a draw per sample


@register(BALANCED, BalancedConfig)
class BalancedCurriculum:
    """Uniform over the clusters that have training samples: a mixture whose weights are all 1."""

    def __init__(
        self, cfg: BalancedConfig, index: DataIndex, seed: int = 0, total_steps: int = 0, global_batch_size: int = 0
    ) -> None:
        # size ** (1 / inf) = size ** 0 = 1 for every cluster: exactly uniform.
        self.mix = MixtureCurriculum(MixtureConfig(temperature=math.inf, exact=cfg.exact), index)

    def pools(self) -> Dict[str, np.ndarray]:
        return self.mix.pools()

    def plan(self, step: int) -> Plan:
        return self.mix.plan(step)

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return self.mix.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.mix.load_state_dict(state)

    def describe(self) -> str:
        return ""
