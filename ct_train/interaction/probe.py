"""The probe estimate of the interaction matrix: K+1 short training runs through the trainer.

Run `base` trains on the base mix; run `k` on the same batches plus `extra` x global_batch_size more
samples of category k per step (the mixture curriculum with exact per-batch counts and a larger
global batch). All start from the same model with the same seed, so every pool hands out the same
sample stream in every run: a probe's batch is the base batch plus the extra k samples. E[j][k] =
held-out loss of j after run k minus after the base run: negative where training on k helps j.

Inferred (the paper's exact protocol is not available to us): extra samples rather than a shifted
mix, so j keeps all of its own samples; under Adam, whose per-coordinate step does not depend on the
gradient's scale, extra samples that do not touch j's coordinates leave j's updates alone, and E[j][k]
measures how k's gradient agrees or conflicts with j's. The probe's loss is the token mean over its
larger batch, as any run's. With `interaction.seeds` > 1 every run repeats per seed and E is the mean.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List

import numpy as np

from ct_train import distributed as dist
from ct_train.config import Config


def base_mix(categories: List[str], sizes: np.ndarray, base_weights: Any) -> np.ndarray:
    """The base mix's category shares (summing to 1): `interaction.base_weights`, else by size (IID)."""
    if base_weights:
        raw = np.array([float(base_weights.get(c, 0.0)) for c in categories])
    else:
        raw = np.asarray(sizes, dtype=np.float64)
    return raw / raw.sum()


def mixes(
    categories: List[str], sizes: np.ndarray, base_weights: Any, batch: int, extra_samples: int
) -> Dict[str, Dict[str, float]]:
    """Run name -> samples per step of each category: `base` (summing to `batch`), then one run per
    category with `extra_samples` more of it."""
    base = batch * base_mix(categories, sizes, base_weights)
    out = {"base": dict(zip(categories, base.tolist()))}
    for k, name in enumerate(categories):
        w = base.copy()
        w[k] += extra_samples
        out[name] = dict(zip(categories, w.tolist()))
    return out


def extra_samples(cfg: Config, world_size: int) -> int:
    """Extra samples of the probed category per step: `extra` x global batch, rounded so the probe's
    batch still splits into ranks x micro-batches; ConfigError when no such number is near."""
    from ct_train.errors import ConfigError

    trainer = cfg.trainer
    unit = world_size * trainer.micro_batch_size
    m = round(cfg.interaction.extra * trainer.global_batch_size / unit) * unit
    if m <= 0:
        raise ConfigError(
            f"interaction.extra={cfg.interaction.extra} adds {cfg.interaction.extra * trainer.global_batch_size:g} "
            f"samples per step, but a probe's batch grows in units of ranks x trainer.micro_batch_size = {unit}; "
            "raise interaction.extra or lower trainer.micro_batch_size"
        )
    return m


def run_dir(root: str, seed: int, name: str, k: int) -> str:
    safe = "base" if name == "base" else f"k{k:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"
    return os.path.join(root, "probes", f"seed{seed}", safe)


def probe_config(cfg: Config, weights: Dict[str, float], out: str, steps: int, seed: int) -> Config:
    """The training config of one probe (or of the warmup run): the mixture curriculum with exact
    per-batch counts `weights` (their sum is the global batch), short, quiet, no checkpoints, a
    held-out eval at the end only."""
    from ct_train.curriculum.mixture import MixtureConfig

    trainer = dataclasses.replace(
        cfg.trainer,
        max_steps=steps,
        global_batch_size=int(round(sum(weights.values()))),
        output_dir=out,
        eval_every_steps=0,
        save_every_steps=0,
        save_final=False,
        export_final=False,
        resume="never",
        seed=seed,
        log_samples=False,
    )
    logger = dataclasses.replace(cfg.logger, name="none", progress_bar=False)
    curriculum = MixtureConfig(weights={c: w for c, w in weights.items() if w > 0}, default_weight=0.0, exact=True)
    return dataclasses.replace(cfg, mode="train", trainer=trainer, logger=logger, curriculum=curriculum)


def train_once(cfg: Config, key: Dict[str, Any]) -> Dict[str, float]:
    """Train `cfg` unless its output dir already holds the result of the same `key` (an interrupted
    interaction pass re-runs only the probes it had not finished); returns the final held-out eval."""
    from ct_train.trainer import train_cached

    return train_cached(cfg, dataclasses.asdict(cfg), key, "result.json")["final_eval"]


def run_probes(cfg: Config, categories: List[str], sizes: np.ndarray, root: str, start: str, log) -> Dict[str, Any]:
    """Every probe run (per seed), and the effect matrix E (K x K) with its spread over seeds."""
    interaction = cfg.interaction
    extra = extra_samples(cfg, dist.world_size())
    runs = mixes(categories, sizes, interaction.base_weights, cfg.trainer.global_batch_size, extra)
    k_cats = len(categories)
    effects, base_losses = [], []
    for s in range(interaction.seeds):
        seed = cfg.trainer.seed + s
        losses = {}
        for k, (name, weights) in enumerate(runs.items()):
            out = run_dir(root, seed, name, k - 1)
            key = {"weights": weights, "steps": interaction.probe_steps, "seed": seed, "start": start}
            log(f"probe {k}/{k_cats} (seed {seed}): {name}")
            final = train_once(probe_config(cfg, weights, out, interaction.probe_steps, seed), key)
            missing = [c for c in categories if f"eval/{c}/loss" not in final]
            if missing:
                from ct_train.errors import DataError

                raise DataError(
                    f"interaction: no held-out samples for categories {missing}; every category needs eval data "
                    "(data.eval_path, or data.eval_fraction > 0 with enough samples per cluster)"
                )
            losses[name] = np.array([final[f"eval/{c}/loss"] for c in categories])
        base = losses["base"]
        effects.append(np.stack([losses[c] - base for c in categories], axis=1))  # column k = probe k
        base_losses.append(base)
    e = np.stack(effects)
    return {
        "effect": e.mean(axis=0),
        "effect_std": e.std(axis=0, ddof=1) if interaction.seeds > 1 else None,
        "base_loss": np.stack(base_losses).mean(axis=0),
        "extra_samples": extra,
        "runs": {name: {c: round(w, 4) for c, w in weights.items()} for name, weights in runs.items()},
    }
