"""`ct-train mode=interaction`: how instruction categories help or hurt each other (Beyond IID, step 1).

    ct-train mode=interaction data.split_by_difficulty=true interaction.method=both \
        interaction.warmup_steps=100 interaction.probe_steps=30 trainer.output_dir=outputs/interaction

Writes into trainer.output_dir: `interaction.json` (the categories, the effect matrix E with
E[j][k] = change of category j's held-out loss caused by training on category k, per method, and how
the two methods agree), `interaction.png` (heatmaps), the probe runs under `probes/` and the warmup
run under `warmup/`. `curriculum=beyond_iid curriculum.interaction_file=.../interaction.json` reads it.

Zhao et al. (2024) measure interactions between instruction categories and choose and order the data
by them; their exact protocol was not available to us. Inferred, each a config key (InteractionConfig):
- categories are the data's clusters; `data.split_by_difficulty=true` makes (cluster, level) pairs,
  which is how "single-digit addition helps multi-digit addition" becomes measurable;
- the probes start from the same model: `model.*` itself, or that model after `warmup_steps` on the
  base mix (exported, then every probe starts from it with a fresh optimizer and LR schedule);
- a probe adds `extra` x global batch samples of its category to every base batch (probe.py);
- the gradient estimate is the negative cosine similarity of mean gradients (gradient.py);
- agreement is Spearman's rank correlation of the off-diagonal entries (the diagonal, "k helps k",
  agrees trivially and would inflate it).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from ct_train import distributed as dist
from ct_train import io
from ct_train.config import Config
from ct_train.errors import ConfigError

INTERACTION_FILE = "interaction.json"
VERSION = 1


def agreement(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    """Spearman's rank correlation of two K x K matrices over their off-diagonal entries (and all)."""
    from scipy.stats import spearmanr

    off = ~np.eye(len(a), dtype=bool)
    r_off = spearmanr(a[off], b[off]) if off.sum() > 2 else None
    r_all = spearmanr(a.ravel(), b.ravel())
    return {
        "spearman_offdiag": float(r_off.statistic) if r_off is not None else float("nan"),
        "p_offdiag": float(r_off.pvalue) if r_off is not None else float("nan"),
        "spearman_all": float(r_all.statistic),
        "n_offdiag": int(off.sum()),
    }


def _matrix(m: Optional[np.ndarray]) -> Optional[List[List[float]]]:
    return None if m is None else [[round(float(v), 6) for v in row] for row in m]


def heatmap(path: str, categories: List[str], matrices: Dict[str, np.ndarray], title: str) -> None:
    """One panel per method: rows j (affected), columns k (trained on); blue = helps (E < 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(matrices)
    size = max(4.0, 0.45 * len(categories) + 2)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 1, size), squeeze=False)
    for ax, (name, m) in zip(axes[0], matrices.items()):
        lim = float(np.nanmax(np.abs(m))) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(categories)), categories, rotation=90, fontsize=7)
        ax.set_yticks(range(len(categories)), categories, fontsize=7)
        ax.set_xlabel("trained on k")
        ax.set_ylabel("held-out loss of j")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _prepare_root(cfg: Config, resolved: Dict[str, Any]) -> str:
    """trainer.output_dir, created and checked before any work. Its config goes to
    interaction.config.yaml, so a training run's config.yaml in the same directory is left alone."""
    import yaml

    out = io.prepare_output_dir(cfg.trainer.output_dir)
    io.write_atomic(os.path.join(out, "interaction.config.yaml"), yaml.safe_dump(resolved, sort_keys=False))
    return out


def _log(message: str) -> None:
    dist.print0(f"interaction: {message}")


def _categories(cfg: Config, data: Any) -> tuple:
    """The categories with training data and their sizes; ConfigError for fewer than two."""
    sizes_all = np.bincount(data.train.cluster_ids, minlength=len(data.clusters))
    categories = [c for c, n in zip(data.clusters, sizes_all) if n > 0]
    if len(categories) < 2:
        raise ConfigError(f"mode=interaction needs at least two categories with training data, got {categories}")
    if cfg.interaction.base_weights:
        unknown = sorted(set(cfg.interaction.base_weights) - set(categories))
        if unknown:
            raise ConfigError(f"interaction.base_weights names unknown categories {unknown}; the data has {categories}")
    return categories, np.array([sizes_all[data.clusters.index(c)] for c in categories])


def _warm_start(cfg: Config, categories: List[str], sizes: np.ndarray, root: str) -> tuple:
    """(config starting from the model the probes fork from, its name, its tokenizer or None):
    with interaction.warmup_steps, a run on the base mix first, exported and reused."""
    import dataclasses

    from ct_train.data import load_tokenizer
    from ct_train.interaction import probe

    interaction = cfg.interaction
    start_name = cfg.model.path or f"{cfg.model.name} (seed {cfg.trainer.seed})"
    if not interaction.warmup_steps:
        return cfg, start_name, None
    weights = probe.mixes(categories, sizes, interaction.base_weights, cfg.trainer.global_batch_size, 0)["base"]
    wcfg = probe.probe_config(cfg, weights, os.path.join(root, "warmup"), interaction.warmup_steps, cfg.trainer.seed)
    wcfg.trainer.export_final = True
    final_dir = os.path.join(root, "warmup", "final")
    _log(f"warmup: {interaction.warmup_steps} steps on the base mix -> {final_dir}")
    probe.train_once(wcfg, {"weights": weights, "steps": interaction.warmup_steps, "model": start_name})
    start = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, path=final_dir, architecture={}, tokenizer=None)
    )
    return start, f"{start_name} + {interaction.warmup_steps} warmup steps", load_tokenizer(None, final_dir)


def _estimates(cfg, start, data, tokenizer, categories, sizes, root, start_name) -> tuple:
    """The configured estimates of E: (their entries for interaction.json, the matrices by name)."""
    from ct_train.interaction import gradient, probe

    interaction = cfg.interaction
    result: Dict[str, Any] = {}
    matrices: Dict[str, np.ndarray] = {}
    if interaction.method in ("probe", "both"):
        p = probe.run_probes(start, categories, sizes, root, start_name, _log)
        matrices["probe"] = p["effect"]
        result["probe"] = {
            "effect": _matrix(p["effect"]),
            "effect_std": _matrix(p["effect_std"]),
            "base_loss": dict(zip(categories, [round(float(v), 6) for v in p["base_loss"]])),
            "steps": interaction.probe_steps,
            "extra_samples_per_step": p["extra_samples"],
            "seeds": interaction.seeds,
            "runs": p["runs"],
        }
    if interaction.method in ("gradient", "both"):
        g = gradient.category_gradients(start, data, tokenizer, categories, _log)
        sim = gradient.similarity(g["vectors"], interaction.similarity)
        matrices["gradient"] = -sim
        result["gradient"] = {
            "effect": _matrix(-sim),
            "similarity": interaction.similarity,
            "parameters": g["parameters"],
            "sketch_dim": None if g["exact"] else g["dim"],
            "samples_per_category": g["samples"],
        }
    if len(matrices) == 2:
        result["agreement"] = agreement(matrices["probe"], matrices["gradient"])
    return result, matrices


def measure(cfg: Config, resolved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Measure the interaction matrix as configured and write it (rank 0); call on every rank."""
    from ct_train.data import load_tokenizer, prepare_data
    from ct_train.interaction import probe

    interaction = cfg.interaction
    dist.init(cfg.trainer.dist_timeout_s)
    t0 = time.perf_counter()
    root = dist.on_main(lambda: _prepare_root(cfg, resolved or {}))
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.path)
    data = dist.main_first(lambda: prepare_data(cfg.data, tokenizer))
    categories, sizes = _categories(cfg, data)
    if interaction.method in ("probe", "both"):
        probe.extra_samples(cfg, dist.world_size())  # a probe batch that cannot split fails before any training
    _log(f"{len(categories)} categories: {', '.join(categories)}")
    start, start_name, warm_tokenizer = _warm_start(cfg, categories, sizes, root)
    tokenizer = warm_tokenizer or tokenizer
    result: Dict[str, Any] = {
        "version": VERSION,
        "categories": categories,
        "train_samples": dict(zip(categories, sizes.tolist())),
        "start_model": start_name,
        "config": {k: v for k, v in vars(interaction).items()},
    }
    estimates, matrices = _estimates(cfg, start, data, tokenizer, categories, sizes, root, start_name)
    result.update(estimates)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["world_size"] = dist.world_size()
    dist.on_main(lambda: _write(cfg, root, resolved or {}, categories, matrices, result, start_name))
    return result


def _write(cfg, root, resolved, categories, matrices, result, start_name) -> None:
    """interaction.json, its heatmap, the summary on the terminal and, with logger=wandb, W&B (rank 0)."""
    path = os.path.join(root, INTERACTION_FILE)
    io.write_json(path, result, indent=1)
    png = os.path.join(root, "interaction.png")
    heatmap(
        png,
        categories,
        {f"{name}: E[j][k]": m for name, m in matrices.items()},
        f"interaction matrix ({start_name}); blue: training on k lowers j's held-out loss",
    )
    print(format_summary(result, path), flush=True)
    if cfg.logger.name == "wandb":
        try:
            log_wandb(cfg, root, resolved, categories, matrices, result.get("agreement"), png)
        except Exception as e:  # the measurement is on disk already; a W&B problem must not hide it
            print(f"interaction: warning: W&B logging failed ({str(e).splitlines()[0]}); results: {path}")


def log_wandb(
    cfg: Config,
    root: str,
    resolved: Dict[str, Any],
    categories: List[str],
    matrices: Dict[str, np.ndarray],
    agreement_: Optional[Dict[str, float]],
    png: str,
) -> None:
    """One W&B run (job_type `interaction`) with the heatmap, each matrix as a table (j, k, E) and
    the agreement; the probes themselves log to their metrics.jsonl only."""
    import wandb

    lc = cfg.logger
    run = wandb.init(
        project=lc.project,
        entity=lc.entity,
        name=lc.run_name or f"interaction-{os.path.basename(root)}",
        tags=[*lc.tags, "interaction"],
        mode=lc.mode,
        dir=root,
        config=resolved,
        job_type="interaction",
    )
    data: Dict[str, Any] = {"interaction/heatmap": wandb.Image(png)}
    for name, m in matrices.items():
        rows = [[cj, ck, float(m[j, k])] for j, cj in enumerate(categories) for k, ck in enumerate(categories)]
        data[f"interaction/{name}"] = wandb.Table(columns=["j (held-out loss of)", "k (trained on)", "E"], data=rows)
    for key, value in (agreement_ or {}).items():
        data[f"interaction/agreement/{key}"] = value
    run.log(data)
    run.finish()


def format_summary(result: Dict[str, Any], path: str) -> str:
    """For each category, the categories that help it most (by the first method measured)."""
    method = "probe" if "probe" in result else "gradient"
    cats = result["categories"]
    e = np.array(result[method]["effect"])
    lines = [f"{'category':<20}helped most by ({method} estimate, E[j][k] < 0 helps)"]
    for j, name in enumerate(cats):
        order = [k for k in np.argsort(e[j]) if k != j and e[j][k] < 0][:3]
        lines.append(f"{name[:19]:<20}" + (", ".join(f"{cats[k]} ({e[j][k]:+.3g})" for k in order) or "-"))
    if "agreement" in result:
        a = result["agreement"]
        lines.append(
            f"\nprobe vs gradient: Spearman {a['spearman_offdiag']:+.3f} over {a['n_offdiag']} off-diagonal "
            f"entries (p = {a['p_offdiag']:.2g}; all entries {a['spearman_all']:+.3f})"
        )
    lines.append(f"{len(cats)} categories, {result['seconds']} s -> {path}")
    return "\n".join(lines)
