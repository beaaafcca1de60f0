"""The curriculum contract (DESIGN.md, "Curriculum"): plan -> observe -> state, pure and deterministic.

A curriculum never does I/O or communication. The trainer calls `plan(step)` before each optimizer
step; the sampler turns the plan into a global batch. After the step the trainer all-reduces the
per-cluster losses into `ClusterStats` (identical on every rank) and calls `observe(step, stats)`.
Because every rank starts from the same state and sees the same stats, every rank holds the same
curriculum without ever exchanging it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Protocol

import numpy as np

ALL = "all"  # the pool holding every training sample


@dataclass(frozen=True)
class Plan:
    """What the next global batch draws from: pool name -> weight (normalised by the sampler).

    Pools are named sets of sample indices the sampler knows: `all` and one per cluster.
    `info` is logged as `curriculum/<key>`.
    """

    weights: Dict[str, float]
    info: Dict[str, float] = field(default_factory=dict)


@dataclass
class ClusterStats:
    """All-reduced per-cluster signal for one optimizer step: sums and counts over every rank."""

    clusters: List[str]
    loss_sum: np.ndarray  # (C,) float64: sum over samples of their mean response-token loss
    count: np.ndarray  # (C,) float64: samples with at least one response token

    def mean_loss(self) -> Dict[str, float]:
        """Mean per-sample loss of each cluster that had samples this step."""
        return {c: float(s / n) for c, s, n in zip(self.clusters, self.loss_sum, self.count) if n > 0}


class Curriculum(Protocol):
    def plan(self, step: int) -> Plan: ...

    def observe(self, step: int, stats: ClusterStats) -> None: ...

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...
