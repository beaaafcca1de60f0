"""`ct-train-plot OUTPUT_DIR`: PNG plots of a run's metrics.jsonl.

Writes `loss.png` (training loss, and held-out loss at eval steps), `clusters.png` (per-cluster
training loss and held-out loss) and, for a curriculum that logs cluster probabilities,
`curriculum.png` (the timeline: stacked `curriculum/prob/<cluster>` over steps, and each cluster's
training loss at the steps it was trained) into OUTPUT_DIR/plots/. Stage boundaries of a staged
curriculum (phased, tapir) are dashed lines on the loss plots. With `--throughput` it prints the run's
median tokens/s instead (the figure docs/benchmarks.md reports).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from typing import Dict, List, Tuple

from ct_train.logging import METRICS_FILE, read_jsonl


def _series(rows: List[dict]) -> Dict[str, Tuple[List[int], List[float]]]:
    out: Dict[str, Tuple[List[int], List[float]]] = defaultdict(lambda: ([], []))
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                out[key][0].append(row["step"])
                out[key][1].append(float(value))
    return out


def plot_run(output_dir: str) -> List[str]:
    """Write the plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(os.path.join(output_dir, METRICS_FILE))
    if not rows:
        raise FileNotFoundError(f"{os.path.join(output_dir, METRICS_FILE)}: missing or empty")
    series = _series(rows)
    plots = os.path.join(output_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    paths = []

    bounds = stage_boundaries(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("eval/loss", "o-")):
        if key in series:
            ax.plot(*series[key], style, label=key)
    _mark_stages(ax, bounds)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per-sample response-token CE)")
    ax.legend()
    ax.grid(alpha=0.3)
    paths.append(os.path.join(plots, "loss.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    clusters = sorted({k.split("/")[1] for k in series if k.startswith(("cluster/", "eval/")) and k.count("/") == 2})
    if clusters:
        named = set(_named(clusters, series, "eval/{}/loss"))
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
        for name in clusters:
            style = {"label": name, "lw": 1} if name in named else {"color": "0.75", "lw": 0.5, "zorder": 0}
            for ax, key in zip(axes, (f"cluster/{name}/loss", f"eval/{name}/loss")):
                if key in series:
                    ax.plot(*series[key], "-" if key.startswith("cluster") else "o-", ms=3, **style)
        for ax in axes:
            _mark_stages(ax, bounds)
        axes[0].set_title("training loss per cluster")
        axes[1].set_title("held-out loss per cluster")
        axes[0].set_ylabel("loss (mean per-sample response-token CE)")
        for ax in axes:
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
        _legend(axes[1], len(named), len(clusters), "highest final held-out loss")
        paths.append(os.path.join(plots, "clusters.png"))
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    timeline = sorted(k[len("curriculum/prob/") :] for k in series if k.startswith("curriculum/prob/"))
    if timeline:
        paths.append(_curriculum_timeline(plt, series, timeline, os.path.join(plots, "curriculum.png")))
    return paths


# More clusters than this are drawn in grey without a legend entry (the self-instruct seed tasks are
# 174 clusters: a legend of all of them covered the figure); the ones that matter most are named.
MAX_LEGEND = 12


def _named(clusters: List[str], series, key: str) -> List[str]:
    """The clusters given a colour and a legend entry: all when few, else the MAX_LEGEND with the
    largest last value of `key` (e.g. the final held-out loss)."""
    if len(clusters) <= MAX_LEGEND:
        return clusters
    last = {c: series[key.format(c)][1][-1] for c in clusters if key.format(c) in series}
    return sorted(last, key=lambda c: -last[c])[:MAX_LEGEND]


def _legend(ax, shown: int, total: int, ranked_by: str, source=None) -> None:
    """The legend beside `ax` (never over the curves) with `source`'s entries (default: its own),
    saying which clusters it names."""
    title = "cluster" if shown == total else f"{shown} of {total} clusters\n({ranked_by};\nthe rest grey)"
    handles, labels = (source or ax).get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=title,
              title_fontsize=7, borderaxespad=0)  # fmt: skip


def stage_boundaries(rows: List[dict]) -> List[Tuple[int, str]]:
    """(step, label) of each stage start of a staged curriculum (phased: phase k; tapir: round k)
    after the first, from the `curriculum/stage_end` the trainer logs at every stage's end."""
    kind = "round" if any("curriculum/round" in r for r in rows) else "phase"
    ends = sorted({(r["step"], int(r["curriculum/stage_end"])) for r in rows if "curriculum/stage_end" in r})
    last = max((k for _, k in ends), default=0)
    return [(step, f"{kind} {k + 1}") for step, k in ends if k < last]


def _mark_stages(ax, bounds: List[Tuple[int, str]]) -> None:
    for step, label in bounds:
        ax.axvline(step, color="0.4", ls="--", lw=0.8)
        ax.text(step, 1.0, f" {label}", transform=ax.get_xaxis_transform(), va="top", fontsize=7, color="0.3")


def _curriculum_timeline(plt, series, clusters: List[str], path: str) -> str:
    """Stacked cluster probabilities over steps, and the per-cluster training loss beside them."""
    import numpy as np

    steps = sorted({s for c in clusters for s in series[f"curriculum/prob/{c}"][0]})
    at = {s: i for i, s in enumerate(steps)}
    probs = np.zeros((len(clusters), len(steps)))
    for j, c in enumerate(clusters):
        for s, p in zip(*series[f"curriculum/prob/{c}"]):
            probs[j, at[s]] = p
    # Named: the clusters the curriculum gave the most probability over the run.
    named = clusters if len(clusters) <= MAX_LEGEND else [clusters[j] for j in np.argsort(-probs.mean(1))[:MAX_LEGEND]]
    palette = iter(plt.get_cmap("tab20")(np.linspace(0, 1, max(len(named), 2))))
    colors = {c: next(palette) if c in named else ("0.8" if j % 2 else "0.7") for j, c in enumerate(clusters)}
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    axes[0].stackplot(steps, probs, labels=[c if c in named else "_" for c in clusters],
                      colors=[colors[c] for c in clusters], linewidth=0)  # fmt: skip
    axes[0].set_ylim(0, 1)
    axes[0].set_title("curriculum: probability of each cluster")
    axes[0].set_ylabel("probability of drawing from the cluster")
    for c in clusters:
        key = f"cluster/{c}/loss"
        if key in series and c in named:
            axes[1].plot(*series[key], ".-", color=colors[c], ms=2, lw=0.8, label=c)
    axes[1].set_title("training loss of each cluster (steps it was trained)")
    axes[1].set_ylabel("loss (mean per-sample response-token CE)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    _legend(axes[1], len(named), len(clusters), "most probability", source=axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def throughput(output_dir: str, skip_steps: int = 5) -> Dict[str, float]:
    """Median and mean tokens/s over the training steps after the first `skip_steps` (warm-up), and
    the overall rate (their tokens over their summed step times), which also counts the occasional
    slow step a median hides (a held-out probe every k steps: curriculum.signal=lp)."""
    import statistics

    rows = [r for r in read_jsonl(os.path.join(output_dir, METRICS_FILE)) if "tokens_per_s" in r]
    if not rows:
        raise FileNotFoundError(f"{os.path.join(output_dir, METRICS_FILE)}: no training steps logged")
    kept = rows[skip_steps:] or rows
    rates = [r["tokens_per_s"] for r in kept]
    timed = [r for r in kept if "step_time_s" in r]
    return {
        "steps": len(rates),
        "median_tokens_per_s": statistics.median(rates),
        "mean_tokens_per_s": statistics.fmean(rates),
        "overall_tokens_per_s": (
            sum(r["tokens_per_s"] * r["step_time_s"] for r in timed) / sum(r["step_time_s"] for r in timed)
            if timed
            else float("nan")
        ),
        "tokens_per_step": rows[-1]["tokens"] / rows[-1]["step"],
        "median_step_s": statistics.median(r.get("step_time_s", float("nan")) for r in rows[skip_steps:] or rows),
        "median_curriculum_ms": statistics.median(
            r.get("curriculum_ms", float("nan")) for r in rows[skip_steps:] or rows
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="ct-train-plot", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="+", help="a run's trainer.output_dir (holds metrics.jsonl)")
    parser.add_argument("--throughput", action="store_true", help="print median tokens/s instead of plotting")
    args = parser.parse_args()
    try:
        for out in args.output_dir:
            if args.throughput:
                t = throughput(out)
                print(
                    f"{out}: median {t['median_tokens_per_s']:,.0f} tokens/s (mean {t['mean_tokens_per_s']:,.0f}, "
                    f"overall {t['overall_tokens_per_s']:,.0f}) "
                    f"over {t['steps']} steps, {t['tokens_per_step']:,.0f} tokens/step; median step "
                    f"{t['median_step_s']:.3f} s, of which curriculum {t['median_curriculum_ms']:.2f} ms"
                )
            else:
                for path in plot_run(out):
                    print(path)
    except FileNotFoundError as e:
        print(f"ct-train-plot: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
