"""`curriculum=it2acl`: the 2-phase automated curriculum of IT2ACL (Huang & Xiong, LREC-COLING 2024).

What the paper says (abstract and summary; its full text was not available to us): instruction tuning
on 70 datasets grouped into 16 task clusters, with a 2-phase automated curriculum whose syllabus is
decided by a loss-driven progress signal, the *instruction prediction gain*; easy-to-hard and
self-adjusting; it names Graves et al. 2017 ("Automated Curriculum Learning for Neural Networks") as
its tradition.

What we inferred, and the key that changes each choice:

- Phase 1, task level: a non-stationary bandit, Exp3.S, over task clusters (Graves' choice), with
  Graves' `eps`=0.05 and `beta`=0. The bandit is in `bandit.py`. The batch is drawn from the policy
  mixed with a uniform share `uniform_mix`=0.3 (every cluster keeps at least 0.3/N of the draws, so
  the signal of every cluster stays measured and a wrong early lead cannot starve the others).
  `share_cap` (default 0: none) is a ceiling on any cluster's share of the draws, share_cap / N,
  the excess shared out in proportion: with a larger eta it stopped one cluster taking half the
  batch, but did not beat the defaults on the reported seeds (docs/results.md, 2026-12-04).
- Step size: `eta`=null takes eta x (bandit updates in the run) = 4 (`ETA_HORIZON`; 6 with
  `reward_scale=noise`, `NOISE_ETA_HORIZON`, tuned on seeds 1-2): the expected
  log-odds drift of an arm is eta x its mean reward per update whatever its probability, so over
  the run an arm with mean reward +1 can gain e^4 over one with 0 and never becomes an argmax after
  a few dozen steps (eta=0.1 over 300 steps did: docs/results.md, 2026-11-22). An explicit eta wins.
- Rewards: each cluster's raw gain is divided by its share of the step's loss denominator
  (`reward_per_share`): a cluster's loss drop after an update grows with the share of the batch it
  held, and Exp3.S's importance weight n_i/(m pi(i)) already multiplies by that share, so without
  this the reward rewards the action itself and one cluster takes the batch (rich get richer;
  `python benchmarks/curriculum_micro.py share`). With token-normalised loss the share is the token
  share, so long answers are not favoured for their length. `reward_normalization=relative` also
  divides by the cluster's loss (the fraction of its loss removed), so a high-loss cluster is not
  rewarded on absolute scale. Then (`reward_scale=quantile`, the default for pg/spg/loss) raw gains
  -> [-1, 1] by the 20th/80th percentiles (`reward_quantiles`) of the last `reward_history` raw gains
  of all arms (Graves keeps the whole history; a window follows a non-stationary signal). With
  `signal=lp` the default is `reward_scale=noise`: the reward is the t-statistic of the probe-loss
  slope over the window (its standard error from the probe's own residual noise, an EMA over windows,
  floored at 0.01 nats), clipped at +-`reward_t_full` and scaled to [-1, 1]. Pooled percentiles made
  a distractor's noisy probe look like progress half the time (its share never left uniform,
  docs/results.md); judged against its own noise, a flat or rising held-out loss earns ~0 or less. t
  is scale-free, so no per-share division applies there; the uniform floor bounds the share
  confound. When every cluster has a reward (all were in the batch, or the held-out probe) the update
  is full-information (no importance weight).
- The signal (`signal`): `lp` = held-out learning progress (Teacher-Student Curriculum Learning's
  validation slope, Matiisen et al. 2017; ALP-GMM): a probe split of `probe_per_cluster` samples per
  cluster, disjoint from training and evaluation, scored every `probe_every_steps` steps by the
  distributed no-grad pass (from the run's second half every `probe_every_steps` x `probe_backoff`);
  progress = minus the least-squares slope of the probe loss over the last `lp_window` probes, per
  unit share of the training the cluster got in that window. It is signed:
  the held-out loss of an unlearnable cluster rises while the model fits its noise, so an absolute
  value would reward it. `pg` = prediction gain, the paper's signal: the mean per-sample loss of the
  step's batch before the update minus after it (one extra no-grad forward per step); `spg` = the
  same on a fresh batch of the same clusters and bands, not trained on (two extra forwards); `loss` =
  no extra forward: the drop of a pool's training loss since the last time it was drawn, per unit
  share trained since. Per-cluster sums and counts are all-reduced, so every rank updates an
  identical bandit.
- What the prompt tells (`learnability_every_steps`, 30 by default): a held-out fall of loss is not
  always learning the task. A cluster whose answers do not depend on their prompts (random labels)
  still falls for the whole run while the model learns the answers' marginal (0.01 nats per 100
  steps at 2.2 nats on suite v3's `noise`: significant against the probe's noise, so it was rewarded
  as often as the slow learnable clusters). Every `learnability_every_steps` the probe pass also
  scores each probe response after another probe prompt of its cluster (`data.prompt_swap`; one
  pass, twice the samples per forward) and takes the mean loss difference, the information the
  model draws from the prompt (IFD's contrast, Li et al. 2024, with a same-cluster prompt as the
  unconditioned case), in standard errors t. A positive reward is multiplied by min(1, t /
  `learnability_z`=2), so a fall without information earns nothing; a rise is punished as before.
  Unlearnable clusters stay at t ~ 0 (`noise` 0.00 +- 0.01 nats all run); learnable ones gain
  information as they are learned. It cannot tell an unlearnable cluster from a learnable one on a
  plateau (`count` has none until its jump either): both get no positive reward until then, the
  uniform floor keeps them drawn. A cluster whose answer rightly ignores the prompt (one fixed
  reply) is treated like a distractor too; the floor is enough to learn a constant.
- Batches: each step draws `clusters_per_batch` arms (with replacement; default one per sample of
  the global batch) and the global batch is split between them; each drawn cluster's reward is
  credited to its arm with the importance weight n_i / (m pi(i)), pi the sampling policy (after the
  uniform mix). One draw per sample, not Graves' one task per batch nor our earlier 8: batches that
  hold fewer clusters cost held-out loss on the first benchmark suite (tiny model, 300 steps, tuning
  seed 1, uniform-looking policies: learnable loss 1.551 with 8 draws, 1.467 with 32; IID 1.374),
  and on `make train` one cluster per step ended at held-out loss 2.456, 8 per step at 1.366
  (the clusters not drawn for a while are forgotten; docs/benchmarks.md).
- Phase 2, instruction level: inside a drawn cluster the samples are split into `phase2_bands`
  difficulty bands (the data's difficulty; with `phase2_difficulty=initial_loss`, or `auto` when some
  sample has none, the initial model's loss on each sample, computed once and cached in the output
  dir). `phase2=bandit`: a second Exp3.S per cluster over its bands, rewarded by the same gain,
  easy-to-hard: band b's logit carries a fixed prior -`phase2_easy_prior` x b, so a harder band is
  drawn more only once its gain beats the easier ones'; `phase2=pacing`: a competence
  function unlocks bands in order (`pacing`=sqrt|linear from `pacing_start` to 1 over `pacing_steps`,
  0 = the whole run; Platanios et al. 2019) and samples uniformly among unlocked samples;
  `phase2=none`: uniform inside the cluster. With `signal=lp` the band bandit is credited each step
  with its cluster's latest held-out reward. "2-phase" may also mean two stages in time: with
  `phase2_start_step`=S the instruction-level syllabus starts at step S (uniform inside clusters
  before).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ct_train.config import CurriculumConfig, Needs, check_choice, probe_due
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
ETA_HORIZON = 4.0  # eta x bandit updates in the run, when curriculum.eta is null
# ... with reward_scale=noise (rewards near 0 for most clusters most of the time, so a longer reach;
# 6 / 60 probe updates = 0.1 was the tuning seeds' choice, docs/results.md; with probe_backoff=2 a
# 600-step run has 45 probes, so 0.133)
NOISE_ETA_HORIZON = 6.0
LEGACY_ETA = 0.1  # eta when the run's length is unknown (total_steps <= 0)
# reward_scale=noise: each cluster's probe noise (residual sd around the window's line) is an EMA over
# windows with this weight on the newest; and never taken below NOISE_FLOOR nats, so that a saturated
# cluster's tiny, steady drift (0.010 -> 0.008) is not "significant" progress.
NOISE_EMA = 0.2
NOISE_FLOOR = 0.01


@dataclass
class IT2ACLConfig(CurriculumConfig):
    name: str = "it2acl"
    signal: str = "lp"  # lp | pg | spg | loss
    eta: Optional[float] = None  # None: ETA_HORIZON / bandit updates in the run
    eps: float = 0.05
    beta: float = 0.0
    # Exp3.S's fixed share per update: null = 1/t (Graves: the weights settle as evidence accumulates);
    # a constant forgets at that rate, so a cluster that stops progressing (learned) loses its lead
    forget: Optional[float] = None
    uniform_mix: float = 0.3  # share of every batch's draws spread uniformly over the clusters
    share_cap: float = 0.0  # no cluster gets more than share_cap / N of the draws (0: no ceiling)
    reward_per_share: bool = True  # divide each gain by the cluster's share of the loss denominator
    reward_normalization: str = "pooled"  # pooled | relative (also divide by the cluster's loss)
    reward_history: int = 1000
    reward_quantiles: List[float] = field(default_factory=lambda: [20.0, 80.0])
    # auto (noise with signal=lp, else quantile) | noise (signal=lp: the probe slope's t-statistic) |
    # quantile (Graves' pooled percentiles of the raw gains)
    reward_scale: str = "auto"
    # reward_scale=noise: the t-statistic that earns the full reward +-1 (1: a one-standard-error fall
    # already counts in full, so the policy moves within the run's ~45 probes; tuned on seeds 1-2)
    reward_t_full: float = 1.0
    # reward_scale=noise: the probe noise (nats) is never taken below this, so a nearly learned cluster's
    # small steady fall (0.04 -> 0.01) is not "significant" progress
    reward_noise_floor: float = NOISE_FLOOR
    # reward_scale=noise: the fall that counts as progress, in percent of the cluster's loss per 100
    # steps; t is taken on the slope beyond it. 0: any significant fall. A cluster that only drifts
    # down (an unlearnable one learning its answers' marginal) is then not rewarded for the drift.
    lp_min_rate: float = 0.0
    clusters_per_batch: Optional[int] = None  # arms drawn per step; None: one per sample of the global batch
    probe_per_cluster: int = 16  # signal=lp: held-out probe samples per cluster
    probe_every_steps: int = 10  # signal=lp: steps between probe passes (one bandit update each)
    lp_window: int = 10  # signal=lp: probes the slope is fitted over (100 steps at the default period)
    # signal=lp: from the run's second half the probe period is this many times longer (1: never), so
    # the probe costs less where the slopes are slower and need a longer span to be seen anyway
    # (2: 45 probes in 600 steps, not 60: about 4.8% of step time by the 2026-12-04 per-probe cost, not re-measured)
    probe_backoff: float = 2.0
    # signal=lp: a probe pass at a multiple of this step also scores the probe's prompt-swapped twins
    # (data.prompt_swap): what the model takes from each cluster's prompts, in nats, with its standard
    # error. A fall of held-out loss earns its reward only in the measure that this information is
    # there, in full from `learnability_z` standard errors (a fall without it is the model learning
    # the answers' marginal, which is all an unlearnable cluster has to give). 0: never measured.
    learnability_every_steps: int = 30
    learnability_z: float = 2.0
    phase2: str = "none"  # none | bandit | pacing
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
            ("signal", self.signal, ("lp", "pg", "spg", "loss")),
            ("reward_normalization", self.reward_normalization, ("pooled", "relative")),
            ("reward_scale", self.reward_scale, ("auto", "quantile", "noise")),
            ("phase2", self.phase2, ("bandit", "pacing", "none")),
            ("phase2_difficulty", self.phase2_difficulty, ("auto", "data", "initial_loss")),
            ("pacing", self.pacing, ("sqrt", "linear")),
        ):
            check_choice(f"curriculum.{key}", value, options)
        for key in ("eps", "uniform_mix"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"curriculum.{key}={getattr(self, key)!r} must be in [0, 1]")
        if self.share_cap != 0 and self.share_cap < 1:
            raise ConfigError(
                f"curriculum.share_cap={self.share_cap!r} must be 0 (no ceiling) or >= 1 (a multiple of the "
                "uniform share 1/N)"
            )
        if (self.eta is not None and self.eta <= 0) or (self.phase2_eta is not None and self.phase2_eta <= 0):
            raise ConfigError("curriculum.eta and curriculum.phase2_eta must be > 0 (or null: from the run length)")
        lo_hi = list(self.reward_quantiles)
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= 100:
            raise ConfigError(f"curriculum.reward_quantiles={lo_hi!r} must be two percentiles low < high in [0, 100]")
        for key in ("reward_history", "clusters_per_batch", "phase2_bands", "probe_per_cluster", "probe_every_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"curriculum.{key}={getattr(self, key)!r} must be >= 1")
        if self.reward_scale == "noise" and self.signal != "lp":
            raise ConfigError(
                f"curriculum.reward_scale=noise judges the held-out probe's slope against its noise: it needs "
                f"curriculum.signal=lp (got {self.signal!r})"
            )
        if self.lp_min_rate < 0:
            raise ConfigError(f"curriculum.lp_min_rate={self.lp_min_rate!r} must be >= 0 (percent per 100 steps)")
        if self.forget is not None and not 0.0 < self.forget < 1.0:
            raise ConfigError(f"curriculum.forget={self.forget!r} must be in (0, 1) (or null: 1/t)")
        if self.reward_noise_floor <= 0:
            raise ConfigError(f"curriculum.reward_noise_floor={self.reward_noise_floor!r} must be > 0 (nats)")
        if self.reward_t_full <= 0:
            raise ConfigError(f"curriculum.reward_t_full={self.reward_t_full!r} must be > 0")
        if self.probe_backoff < 1:
            raise ConfigError(
                f"curriculum.probe_backoff={self.probe_backoff!r} must be >= 1 (1: the same period throughout)"
            )
        if self.learnability_every_steps < 0:
            raise ConfigError(
                f"curriculum.learnability_every_steps={self.learnability_every_steps!r} must be >= 0 (0: off)"
            )
        if self.learnability_z <= 0:
            raise ConfigError(f"curriculum.learnability_z={self.learnability_z!r} must be > 0 (standard errors)")
        if self.lp_window < 2:
            raise ConfigError(f"curriculum.lp_window={self.lp_window!r} must be >= 2 (a slope needs two probes)")
        for key in ("phase2_start_step", "pacing_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"curriculum.{key}={getattr(self, key)!r} must be >= 0")
        if not 0.0 < self.pacing_start <= 1.0:
            raise ConfigError(f"curriculum.pacing_start={self.pacing_start!r} must be in (0, 1]")

    @property
    def scale(self) -> str:
        """The reward scale in force (`auto` resolved)."""
        if self.reward_scale == "auto":
            return "noise" if self.signal == "lp" else "quantile"
        return self.reward_scale

    def needs(self) -> Needs:
        lp = self.signal == "lp"
        return Needs(
            signal=self.signal,
            difficulty="none" if self.phase2 == "none" else self.phase2_difficulty,
            difficulty_key="curriculum.phase2_difficulty",
            probe_per_cluster=self.probe_per_cluster if lp else 0,
            probe_every_steps=self.probe_every_steps if lp else 0,
            probe_backoff=self.probe_backoff,
            probe_twin_every_steps=self.learnability_every_steps if lp else 0,
            chooses_clusters=True,
        )


def lp_slope(steps: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Least-squares slope of each column of `losses` (P, A) over `steps` (P,): loss per step."""
    x = steps - steps.mean()
    return (x[:, None] * (losses - losses.mean(axis=0))).sum(axis=0) / max(float((x**2).sum()), 1e-12)


def slope_t(
    steps: np.ndarray,
    losses: np.ndarray,
    noise_var: np.ndarray,
    min_fall: float | np.ndarray = 0.0,
    floor: float = NOISE_FLOOR,
) -> tuple:
    """Minus the probe-loss slope of each column over `steps`, as a t-statistic against the probe noise.

    Returns (t, window_var): `window_var` is each column's residual variance around its least-squares
    line (nan with fewer than 3 probes); `noise_var` is the caller's running estimate, used for the
    standard error so that a 4-probe window (2 degrees of freedom) does not make t erratic.
    `min_fall` (loss per step, per column): the fall not counted as progress (t of the rest).
    `floor` (nats): the least noise a probe is taken to have.
    """
    x = steps - steps.mean()
    sxx = max(float((x**2).sum()), 1e-12)
    slope = lp_slope(steps, losses)
    resid = losses - losses.mean(axis=0) - slope[None, :] * x[:, None]
    dof = len(steps) - 2
    window_var = (resid**2).sum(axis=0) / dof if dof > 0 else np.full(losses.shape[1], np.nan)
    var = np.where(np.isfinite(noise_var), noise_var, window_var)
    se = np.sqrt(np.maximum(np.nan_to_num(var, nan=0.0), floor**2) / sxx)
    return (-slope - min_fall) / se, window_var


def cap_shares(p: np.ndarray, cap: float) -> np.ndarray:
    """`p` with no entry above `cap` (>= 1/N): the excess goes to the uncapped entries in proportion to
    their own mass (water-filling), so their ratios are kept. At most N rounds: each caps one more."""
    p = np.asarray(p, dtype=np.float64).copy()
    capped = np.zeros(len(p), dtype=bool)
    for _ in range(len(p)):
        over = ~capped & (p > cap)
        if not over.any():
            break
        capped |= over
        free = (1.0 - cap * capped.sum()) / max(p[~capped].sum(), 1e-300)
        p = np.where(capped, cap, p * free)
    return p


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
        self.draws_per_step = cfg.clusters_per_batch or max(global_batch_size, 1)
        self.signal = cfg.signal
        self.arms = index.present_clusters()
        self.col = np.array([index.clusters.index(c) for c in self.arms])
        updates = total_steps if cfg.signal != "lp" else self._probe_count(cfg, total_steps)
        horizon = NOISE_ETA_HORIZON if cfg.scale == "noise" else ETA_HORIZON
        self.eta = cfg.eta if cfg.eta is not None else (horizon / max(updates, 1) if total_steps > 0 else LEGACY_ETA)
        band_eta = cfg.phase2_eta or (cfg.eta if cfg.eta is not None else self._per_step_eta(total_steps))
        self.bandit = Exp3S(len(self.arms), self.eta, cfg.eps, cfg.beta, alpha=cfg.forget)
        if cfg.forget is not None and total_steps > 0 and cfg.forget <= 1.0 / max(updates, 1):
            warnings.warn(
                f"curriculum.forget={cfg.forget:g} changes nothing in this run: Exp3.S forgets at max(forget, 1/t) "
                f"and 1/t >= 1/{updates} (its bandit updates) throughout; raise it above {1.0 / max(updates, 1):.3g} "
                "or leave it null",
                stacklevel=2,
            )
        # A share below this (a cluster barely drawn) does not blow its per-share reward up further.
        self.share_floor = 0.25 / len(self.arms)
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
            c: Exp3S(len(b), band_eta, cfg.eps, cfg.beta, bias=-prior * np.arange(len(b)))
            for c, b in self.bands.items()
        }
        self.last_loss: Dict[str, float] = {}  # signal=loss: a pool's loss when it was last drawn
        self.share_since: Dict[str, float] = {}  # signal=loss: the pool's training share since then
        # signal=lp: the last lp_window probes as (step, probe loss per arm, cumulative share per arm)
        self.probes: List[tuple] = []
        self.cum_share = np.zeros(len(self.arms))
        self.last_reward: Dict[str, float] = {}  # signal=lp: each cluster's latest held-out reward
        self.noise_var = np.full(len(self.arms), np.nan)  # reward_scale=noise: each probe's noise (EMA)
        # learnability_every_steps: each cluster's latest prompt information in standard errors (NaN: unmeasured)
        self.info_t = np.full(len(self.arms), np.nan)
        self._decision: Optional[tuple] = None

    @staticmethod
    def _probe_count(cfg: IT2ACLConfig, total_steps: int) -> int:
        """The probe passes (bandit updates) in a run of `total_steps` (signal=lp)."""
        return sum(
            probe_due(s, cfg.probe_every_steps, cfg.probe_backoff, total_steps) for s in range(1, total_steps + 1)
        )

    @staticmethod
    def _per_step_eta(total_steps: int) -> float:
        return ETA_HORIZON / total_steps if total_steps > 0 else LEGACY_ETA

    def policy(self) -> np.ndarray:
        """The sampling policy: the bandit's, mixed with `uniform_mix` of uniform, under `share_cap`."""
        u = self.cfg.uniform_mix
        p = (1.0 - u) * self.bandit.probs() + u / len(self.arms)
        return cap_shares(p, self.cfg.share_cap / len(self.arms)) if self.cfg.share_cap else p

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
        probs = self.policy()
        draws = draw_arms(rng, probs, self.draws_per_step)
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
    def _shares(self, stats: ClusterStats) -> np.ndarray:
        """(A,) each arm's share of the step's loss denominator (its sample share without one)."""
        share = stats.share if stats.share is not None else stats.count / max(float(stats.count.sum()), 1.0)
        return np.nan_to_num(np.asarray(share, dtype=np.float64)[self.col])

    def _normalise(self, gain: float, share: float, loss: float) -> float:
        if self.cfg.reward_per_share:
            gain /= max(share, self.share_floor)
        if self.cfg.reward_normalization == "relative" and np.isfinite(loss) and loss > 0:
            gain /= loss
        return gain

    def _raw_gains(
        self, stats: ClusterStats, bands: Dict[str, Dict[int, float]], share: np.ndarray
    ) -> Dict[str, float]:
        """Each drawn cluster's progress signal this step, per unit share (absent without a sample)."""
        loss = stats.mean_loss_array()[self.col]
        if self.signal in ("pg", "spg"):
            if stats.gain is None:
                raise ValueError(f"curriculum.signal={self.signal} needs the trainer's prediction gain")
            g = stats.gain[self.col]
            return {
                c: self._normalise(float(g[i]), share[i], loss[i])
                for i, c in enumerate(self.arms)
                if c in bands and np.isfinite(g[i])
            }
        out = {}
        for i, c in enumerate(self.arms):
            if c not in bands or not np.isfinite(loss[i]):
                continue
            key = self.pool_name(c, max(bands[c])) if len(bands[c]) == 1 else c
            if key in self.last_loss:  # the drop over the updates since, per unit share trained since
                out[c] = self._normalise(self.last_loss[key] - float(loss[i]), self.share_since[key], loss[i])
            self.last_loss[key] = float(loss[i])
            self.share_since[key] = 0.0
        for key in self.share_since:  # this step's update counts for the next drop
            self.share_since[key] += float(share[self.arms.index(key.split("@")[0])])
        return out

    def _learning_progress(self, step: int, stats: ClusterStats, share: np.ndarray) -> Dict[str, float]:
        """signal=lp: on a probe step, minus the probe loss slope over the window, per unit share."""
        self.cum_share += share
        if stats.probe_loss is None:
            return {}
        self.probes.append((step + 1, np.asarray(stats.probe_loss, dtype=np.float64)[self.col], self.cum_share.copy()))
        self.probes = self.probes[-self.cfg.lp_window :]
        if len(self.probes) < 2:
            return {}
        steps = np.array([p[0] for p in self.probes], dtype=np.float64)
        losses = np.stack([p[1] for p in self.probes])
        if self.cfg.scale == "noise":
            # Progress judged against its own noise: the slope's t-statistic. Flat (saturated, or
            # unlearnable at its entropy) scores ~0 and rising (fitting noise) below, however small the
            # cluster or its share; the share confound is left to the uniform floor (t is scale-free).
            min_fall = self.cfg.lp_min_rate / 100.0 * losses.mean(axis=0) / 100.0  # percent per 100 steps
            t, window_var = slope_t(steps, losses, self.noise_var, min_fall, self.cfg.reward_noise_floor)
            fresh = np.isfinite(window_var)
            seen = np.isfinite(self.noise_var)
            self.noise_var = np.where(
                fresh & seen,
                (1 - NOISE_EMA) * self.noise_var + NOISE_EMA * window_var,
                np.where(fresh, window_var, self.noise_var),
            )
            if len(self.probes) < min(3, self.cfg.lp_window):  # (2 probes: the noise floor judges alone)
                return {}
            return {c: float(t[i]) for i, c in enumerate(self.arms) if np.isfinite(t[i])}
        mean_share = (self.probes[-1][2] - self.probes[0][2]) / max(steps[-1] - steps[0], 1.0)
        progress = -lp_slope(steps, losses)
        mean_loss = losses.mean(axis=0)
        return {
            c: self._normalise(float(progress[i]), mean_share[i], mean_loss[i])
            for i, c in enumerate(self.arms)
            if np.isfinite(progress[i])
        }

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        _, probs, draws, bands, band_probs = self._decide(step)
        share = self._shares(stats)
        lp = self.signal == "lp"
        gains = self._learning_progress(step, stats, share) if lp else self._raw_gains(stats, bands, share)
        if self.cfg.scale == "noise":  # t-statistics: +-reward_t_full standard errors is +-1
            rewards = {c: float(np.clip(g / self.cfg.reward_t_full, -1.0, 1.0)) for c, g in gains.items()}
        else:
            self.scaler.add(gains.values())
            rewards = dict(zip(gains, self.scaler.scale_many(list(gains.values()))))
        rewards = self._weigh_by_information(stats, rewards)
        r = np.array([rewards.get(c, 0.0) for c in self.arms])
        if rewards and len(rewards) == len(self.arms):  # every arm measured: full information
            self.bandit.update_full(r)
        elif rewards:
            self.bandit.update(r, np.where([c in rewards for c in self.arms], draws, 0), probs)
        if lp:
            self.last_reward.update(rewards)
        if self.cfg.phase2 == "bandit" and step >= self.cfg.phase2_start_step:
            for c, chosen in bands.items():
                reward = self.last_reward.get(c) if lp else rewards.get(c)
                if reward is not None and len(chosen) == 1:
                    one_hot = np.zeros(len(self.bands[c]))
                    one_hot[next(iter(chosen))] = 1
                    self.band_bandits[c].update(np.full(len(one_hot), reward), one_hot, band_probs[c])
        metrics = {f"gain/{c}": g for c, g in gains.items()}
        metrics.update({f"reward/{c}": v for c, v in rewards.items()})
        if stats.probe_loss is not None:
            metrics.update({f"probe/{c}": float(stats.probe_loss[j]) for c, j in zip(self.arms, self.col)})
        if stats.probe_info is not None:
            metrics.update({f"info/{c}": float(stats.probe_info[j]) for c, j in zip(self.arms, self.col)})
            metrics.update({f"info_se/{c}": float(stats.probe_info_se[j]) for c, j in zip(self.arms, self.col)})
        return metrics

    def _weigh_by_information(self, stats: ClusterStats, rewards: Dict[str, float]) -> Dict[str, float]:
        """Each positive reward times min(1, t / learnability_z), t the cluster's latest prompt
        information in standard errors (floored at 0.01 nats, as the probe noise); unmeasured: as is."""
        if stats.probe_info is not None:
            info = np.asarray(stats.probe_info, dtype=np.float64)[self.col]
            se = np.asarray(stats.probe_info_se, dtype=np.float64)[self.col]
            t = info / np.maximum(np.nan_to_num(se, nan=0.0), self.cfg.reward_noise_floor)
            self.info_t = np.where(np.isfinite(t), t, self.info_t)
        if not self.cfg.learnability_every_steps or self.signal != "lp":
            return rewards
        weight = np.where(np.isfinite(self.info_t), np.clip(self.info_t / self.cfg.learnability_z, 0.0, 1.0), 1.0)
        return {c: v * float(weight[self.arms.index(c)]) if v > 0 else v for c, v in rewards.items()}

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
            "share_since": dict(self.share_since),
            "probes": [[int(st), loss.tolist(), cum.tolist()] for st, loss, cum in self.probes],
            "cum_share": self.cum_share.tolist(),
            "last_reward": dict(self.last_reward),
            "noise_var": [None if not np.isfinite(v) else float(v) for v in self.noise_var],
            "info_t": [None if not np.isfinite(v) else float(v) for v in self.info_t],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        sizes = {c: [len(b) for b in bands] for c, bands in self.bands.items()}
        check_state("it2acl", state, arms=self.arms, seed=self.seed, band_sizes=sizes)
        self.bandit.load_state_dict(state["bandit"])
        for c, b in self.band_bandits.items():
            b.load_state_dict(state["band_bandits"][c])
        self.scaler.load_state_dict(state["scaler"])
        self.last_loss = dict(state["last_loss"])
        self.share_since = dict(state.get("share_since", {}))
        self.probes = [(st, np.asarray(loss), np.asarray(cum)) for st, loss, cum in state.get("probes", [])]
        self.cum_share = np.asarray(state.get("cum_share", np.zeros(len(self.arms))), dtype=np.float64)
        self.last_reward = dict(state.get("last_reward", {}))
        saved = state.get("noise_var") or [None] * len(self.arms)
        self.noise_var = np.array([np.nan if v is None else v for v in saved], dtype=np.float64)
        saved = state.get("info_t") or [None] * len(self.arms)
        self.info_t = np.array([np.nan if v is None else v for v in saved], dtype=np.float64)
        self._decision = None

    def describe(self) -> str:
        return ""
