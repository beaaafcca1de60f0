"""`curriculum=it2acl`: the 2-phase automated curriculum of IT2ACL (Huang & Xiong, LREC-COLING 2024).

What the paper says (abstract and summary; its full text was not available to us): instruction tuning
on 70 datasets grouped into 16 task clusters, with a 2-phase automated curriculum whose syllabus is
decided by a loss-driven progress signal, the *instruction prediction gain*; easy-to-hard and
self-adjusting; it names Graves et al. 2017 ("Automated Curriculum Learning for Neural Networks") as
its tradition.

What we inferred, and the key that changes each choice:

- Phase 1, task level: a non-stationary bandit, Exp3.S, over task clusters (Graves' choice), with
  Graves' defaults `eps`=0.05 and `beta`=0. The bandit is in `bandit.py`.
  `eta`=0.1 (Graves used 1e-3 for runs of ~10^5-10^6 steps). An arm's weight moves by about
  eta * r / pi per pull; with ten clusters (pi ~ 0.1) one pull with the top reward moves it by ~1,
  i.e. the arm's odds grow by e. Instruction tuning runs for hundreds to a few thousand steps, so the
  curriculum must react within a handful of pulls per cluster. On a planted best cluster that
  switches at step 150 (`python -m ct_train.curriculum.bench eta --draws 8`), eta=0.1 put p >= 0.87
  on the best cluster by step 150 and >= 0.92 after the switch in all 10 seeds; 0.03 was half as
  fast, and 0.3 / 1.0 locked onto a wrong cluster in some seeds (docs/benchmarks.md).
- Rewards: raw gains rescaled to [-1, 1] by the 20th/80th percentiles (`reward_quantiles`) of the last
  `reward_history` raw gains of all arms (Graves keeps the whole history; a window follows a
  non-stationary signal).
- The signal (`signal`): `pg` = prediction gain, the mean per-sample loss of the step's batch before
  the update minus after it (one extra no-grad forward per step); `spg` = the same on a fresh batch of
  the same clusters and bands, not trained on (two extra forwards); `loss` = no extra forward: the
  drop of a pool's training loss since the last time it was drawn (a cheap, noisier learning-progress
  estimate). Per-cluster sums and counts are all-reduced, so every rank updates an identical bandit.
- Batches: each step draws `clusters_per_batch` arms (with replacement) and the global batch is split
  between them; each drawn cluster's gain is credited to its arm with the importance weight
  n_i / (m pi(i)). Default 8, not Graves' one task per batch: on `make train` (10 clusters, 400
  steps) one cluster per step ended at held-out loss 2.456 and exact match 0.102 (the clusters not
  drawn for a while are forgotten), 8 per step at 1.366 and 0.173 (IID: 1.294 and 0.129;
  docs/benchmarks.md).
- Phase 2, instruction level: inside a drawn cluster the samples are split into `phase2_bands`
  difficulty bands (the data's difficulty; with `phase2_difficulty=initial_loss`, or `auto` when some
  sample has none, the initial model's loss on each sample, computed once and cached in the output
  dir). `phase2=bandit`: a second Exp3.S per cluster over its bands, rewarded by the same gain,
  easy-to-hard: band b's logit carries a fixed prior -`phase2_easy_prior` x b, so a harder band is
  drawn more only once its gain beats the easier ones'; `phase2=pacing`: a competence
  function unlocks bands in order (`pacing`=sqrt|linear from `pacing_start` to 1 over `pacing_steps`,
  0 = the whole run; Platanios et al. 2019) and samples uniformly among unlocked samples;
  `phase2=none`: uniform inside the cluster. "2-phase" may also mean two stages in time: with
  `phase2_start_step`=S the instruction-level syllabus starts at step S (uniform inside clusters
  before).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ct_train.config import CurriculumConfig, check_choice
from ct_train.curriculum.bandit import Exp3S, QuantileRewardScaler
from ct_train.curriculum.base import (
    ClusterStats,
    DataIndex,
    Plan,
    check_state,
    difficulty_bands,
    draw_arms,
    register,
    step_rng,
)
from ct_train.errors import ConfigError

_SALT = 0x17AC1  # separates this strategy's per-step generator from the sampler's


@dataclass
class IT2ACLConfig(CurriculumConfig):
    name: str = "it2acl"
    signal: str = "pg"  # pg | spg | loss
    eta: float = 0.1
    eps: float = 0.05
    beta: float = 0.0
    reward_history: int = 1000
    reward_quantiles: List[float] = field(default_factory=lambda: [20.0, 80.0])
    clusters_per_batch: int = 8
    phase2: str = "bandit"  # bandit | pacing | none
    phase2_bands: int = 3
    phase2_difficulty: str = "auto"  # auto | data | initial_loss
    phase2_eta: Optional[float] = None  # the band bandit's eta; None = eta
    phase2_easy_prior: float = 1.0
    phase2_start_step: int = 0
    pacing: str = "sqrt"  # sqrt | linear
    pacing_start: float = 0.33
    pacing_steps: int = 0  # 0 = trainer.max_steps

    def validate(self) -> None:
        super().validate()
        for key, value, options in (
            ("signal", self.signal, ("pg", "spg", "loss")),
            ("phase2", self.phase2, ("bandit", "pacing", "none")),
            ("phase2_difficulty", self.phase2_difficulty, ("auto", "data", "initial_loss")),
            ("pacing", self.pacing, ("sqrt", "linear")),
        ):
            check_choice(f"curriculum.{key}", value, options)
        if not 0.0 <= self.eps <= 1.0:
            raise ConfigError(f"curriculum.eps={self.eps!r} must be in [0, 1]")
        if self.eta <= 0 or (self.phase2_eta is not None and self.phase2_eta <= 0):
            raise ConfigError("curriculum.eta and curriculum.phase2_eta must be > 0")
        lo_hi = list(self.reward_quantiles)
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= 100:
            raise ConfigError(f"curriculum.reward_quantiles={lo_hi!r} must be two percentiles low < high in [0, 100]")
        for key in ("reward_history", "clusters_per_batch", "phase2_bands"):
            if getattr(self, key) < 1:
                raise ConfigError(f"curriculum.{key}={getattr(self, key)!r} must be >= 1")
        for key in ("phase2_start_step", "pacing_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"curriculum.{key}={getattr(self, key)!r} must be >= 0")
        if not 0.0 < self.pacing_start <= 1.0:
            raise ConfigError(f"curriculum.pacing_start={self.pacing_start!r} must be in (0, 1]")

    def difficulty_source(self) -> str:
        return "none" if self.phase2 == "none" else self.phase2_difficulty


def competence(step: int, total: int, start: float, kind: str) -> float:
    """Share of the difficulty range unlocked at `step` (Platanios et al. 2019), from `start` to 1."""
    x = min(1.0, step / max(total, 1))
    c = math.sqrt(start**2 + (1.0 - start**2) * x) if kind == "sqrt" else start + (1.0 - start) * x
    return min(1.0, c)


@register("it2acl", IT2ACLConfig)
class IT2ACLCurriculum:
    def __init__(
        self, cfg: IT2ACLConfig, index: DataIndex, seed: int = 0, total_steps: int = 0, global_batch_size: int = 0
    ) -> None:
        self.cfg, self.index, self.seed = cfg, index, seed
        self.signal = cfg.signal  # read by the trainer: which extra forwards the step needs
        self.arms = index.present_clusters()
        self.col = np.array([index.clusters.index(c) for c in self.arms])
        self.bandit = Exp3S(len(self.arms), cfg.eta, cfg.eps, cfg.beta)
        self.scaler = QuantileRewardScaler(cfg.reward_history, *cfg.reward_quantiles)
        self.pacing_steps = cfg.pacing_steps or total_steps
        # Phase-2 bands: per cluster, the sample indices of each band, easiest first.
        self.bands: Dict[str, List[np.ndarray]] = {}
        for c, idx in index.cluster_pools().items():
            if c not in self.arms:
                continue
            if cfg.phase2 == "none":
                self.bands[c] = [idx]
                continue
            d = index.difficulty[idx]
            if not np.isfinite(d).all():
                raise ConfigError(
                    f"curriculum.phase2={cfg.phase2} needs a difficulty for every sample; cluster {c!r} has "
                    f"{int((~np.isfinite(d)).sum())} without (set data.difficulty_field, or "
                    "curriculum.phase2_difficulty=initial_loss, or curriculum.phase2=none)"
                )
            band = difficulty_bands(d, cfg.phase2_bands)
            order = np.argsort(band, kind="stable")
            self.bands[c] = np.split(idx[order], np.cumsum(np.bincount(band))[:-1])
        prior = cfg.phase2_easy_prior
        self.band_bandits = {
            c: Exp3S(len(b), cfg.phase2_eta or cfg.eta, cfg.eps, cfg.beta, bias=-prior * np.arange(len(b)))
            for c, b in self.bands.items()
        }
        self.last_loss: Dict[str, float] = {}  # signal=loss: a pool's loss when it was last drawn
        self._decision: Optional[tuple] = None

    # -- pools ------------------------------------------------------------------------------------
    @staticmethod
    def pool_name(cluster: str, band: int) -> str:
        return f"{cluster}@{band}"

    def pools(self) -> Dict[str, np.ndarray]:
        return {self.pool_name(c, b): idx for c, bands in self.bands.items() for b, idx in enumerate(bands)}

    # -- decisions --------------------------------------------------------------------------------
    def _band_weights(self, cluster: str, step: int, rng: np.random.Generator) -> Dict[int, float]:
        """Phase 2: the band(s) the cluster's share of the batch comes from, with weights."""
        sizes = np.array([len(b) for b in self.bands[cluster]], dtype=np.float64)
        mode = self.cfg.phase2 if step >= self.cfg.phase2_start_step else "none"
        if mode == "none" or len(sizes) == 1:
            return {b: s / sizes.sum() for b, s in enumerate(sizes)}
        if mode == "pacing":
            c = competence(step, self.pacing_steps, self.cfg.pacing_start, self.cfg.pacing)
            unlocked = max(1, math.ceil(c * len(sizes) - 1e-9))
            return {b: sizes[b] / sizes[:unlocked].sum() for b in range(unlocked)}
        probs = self.band_bandits[cluster].probs()
        return {int(rng.choice(len(probs), p=probs)): 1.0}

    def _decide(self, step: int) -> tuple:
        if self._decision is not None and self._decision[0] == step:
            return self._decision
        rng = step_rng(self.seed, step, _SALT)
        probs = self.bandit.probs()
        draws = draw_arms(rng, probs, self.cfg.clusters_per_batch)
        bands = {self.arms[i]: self._band_weights(self.arms[i], step, rng) for i in np.flatnonzero(draws)}
        band_probs = {c: self.band_bandits[c].probs() for c in bands}
        self._decision = (step, probs, draws, bands, band_probs)
        return self._decision

    def plan(self, step: int) -> Plan:
        _, probs, draws, bands, _ = self._decide(step)
        weights: Dict[str, float] = {}
        info = {f"prob/{c}": float(p) for c, p in zip(self.arms, probs)}
        for i in np.flatnonzero(draws):
            c = self.arms[i]
            for b, w in bands[c].items():
                weights[self.pool_name(c, b)] = float(draws[i]) * w
            info[f"picked/{c}"] = float(draws[i])
            info[f"band/{c}"] = float(max(bands[c]))  # the hardest band drawn from
        return Plan(weights, info=info, exact=True)

    # -- learning ---------------------------------------------------------------------------------
    def _raw_gains(self, stats: ClusterStats, bands: Dict[str, Dict[int, float]]) -> Dict[str, float]:
        """Each drawn cluster's progress signal this step (absent when it had no sample)."""
        if self.signal in ("pg", "spg"):
            if stats.gain is None:
                raise ValueError(f"curriculum.signal={self.signal} needs the trainer's prediction gain")
            g = stats.gain[self.col]
            return {c: float(g[i]) for i, c in enumerate(self.arms) if c in bands and np.isfinite(g[i])}
        loss = stats.mean_loss_array()[self.col]
        out = {}
        for i, c in enumerate(self.arms):
            if c not in bands or not np.isfinite(loss[i]):
                continue
            key = self.pool_name(c, max(bands[c])) if len(bands[c]) == 1 else c
            if key in self.last_loss:
                out[c] = self.last_loss[key] - float(loss[i])
            self.last_loss[key] = float(loss[i])
        return out

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        _, probs, draws, bands, band_probs = self._decide(step)
        gains = self._raw_gains(stats, bands)
        self.scaler.add(gains.values())
        rewards = dict(zip(gains, self.scaler.scale_many(list(gains.values()))))
        r = np.array([rewards.get(c, 0.0) for c in self.arms])
        credited = np.where([c in rewards for c in self.arms], draws, 0)
        self.bandit.update(r, credited, probs)
        if self.cfg.phase2 == "bandit" and step >= self.cfg.phase2_start_step:
            for c, chosen in bands.items():
                if c in rewards and len(chosen) == 1:
                    one_hot = np.zeros(len(self.bands[c]))
                    one_hot[next(iter(chosen))] = 1
                    self.band_bandits[c].update(np.full(len(one_hot), rewards[c]), one_hot, band_probs[c])
        metrics = {f"gain/{c}": g for c, g in gains.items()}
        metrics.update({f"reward/{c}": v for c, v in rewards.items()})
        return metrics

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "arms": self.arms,
            "seed": self.seed,
            "band_sizes": {c: [len(b) for b in bands] for c, bands in self.bands.items()},
            "bandit": self.bandit.state_dict(),
            "band_bandits": {c: b.state_dict() for c, b in self.band_bandits.items()},
            "scaler": self.scaler.state_dict(),
            "last_loss": dict(self.last_loss),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        sizes = {c: [len(b) for b in bands] for c, bands in self.bands.items()}
        check_state("it2acl", state, arms=self.arms, seed=self.seed, band_sizes=sizes)
        self.bandit.load_state_dict(state["bandit"])
        for c, b in self.band_bandits.items():
            b.load_state_dict(state["band_bandits"][c])
        self.scaler.load_state_dict(state["scaler"])
        self.last_loss = dict(state["last_loss"])
        self._decision = None
