"""The benchmark's report: report.md, results.csv and the plots, from the runs' metrics.jsonl.

Per run: the final held-out loss and exact match (overall, per cluster, per cluster and level), the
steps it took to reach IID's final held-out loss (IID's mean over seeds; linear interpolation between
evaluations), tokens trained, median tokens/s, wall time, and the share of its training samples
spent on each distractor cluster per quarter of the run. A strategy's row is the mean +- std over seeds.
"""

from __future__ import annotations

import csv
import math
import os
import re
import socket
from collections import defaultdict
from io import StringIO
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ct_train import io
from ct_train.bench.targets import LEARNABLE_KEY, add_learnable_loss, gate_lines, paired_lines, pilot_gate, targets
from ct_train.logging import METRICS_FILE, read_jsonl

_CELL = re.compile(r"^eval/(.+)/L([0-9.]+)/(loss|exact_match)$")
_CLUSTER = re.compile(r"^eval/([^/]+)/(loss|exact_match)$")
_SAMPLES = re.compile(r"^cluster/(.+)/samples$")


def base_cluster(name: str) -> str:
    """`add/L2` (data.split_by_difficulty) -> `add`."""
    return re.sub(r"/L[0-9.]+$", "", name)


def load_run(path: str) -> Dict[str, Any]:
    """One run's evaluations (step, tokens, metrics), final metrics and per-step samples per cluster."""
    rows = read_jsonl(os.path.join(path, METRICS_FILE))
    tokens_at: Dict[int, int] = {0: 0}
    samples: Dict[int, Dict[str, int]] = {}
    tok_s: List[float] = []
    evals: List[Tuple[int, Dict[str, float]]] = []
    for row in rows:
        step = int(row["step"])
        if "tokens" in row:
            tokens_at[step] = int(row["tokens"])
            tok_s.append(float(row["tokens_per_s"]))
        by_cluster = {base_cluster(m.group(1)): 0 for k in row if (m := _SAMPLES.match(k))}
        for k, v in row.items():
            m = _SAMPLES.match(k)
            if m:
                by_cluster[base_cluster(m.group(1))] += int(v)
        if by_cluster:  # this step's samples per (base) cluster
            samples[step] = by_cluster
        if "eval/loss" in row:
            evals.append((step, {k: float(v) for k, v in row.items() if k.startswith("eval")}))
    if not evals:
        raise FileNotFoundError(f"{path}/{METRICS_FILE}: no held-out evaluation")
    last_step = max(tokens_at)
    return {
        "evals": [(s, tokens_at.get(s, 0), m) for s, m in evals],
        "final": evals[-1][1],
        "steps": last_step,
        "tokens": tokens_at[last_step],
        "tokens_per_s": float(np.median(tok_s)) if tok_s else float("nan"),
        "samples": samples,
    }


def cluster_metrics(final: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """metric -> cluster -> value; also cluster -> level cells as `<cluster>/L<level>`. A run on
    (cluster, level) categories (data.split_by_difficulty) gets its per-cluster values as the mean
    over that cluster's levels (the suite holds the same number of held-out samples per level)."""
    out: Dict[str, Dict[str, float]] = defaultdict(dict)
    cells: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for key, value in final.items():
        m = _CELL.match(key)
        if m:
            out[m.group(3)][f"{m.group(1)}/L{m.group(2)}"] = value
            cells[m.group(3)][m.group(1)].append(value)
            continue
        m = _CLUSTER.match(key)
        if m:
            out[m.group(2)][m.group(1)] = value
    for metric, per in cells.items():
        for cluster, values in per.items():
            out[metric].setdefault(cluster, float(np.mean(values)))
    return out


def steps_to(evals: List[Tuple[int, int, Dict[str, float]]], target: float, key: str = "eval/loss") -> Optional[float]:
    """The first (interpolated) step where the held-out loss `key` is at or below `target`; None if never."""
    prev = None
    for step, _, m in evals:
        loss = m[key]
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(step)
            s0, l0 = prev
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        prev = (step, loss)
    return None


def quarter_shares(samples: Dict[int, Dict[str, int]], steps: int, cluster: str) -> List[float]:
    """The share of the training samples spent on `cluster` in each quarter of the run."""
    out = []
    for q in range(4):
        lo, hi = q * steps / 4, (q + 1) * steps / 4
        tot = sum(sum(per.values()) for s, per in samples.items() if lo < s <= hi)
        mine = sum(per.get(cluster, 0) for s, per in samples.items() if lo < s <= hi)
        out.append(mine / tot if tot else float("nan"))
    return out


def _ms(values: List[float]) -> Tuple[float, float]:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _fmt(mean: float, std: float, digits: int = 3, scale: float = 1.0) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def suite_structure(clusters: List[str], data: str = "bench_v1") -> Dict[str, Any]:
    """The planted structure of a benchmark suite present in these clusters (chains, distractors,
    the suite's cluster order); none for user data (`data` is data.name)."""
    from ct_train.data.bench_suite import SUITES

    suite = SUITES.get("bench_v1" if data == "skills" else data)
    if suite is None:
        return {"chains": {}, "distractors": [], "order": [], "learnable": list(clusters), "saturating": []}
    chains = {n: [c for c in chain if c in clusters] for n, chain in suite.chains.items()}
    return {
        "chains": {n: c for n, c in chains.items() if len(c) > 1},
        "distractors": [c for c in suite.distractors if c in clusters],
        "order": list(suite.clusters),
        "learnable": [c for c in clusters if c not in suite.distractors],
        "saturating": [c for c in suite.saturating if c in clusters],
    }


def gate_report(runs: List[Dict[str, Any]], data: str, max_steps: int) -> List[str]:
    """The pilot gate's lines from the IID runs done so far (none for a suite without a chain)."""
    iid = [load_run(r["dir"]) for r in sorted(runs, key=lambda r: r["seed"]) if r["strategy"] == "iid"]
    if not iid:
        return []
    clusters = sorted(c for c in cluster_metrics(iid[0]["final"])["loss"] if "/L" not in c)
    return gate_lines(pilot_gate(iid, suite_structure(clusters, data), max_steps))


def _run_row(r: Dict[str, Any], v: Dict[str, Any], ctx: Dict[str, Any]) -> Dict[str, Any]:
    """One run's numbers (a row of results.csv)."""
    structure, hardest, chained = ctx["structure"], ctx["hardest"], ctx["chained"]
    cm = cluster_metrics(v["final"])
    reach = steps_to(v["evals"], ctx["target"], LEARNABLE_KEY)
    row = {
        "strategy": r["strategy"],
        "seed": r["seed"],
        "steps": v["steps"],
        "tokens": v["tokens"],
        "tokens_per_s": round(v["tokens_per_s"], 1),
        "wall_s": r["wall_s"],
        "loss": v["final"]["eval/loss"],
        "learnable_loss": v["final"][LEARNABLE_KEY],
        "exact_match": v["final"].get("eval/exact_match", float("nan")),
        "steps_to_iid_loss": reach if reach is not None else float("nan"),
        "steps_ratio": reach / ctx["max_steps"] if reach is not None else float("nan"),
    }
    if ctx["has_em"] and hardest and chained:
        row["chained_hardest_em"] = float(np.mean([cm["exact_match"].get(f"{c}/{hardest}", np.nan) for c in chained]))
    for d in structure["distractors"]:
        for q, share in enumerate(quarter_shares(v["samples"], v["steps"], d), 1):
            row[f"{d}_share_q{q}"] = share
    for metric in ("loss", "exact_match"):
        for name, value in sorted(cm.get(metric, {}).items()):
            row[f"{metric}/{name}"] = value
    return row


def _strategy_summary(mine: List[Dict[str, Any]], clusters: List[str], distractors: List[str]) -> Dict[str, Any]:
    """Mean and spread over one strategy's seeds (its rows)."""
    reached = [r["steps_ratio"] for r in mine if not math.isnan(r["steps_ratio"])]
    return {
        "n": len(mine),
        "loss": _ms([r["loss"] for r in mine]),
        "learnable_loss": _ms([r["learnable_loss"] for r in mine]),
        "exact_match": _ms([r["exact_match"] for r in mine]),
        "steps_ratio": _ms(reached),
        "worst_ratio": max((r["steps_ratio"] if not math.isnan(r["steps_ratio"]) else math.inf) for r in mine),
        "reached": len(reached),
        "chained_hardest_em": _ms([r.get("chained_hardest_em", float("nan")) for r in mine]),
        "tokens": float(np.mean([r["tokens"] for r in mine])),
        "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in mine])),
        "wall_s": float(np.mean([r["wall_s"] for r in mine])),
        "clusters": {
            metric: {c: _ms([r.get(f"{metric}/{c}", float("nan")) for r in mine]) for c in clusters}
            for metric in ("loss", "exact_match")
        },
        "distractor": {d: [_ms([r[f"{d}_share_q{q}"] for r in mine])[0] for q in range(1, 5)] for d in distractors},
    }


def analyse(runs: List[Dict[str, Any]], meta: Dict[str, Any]) -> Dict[str, Any]:
    """Every number of the report: per run (`rows`) and per strategy (`summary`)."""
    loaded = {(r["strategy"], r["seed"]): load_run(r["dir"]) for r in runs}
    has_em = all("eval/exact_match" in v["final"] for v in loaded.values())
    clusters = sorted(
        {c for v in loaded.values() for c in cluster_metrics(v["final"])["loss"] if "/L" not in c},
    )
    structure = suite_structure(clusters, meta["data"])
    for v in loaded.values():  # the learnable-cluster loss of every evaluation (targets.py)
        for _, _, m in v["evals"]:
            m.update({f"eval/{c}/{k}": x for k, per in cluster_metrics(m).items() for c, x in per.items()})
            add_learnable_loss(m, structure["learnable"])
    iid_final = [loaded[k]["final"][LEARNABLE_KEY] for k in loaded if k[0] == "iid"]
    target = float(np.mean(iid_final))
    iid_runs = [loaded[k] for k in sorted(k for k in loaded if k[0] == "iid")]
    gate = pilot_gate(iid_runs, structure, meta["max_steps"])
    order = structure["order"]
    if structure["chains"] or structure["distractors"]:  # the suite's order: each chain's members side by side
        clusters.sort(key=lambda c: order.index(c) if c in order else len(order))
    levels = sorted(
        {float(c.rsplit("/L", 1)[1]) for v in loaded.values() for c in cluster_metrics(v["final"])["loss"] if "/L" in c}
    )
    hardest = f"L{levels[-1]:g}" if levels else None
    chained = [c for chain in structure["chains"].values() for c in chain[1:]]  # the members that reuse another

    ctx = {"structure": structure, "hardest": hardest, "chained": chained, "target": target}
    ctx.update(has_em=has_em, max_steps=meta["max_steps"])
    rows = [_run_row(r, loaded[(r["strategy"], r["seed"])], ctx) for r in runs]
    summary = {
        name: _strategy_summary([r for r in rows if r["strategy"] == name], clusters, structure["distractors"])
        for name in dict.fromkeys(r["strategy"] for r in runs)
    }
    return {
        "rows": rows,
        "summary": summary,
        "target_loss": target,
        "has_em": has_em,
        "clusters": clusters,
        "structure": structure,
        "hardest": hardest,
        "chained": chained,
        "loaded": loaded,
        "gate": gate,
    }


def winner_line(a: Dict[str, Any]) -> str:
    """The best strategy by the learnable loss (the benchmark's yardstick, targets.py), with its exact
    match beside it; none when the pilot gate failed (the suite did not separate strategies at this
    budget, so a lowest loss says little)."""
    s = a["summary"]
    key = "learnable_loss"
    best = min(s, key=lambda n: s[n][key][0])
    em = f", EM {_fmt(*s[best]['exact_match'], scale=100.0, digits=1)}" if a["has_em"] else ""
    if a.get("gate") is not None and not a["gate"]["passed"]:
        return (
            f"**No winner**: the pilot gate failed, so this suite at this budget does not separate the strategies "
            f"(lowest learnable loss: {best}, {_fmt(*s[best][key], digits=4)}{em})."
        )
    others = [n for n in s if n != best]
    if not others:
        return f"Only {best} ran."
    runner = min(others, key=lambda n: s[n][key][0])
    diff = s[runner][key][0] - s[best][key][0]
    spread = max(s[best][key][1], s[runner][key][1])
    line = (
        f"**Winner: {best}** (learnable loss {_fmt(*s[best][key], digits=4)}{em} over {s[best]['n']} seeds), "
        f"ahead of {runner} by {diff:.4f}"
    )
    if best != "iid" and runner != "iid" and "iid" in s:  # (IID as the runner-up is already named)
        line += f" and of IID by {s['iid'][key][0] - s[best][key][0]:.4f}"
    line += f"; the larger seed spread (std) of the two is {spread:.4f}"
    return line + (", so the lead over the runner-up is within the noise." if diff <= spread else ".")


def write_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = StringIO()
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in keys})
    io.write_atomic(path, text.getvalue())


def markdown(a: Dict[str, Any], meta: Dict[str, Any], plots: List[str]) -> str:
    s, has_em = a["summary"], a["has_em"]
    em = lambda ms: _fmt(*ms, digits=1, scale=100.0)  # noqa: E731
    lines = [
        "# Curriculum benchmark" + (" (--quick: checks the pipeline, not the winner)" if meta["quick"] else ""),
        "",
        f"`{meta['command']}`",
        "",
        f"- data: `{meta['data']}`, {len(a['clusters'])} clusters; model: `{meta['model']}`; "
        f"{meta['world_size']} rank(s) on {socket.gethostname()} ({os.cpu_count()} CPUs)",
        f"- budget, the same for every strategy: {meta['max_steps']} optimizer steps x {meta['global_batch_size']} "
        f"samples; seeds {meta['seeds']}; the runs took {meta['runs_s'] / 60:.1f} min (this invocation "
        f"{meta['wall_s'] / 60:.1f} min: finished runs are kept)"
        + (
            "; set-up outside the budget: " + ", ".join(f"{k} {v:.0f} s" for k, v in meta["prepare_s"].items())
            if meta["prepare_s"]
            else ""
        ),
        f"- IID's final held-out loss over the learnable clusters (the data-efficiency target): {a['target_loss']:.4f}",
        "",
        *(gate_lines(a["gate"]) + [""] if a["gate"] else []),
        winner_line(a),
        "",
        "## Strategies (mean ± std over seeds)",
        "",
    ]
    head = ["strategy", "learnable loss", "held-out loss"] + (["EM %"] if has_em else [])
    head += ["steps to IID learnable loss (ratio)"]
    if a["chained"] and has_em and a["hardest"]:
        head += [f"chained {a['hardest']} EM %"]
    head += [f"{d} share Q1/Q2/Q3/Q4" for d in a["structure"]["distractors"]]
    head += ["tokens", "tokens/s", "wall s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in s.items():
        ratio = "not reached" if v["reached"] == 0 else f"{_fmt(*v['steps_ratio'], digits=2)} ({v['reached']}/{v['n']})"
        cells = [name, _fmt(*v["learnable_loss"], digits=4), _fmt(*v["loss"], digits=4)]
        cells += ([em(v["exact_match"])] if has_em else []) + [ratio]
        if a["chained"] and has_em and a["hardest"]:
            cells.append(em(v["chained_hardest_em"]))
        cells += ["/".join(f"{x:.3f}" for x in q) for q in v["distractor"].values()]
        cells += [f"{v['tokens']:,.0f}", f"{v['tokens_per_s']:,.0f}", f"{v['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if meta.get("failed"):
        lines += ["", "Did not run (a configuration or data error; fix the key and re-run the same command):", ""]
        lines += [f"- {name}: {error}" for name, error in meta["failed"].items()]
    against_balanced = paired_lines(a)
    lines += ([""] + against_balanced) if against_balanced else []
    lines += ["", "## Targets", ""] + (targets(a, meta["data"]) or ["- (no target applies to this grid)"])
    for metric in (["exact_match"] if has_em else []) + ["loss"]:
        lines += ["", f"## Held-out {'exact match (%)' if metric == 'exact_match' else 'loss'} per cluster", ""]
        lines += ["| strategy | " + " | ".join(a["clusters"]) + " |", "|" + "---|" * (len(a["clusters"]) + 1)]
        for name, v in s.items():
            vals = [v["clusters"][metric][c] for c in a["clusters"]]
            fmt = (lambda m: f"{m[0] * 100:.1f}") if metric == "exact_match" else (lambda m: f"{m[0]:.3f}")
            lines.append(f"| {name} | " + " | ".join(fmt(m) for m in vals) + " |")
    if a["structure"]["chains"]:
        lines += [
            "",
            "Planted prerequisite chains: "
            + "; ".join(" -> ".join(c) for c in a["structure"]["chains"].values())
            + ". Distractor (answers independent of the prompt): "
            + (", ".join(a["structure"]["distractors"]) or "none")
            + ".",
        ]
    lines += ["", "## Plots", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots]
    lines += ["", "Every number: `results.csv` (one row per run); every run: `runs/<strategy>/seed<N>/metrics.jsonl`."]
    return "\n".join(lines) + "\n"


def plots(root: str, a: Dict[str, Any]) -> List[str]:
    """loss_vs_tokens.png (held-out loss vs tokens trained, mean over seeds) and one timeline per
    non-IID strategy (share of each step's samples per cluster, first seed, smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(8, 5))
    by: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for (name, _), v in a["loaded"].items():
        by[name].append(v)
    for name, vs in by.items():
        n = min(len(v["evals"]) for v in vs)
        tokens = np.mean([[e[1] for e in v["evals"][:n]] for v in vs], axis=0)
        loss = np.array([[e[2][LEARNABLE_KEY] for e in v["evals"][:n]] for v in vs])
        mean, std = loss.mean(0), loss.std(0)
        (line,) = ax.plot(tokens, mean, "o-", ms=3, label=name, lw=2 if name == "iid" else 1.3)
        ax.fill_between(tokens, mean - std, mean + std, color=line.get_color(), alpha=0.12)
    ax.axhline(a["target_loss"], color="gray", ls=":", lw=1, label="IID final (learnable)")
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("learnable-cluster held-out loss (mean over seeds, ±1 std)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.append("loss_vs_tokens.png")
    fig.savefig(os.path.join(root, out[-1]), dpi=120)
    plt.close(fig)

    cmap = plt.get_cmap("tab20")
    for name, vs in by.items():
        if name == "iid" or not vs[0]["samples"]:
            continue
        samples = vs[0]["samples"]
        steps = sorted(samples)
        window = max(1, len(steps) // 40)
        clusters = a["clusters"]
        share = np.array([[samples[s].get(c, 0) for c in clusters] for s in steps], dtype=float)
        kernel = np.ones(window) / window
        share = np.stack([np.convolve(share[:, j], kernel, mode="same") for j in range(len(clusters))], axis=1)
        share /= np.maximum(share.sum(1, keepdims=True), 1e-12)
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.stackplot(
            steps, share.T, labels=clusters, colors=[cmap((2 * i) % 20 + (2 * i) // 20) for i in range(len(clusters))]
        )
        for d in a["structure"]["distractors"]:
            if d in clusters:
                j = clusters.index(d)
                ax.plot(steps, share[:, j], "k--", lw=1, label=f"{d} share")
        ax.axhline(1.0 / len(clusters), color="k", lw=0.6, ls=":")
        ax.set_xlim(steps[0], steps[-1])
        ax.set_ylim(0, 1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("share of the step's samples")
        ax.set_title(f"{name}: what it trained on (seed {a['rows'][0]['seed']}, window {window} steps)")
        ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        out.append(f"timeline_{name}.png")
        fig.savefig(os.path.join(root, out[-1]), dpi=110)
        plt.close(fig)
    return out


def write(root: str, runs: List[Dict[str, Any]], meta: Dict[str, Any]) -> Dict[str, Any]:
    """Write report.md, results.csv and the plots into `root`; returns the analysis (without runs)."""
    a = analyse(runs, meta)
    write_csv(os.path.join(root, "results.csv"), a["rows"])
    names = plots(root, a)
    text = markdown(a, meta, names)
    io.write_atomic(os.path.join(root, "report.md"), text)
    print(text.split("## Held-out")[0], flush=True)
    print(f"bench: report {os.path.join(root, 'report.md')}", flush=True)
    return {k: v for k, v in a.items() if k != "loaded"}
