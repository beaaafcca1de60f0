"""The curriculum contract (DESIGN.md, "Curriculum"): pools -> plan -> observe -> state, pure and deterministic.

A curriculum never does I/O or communication. It is built from a `DataIndex` (cluster id and
difficulty of every training sample) and names the sample *pools* it plans over (`pools()`). The
trainer calls `plan(step)` before each optimizer step; the sampler turns the plan into a global
batch. After the step the trainer all-reduces the per-cluster losses into `ClusterStats` (identical
on every rank) and calls `observe(step, stats)`. Because every rank starts from the same state and
sees the same stats, every rank holds the same curriculum without ever exchanging it.

Randomness a curriculum needs (a bandit's draw) comes from a generator that is a pure function of
(seed, step): there is no hidden generator state to save or to get wrong on resume.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, runtime_checkable

import numpy as np

from ct_train.apportion import largest_remainder
from ct_train.errors import ConfigError
from ct_train.sampler import Plan  # noqa: F401  (re-exported: a curriculum's plan is the sampler's input)

ALL = "all"  # the pool holding every training sample


@dataclass
class ClusterStats:
    """All-reduced per-cluster signal for one optimizer step: sums and counts over every rank.

    `gain` is the prediction gain per cluster (mean loss before the update minus after it) when the
    run measures one (`curriculum.signal=pg|spg`); NaN for a cluster without samples this step.
    `share` is each cluster's share of the step's loss denominator (tokens with token-normalised loss),
    known on every rank from the global batch. `probe_loss` is the mean held-out probe loss per
    cluster after this step's update, on the steps a probe ran (`curriculum.signal=lp`); on the
    probes that also scored the prompt-swapped twins, `probe_info` is each cluster's mean twin loss
    minus own-prompt loss (what the model takes from the prompt) and `probe_info_se` its standard error.
    """

    clusters: List[str]
    loss_sum: np.ndarray  # (C,) float64: sum over samples of their mean response-token loss
    count: np.ndarray  # (C,) float64: samples with at least one response token
    gain: Optional[np.ndarray] = None  # (C,) float64
    share: Optional[np.ndarray] = None  # (C,) float64, sums to 1
    probe_loss: Optional[np.ndarray] = None  # (C,) float64, NaN for a cluster without probe samples
    probe_info: Optional[np.ndarray] = None  # (C,) float64 nats, NaN without two twin pairs
    probe_info_se: Optional[np.ndarray] = None  # (C,) float64

    def mean_loss(self) -> Dict[str, float]:
        """Mean per-sample loss of each cluster that had samples this step."""
        return {c: float(s / n) for c, s, n in zip(self.clusters, self.loss_sum, self.count) if n > 0}

    def mean_loss_array(self) -> np.ndarray:
        """(C,) mean per-sample loss, NaN where a cluster had no sample."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.loss_sum / np.maximum(self.count, 1.0), np.nan)


@dataclass
class DataIndex:
    """What a curriculum may know about the training split: one entry per sample, no text."""

    clusters: List[str]  # every cluster name of the data (train or eval)
    cluster_ids: np.ndarray  # (N,) int: index into `clusters`
    difficulty: np.ndarray  # (N,) float64, NaN where unknown
    part_ids: Optional[np.ndarray] = None  # (N,) int: index into `parts` (a TAPIR round's own file)
    parts: List[str] = field(default_factory=lambda: [""])  # "" = the run's data (data.path/sources)

    def part_indices(self, part: str) -> np.ndarray:
        """Sample indices of one part of the data ("" = data.path/sources; all samples without parts)."""
        if self.part_ids is None:
            return np.arange(len(self.cluster_ids)) if part == "" else np.empty(0, dtype=np.int64)
        if part not in self.parts:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self.part_ids == self.parts.index(part))

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.cluster_ids, minlength=len(self.clusters))

    def present_clusters(self) -> List[str]:
        """Clusters with at least one training sample; the others are excluded with a warning."""
        sizes = self.sizes
        empty = [c for c, n in zip(self.clusters, sizes) if n == 0]
        if empty:
            warnings.warn(f"clusters with no training sample are excluded from the curriculum: {empty}", stacklevel=2)
        return [c for c, n in zip(self.clusters, sizes) if n > 0]

    def cluster_pools(self) -> Dict[str, np.ndarray]:
        """One pool per non-empty cluster (sample indices, int32 when they fit); `iid` builds `all`.

        One stable argsort instead of a scan per cluster: 10M samples in 100 clusters take ~1 s.
        """
        dtype = np.int32 if len(self.cluster_ids) < 2**31 else np.int64
        order = np.argsort(self.cluster_ids, kind="stable").astype(dtype)
        bounds = np.cumsum(self.sizes)[:-1]
        return {name: idx for name, idx in zip(self.clusters, np.split(order, bounds)) if len(idx)}


@dataclass(frozen=True)
class Stage:
    """A stretch of the run a staged curriculum (phased, tapir) trains in one go: steps [start, end).

    The trainer evaluates and checkpoints at every stage's end, restarts the LR schedule at its start
    when `rewarm`, and logs the boundary. A curriculum with stages implements `Staged`.
    """

    name: str
    start: int
    end: int
    rewarm: bool = True


def stage_at(stages: List[Stage], step: int) -> int:
    """Index of the stage that step `step` (0-based, the step about to run) belongs to."""
    for k, stage in enumerate(stages):
        if step < stage.end:
            return k
    return len(stages) - 1


def stage_lengths(
    key: str,
    n: int,
    total_steps: int,
    sizes: np.ndarray,
    steps: Optional[List[int]],
    epochs: Optional[List[float]],
    global_batch_size: int,
) -> List[int]:
    """Steps of each of `n` stages: given (`steps`), from epochs over each stage's samples, or
    `total_steps` split in proportion to the stage sizes. ConfigError when they do not add up."""

    if steps is not None and epochs is not None:
        raise ConfigError(f"set {key}_steps or {key}_epochs, not both")
    for name, values in ((f"{key}_steps", steps), (f"{key}_epochs", epochs)):
        if values is not None and (len(values) != n or any(v <= 0 for v in values)):
            raise ConfigError(f"curriculum.{name}={list(values)!r} must give {n} numbers > 0, one per {key}")
    if steps is not None:
        lengths = [int(v) for v in steps]
    elif epochs is not None:
        lengths = [max(1, math.ceil(e * int(size) / global_batch_size)) for e, size in zip(epochs, sizes)]
    else:
        if total_steps < n:
            raise ConfigError(f"trainer.max_steps={total_steps} is fewer than the {n} {key}s")
        lengths = largest_remainder(total_steps, np.asarray(sizes, dtype=np.float64))
        while (lengths == 0).any():  # every stage trains at least one step; the longest gives it
            lengths[np.argmax(lengths)] -= 1
            lengths[np.argmin(lengths)] += 1
        lengths = lengths.tolist()
    if total_steps > 0 and sum(lengths) != total_steps:
        given = f"curriculum.{key}_steps" if steps is not None else f"curriculum.{key}_epochs"
        raise ConfigError(
            f"{given} add up to {sum(lengths)} steps but trainer.max_steps={total_steps}; "
            f"set trainer.max_steps={sum(lengths)} (or -1 to take the {key}s' length)"
        )
    return lengths


def stages_from_lengths(prefix: str, lengths: List[int], rewarm: bool) -> List[Stage]:
    ends = np.cumsum(lengths).tolist()
    starts = [0] + ends[:-1]
    return [Stage(f"{prefix}{k + 1}", int(s), int(e), rewarm) for k, (s, e) in enumerate(zip(starts, ends))]


def stratify(difficulty: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Stratum of each sample, 0 = easiest: stratum k holds thresholds[k-1] < d <= thresholds[k].

    Samples tied at a threshold all go to the lower stratum: a tie is never split between strata.
    """
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64), difficulty, side="left")


class Curriculum(Protocol):
    """The contract every strategy implements (DESIGN.md, "Curriculum"). What it needs from the run
    (signal, difficulty, data parts, static inputs) its config declares in `needs()`."""

    def pools(self) -> Dict[str, np.ndarray]: ...

    def plan(self, step: int) -> Plan: ...

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        """Update from the step's all-reduced signal; returns metrics to log as `curriculum/<key>`."""
        ...

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...

    def describe(self) -> str:
        """A line for the run's log about what it built (its mix, phases, stages); "" for none."""
        ...


@runtime_checkable
class Staged(Protocol):
    """A curriculum trained in stages (phased, tapir, beyond_iid); the trainer checks it once.

    `stage_candidates(k)`: the samples to score with the current model when stage k starts (None:
    nothing to score). `begin_stage(k, scores)` is called when stage k starts (and for the stage a
    resumed run is in); it returns what to log when it built that stage's pools from the model's
    scores (TAPIR's rounds), None when the stage's pools were fixed from the start.
    """

    stages: List[Stage]

    def stage_candidates(self, k: int) -> Optional[np.ndarray]: ...

    def begin_stage(self, k: int, scores: Optional[np.ndarray] = None) -> Optional[Dict[str, Any]]: ...


@dataclass(frozen=True)
class CurriculumSpec:
    config_cls: type
    cls: Callable[..., Curriculum]


CURRICULA: Dict[str, CurriculumSpec] = {}


def register(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: make a strategy selectable as `curriculum=<name>`."""

    def wrap(cls: type) -> type:
        CURRICULA[name] = CurriculumSpec(config_cls, cls)
        return cls

    return wrap


def draw_arms(rng: np.random.Generator, probs: np.ndarray, draws: int) -> np.ndarray:
    """How many of the step's `draws` pick each arm (a multinomial draw from the policy)."""
    return rng.multinomial(draws, probs / probs.sum())


def difficulty_bands(difficulty: np.ndarray, n_bands: int) -> np.ndarray:
    """Band of each sample, 0 = easiest: one band per distinct value when there are at most
    `n_bands` of them, else equal-count quantile bands (ties stay together, so bands are renumbered
    to the non-empty ones)."""
    levels = np.unique(difficulty)
    if len(levels) <= n_bands:
        return np.searchsorted(levels, difficulty)
    edges = np.quantile(difficulty, np.arange(1, n_bands) / n_bands)
    band = np.searchsorted(edges, difficulty, side="right")
    return np.unique(band, return_inverse=True)[1]


def step_rng(seed: int, step: int, salt: int) -> np.random.Generator:
    """The generator of one decision: a pure function of (seed, step, salt), identical on every rank."""
    return np.random.default_rng([seed, step, salt])


def check_state(name: str, state: Dict[str, Any], **expected: Any) -> None:
    """Refuse a saved state from a different setup (other arms, bands, seed) with a clear message."""
    for key, value in expected.items():
        if state.get(key) != value:
            raise ValueError(f"{name} state has {key}={state.get(key)!r}, this run has {value!r}")
