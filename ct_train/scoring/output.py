"""What a scoring run writes: the records with their difficulty (JSONL or Parquet), a per-cluster
histogram (PNG) and a summary (`<output>.meta.json`). Rank 0 only; every file is written to a
temporary name first and renamed, so an interrupted run leaves no half-written output."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from ct_train import io

TEXT_COLUMNS = ["id", "prompt", "input", "response", "messages", "cluster", "source"]


def records(dataset: Any, scores: np.ndarray, scorer: str, model: str) -> Any:
    """The normalised records (ct_train's example fields) with `difficulty`, `difficulty_scorer` and
    `difficulty_model`: a file `data=jsonl data.path=...` reads back with the same prompts, responses
    and clusters. Single-turn and chat columns are kept only where some record uses them."""
    ds = dataset.select_columns(TEXT_COLUMNS)
    if not any(len(m) for m in ds["messages"]):
        ds = ds.remove_columns("messages")
    elif not any(ds["prompt"]):
        ds = ds.remove_columns(["prompt", "input", "response"])
    values = [None if not np.isfinite(v) else float(v) for v in scores]
    ds = ds.add_column("difficulty", values)
    ds = ds.add_column("difficulty_scorer", [scorer] * len(ds))
    return ds.add_column("difficulty_model", [model] * len(ds))


def write_records(ds: Any, path: str) -> None:
    with io.atomic_path(path) as tmp:
        if path.endswith(".parquet"):
            ds.to_parquet(tmp)
        else:
            ds.to_json(tmp, lines=True, force_ascii=False)


def cluster_summary(scores: np.ndarray, cluster_ids: np.ndarray, clusters: List[str]) -> Dict[str, Dict[str, float]]:
    out = {}
    for c, name in enumerate(clusters):
        v = scores[(cluster_ids == c) & np.isfinite(scores)]
        if len(v):
            q = np.quantile(v, [0.1, 0.5, 0.9])
            out[name] = {
                "n": int(len(v)),
                "mean": float(v.mean()),
                "p10": float(q[0]),
                "p50": float(q[1]),
                "p90": float(q[2]),
            }
    return out


def write_meta(path: str, meta: Dict[str, Any]) -> None:
    io.write_json(path, meta, indent=1)


def histogram(path: str, scores: np.ndarray, cluster_ids: np.ndarray, clusters: List[str], title: str) -> None:
    """One small histogram per cluster on a shared x axis (up to 24 clusters, then the largest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(scores)
    sizes = np.bincount(cluster_ids[finite], minlength=len(clusters))
    shown = [c for c in np.argsort(-sizes, kind="stable")[:24] if sizes[c]]
    shown.sort()
    cols = min(4, max(len(shown), 1))
    rows = -(-len(shown) // cols) if shown else 1
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2 * cols, 6.4), 2.2 * rows + 0.6), sharex=True, squeeze=False)
    values = scores[finite]
    levels = np.unique(values)
    bins = (
        np.append(levels, levels[-1] + 1) - 0.5
        if 1 < len(levels) <= 12 and np.allclose(levels, np.round(levels))
        else np.linspace(values.min(), values.max(), 31)
        if len(values)
        else 10
    )
    for ax in axes.ravel():
        ax.set_visible(False)
    for ax, c in zip(axes.ravel(), shown):
        ax.set_visible(True)
        ax.hist(scores[(cluster_ids == c) & finite], bins=bins, color="tab:blue")
        ax.set_title(f"{clusters[c]} (n={sizes[c]})", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
