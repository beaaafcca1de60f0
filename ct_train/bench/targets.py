"""The benchmark's yardsticks: the learnable-cluster loss, the suite's pilot gate, and the targets.

- Learnable loss: the held-out loss averaged over the clusters that can be learned (every cluster
  but the suite's distractors; every cluster on user data), each cluster weighted alike. It is what
  "reaches IID's loss in fewer steps" is measured on: a distractor's held-out loss only rises with
  training, and the overall loss weights clusters by their held-out size.
- Pilot gate (suites with a planted chain): before the other strategies' runs, IID's first two seeds
  must show that the suite can separate strategies at this budget: the chain's easy member reaches
  >= 80% exact match by mid-run, its hardest member ends between 15% and 60%, and no learnable
  cluster other than the designated saturating ones and that easy member ends above 90%. A failed gate is printed and
  reported; the grid still runs (the numbers stand, but say little about the curricula).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

LEARNABLE_KEY = "eval/learnable_loss"
BALANCED = "balanced"  # uniform over clusters: the strongest simple baseline (ct_train/curriculum/mixture.py)
STEPS_RATIO = 0.5  # IT2ACL reaches IID's final learnable loss in at most this share of the steps
EM_POINTS = 2.0  # ... and beats balanced by at least this many points of exact match
P_PAIRED = 0.05
GATE_EASY_EM, GATE_HARD_EM, GATE_SATURATED_EM = 0.80, (0.15, 0.60), 0.90
GATE_SEEDS = 2


def add_learnable_loss(metrics: Dict[str, float], learnable: List[str]) -> None:
    """Set `eval/learnable_loss` in one evaluation's metrics (mean over the learnable clusters it has)."""
    values = [metrics[f"eval/{c}/loss"] for c in learnable if f"eval/{c}/loss" in metrics]
    if values:
        metrics[LEARNABLE_KEY] = float(np.mean(values))


def _em_at(evals: List[Tuple[int, int, Dict[str, float]]], cluster: str, max_step: int) -> float:
    """The cluster's exact match at the last evaluation at or before `max_step`."""
    before = [m for s, _, m in evals if s <= max_step]
    return float(before[-1].get(f"eval/{cluster}/exact_match", np.nan)) if before else float("nan")


def pilot_gate(iid_runs: List[Dict[str, Any]], structure: Dict[str, Any], max_steps: int) -> Optional[Dict[str, Any]]:
    """The gate over IID's first GATE_SEEDS runs (load_run dicts); None when the suite has no chain."""
    chains = list(structure["chains"].values())
    if not chains or not iid_runs:
        return None
    runs = iid_runs[:GATE_SEEDS]
    easy, hard = chains[0][0], chains[0][-1]
    easy_mid = float(np.mean([_em_at(r["evals"], easy, max_steps // 2) for r in runs]))
    hard_end = float(np.mean([r["final"].get(f"eval/{hard}/exact_match", np.nan) for r in runs]))
    # (The easy member must be learned early, so it is no saturation warning; nor is a designated one.)
    others = [c for c in structure["learnable"] if c not in structure["saturating"] and c != easy]
    top = max(others, key=lambda c: np.mean([r["final"].get(f"eval/{c}/exact_match", 0.0) for r in runs]))
    top_em = float(np.mean([r["final"].get(f"eval/{top}/exact_match", np.nan) for r in runs]))
    checks = [
        (f"{easy} (the chain's easy member) at mid-run >= {GATE_EASY_EM:.0%}", easy_mid, easy_mid >= GATE_EASY_EM),
        (
            f"{hard} (its hardest member) at the end in {GATE_HARD_EM[0]:.0%}-{GATE_HARD_EM[1]:.0%}",
            hard_end,
            GATE_HARD_EM[0] <= hard_end <= GATE_HARD_EM[1],
        ),
        (f"best other learnable cluster ({top}) at the end <= {GATE_SATURATED_EM:.0%}", top_em, top_em <= 0.9),
    ]
    return {"seeds": len(runs), "checks": checks, "passed": all(ok for _, _, ok in checks)}


def gate_lines(gate: Optional[Dict[str, Any]]) -> List[str]:
    if gate is None:
        return []
    head = f"Pilot gate (IID, {gate['seeds']} seeds, exact match): **{'passed' if gate['passed'] else 'FAILED'}**"
    return [head, ""] + [f"- {what}: {value:.1%} ({'ok' if ok else 'no'})" for what, value, ok in gate["checks"]]


def paired(a: Dict[str, Any], name: str, other: str, key: str) -> Optional[Dict[str, float]]:
    """`name` minus `other` on `key`, paired by seed: mean difference, its std, the paired t-test's
    two-sided p and the number of seeds both ran; None with fewer than 2 common seeds."""
    from scipy import stats

    mine = {r["seed"]: r[key] for r in a["rows"] if r["strategy"] == name}
    theirs = {r["seed"]: r[key] for r in a["rows"] if r["strategy"] == other}
    seeds = sorted(set(mine) & set(theirs))
    if len(seeds) < 2:
        return None
    d = np.array([mine[k] - theirs[k] for k in seeds], dtype=np.float64)
    p = float(stats.ttest_rel([mine[k] for k in seeds], [theirs[k] for k in seeds]).pvalue) if d.std() > 0 else 1.0
    return {"diff": float(d.mean()), "std": float(d.std(ddof=1)), "p": p, "n": len(seeds)}


def paired_lines(a: Dict[str, Any]) -> List[str]:
    """Every strategy against `balanced`, paired by seed (what adaptivity adds over a uniform mix)."""
    if BALANCED not in a["summary"]:
        return []
    out = [f"## Against `{BALANCED}`, paired by seed (learnable loss: negative is better)", ""]
    head = ["strategy", "learnable loss diff", "paired t-test p"] + (["EM diff (points)", "p"] if a["has_em"] else [])
    out += ["| " + " | ".join(head + ["seeds"]) + " |", "|" + "---|" * (len(head) + 1)]
    for name in a["summary"]:
        t = paired(a, name, BALANCED, "learnable_loss")
        if name == BALANCED or t is None:
            continue
        cells = [name, f"{t['diff']:+.4f} ± {t['std']:.4f}", f"{t['p']:.3f}"]
        if a["has_em"]:
            e = paired(a, name, BALANCED, "exact_match")
            cells += [f"{e['diff'] * 100:+.1f} ± {e['std'] * 100:.1f}", f"{e['p']:.3f}"]
        out.append("| " + " | ".join(cells + [str(t["n"])]) + " |")
    return out


def _beats_balanced(a: Dict[str, Any], name: str) -> str:
    """The issue's bar: better learnable loss than balanced by > 2x the larger seed std, paired p < 0.05,
    and (with exact match) >= EM_POINTS points more."""
    s = a["summary"]
    (m_it, sd_it), (m_b, sd_b) = s[name]["learnable_loss"], s[BALANCED]["learnable_loss"]
    bar = 2 * max(sd_it, sd_b)
    t = paired(a, name, BALANCED, "learnable_loss")
    e = paired(a, name, BALANCED, "exact_match") if a["has_em"] else None
    ok = m_b - m_it > bar and t is not None and t["p"] < P_PAIRED and t["diff"] < 0
    detail = f"{m_it:.4f} vs {m_b:.4f}: {m_it - m_b:+.4f}, bar {bar:.4f}"
    detail += f", paired p={t['p']:.3f} over {t['n']} seeds" if t else ", no paired seeds"
    what = f"by more than twice the larger seed std with a paired p < {P_PAIRED}"
    if a["has_em"]:
        ok = ok and e is not None and e["diff"] * 100 >= EM_POINTS
        detail += f"; EM {e['diff'] * 100:+.1f} points" if e else ""
        what += f" and by >= {EM_POINTS:g} points of exact match"
    return f"- IT2ACL beats `{BALANCED}` on the learnable loss {what}: **{'met' if ok else 'missed'}** ({detail})."


def targets(a: Dict[str, Any], data: str) -> List[str]:
    """The issue's targets for IT2ACL, each with the measured number and whether it is met."""
    s, out = a["summary"], []
    if "it2acl" not in s:
        return out
    it = s["it2acl"]
    ratio, _ = it["steps_ratio"]
    n = it["reached"]
    what = f"IID's final learnable-cluster held-out loss in <= {STEPS_RATIO}x the steps, every seed"
    if n == 0:
        out.append(f"- IT2ACL reaches {what}: **missed** (never reached it).")
    else:
        verdict = "met" if n == it["n"] and it["worst_ratio"] <= STEPS_RATIO else "missed"
        worst = f"worst {it['worst_ratio']:.2f}x, " if np.isfinite(it["worst_ratio"]) else ""  # inf: a seed never did
        out.append(
            f"- IT2ACL reaches {what}: **{verdict}** (mean {ratio:.2f}x, {worst}{n}/{it['n']} seeds reached it)."
        )
    if BALANCED in s:
        out.append(_beats_balanced(a, "it2acl"))
    distractors = a["structure"]["distractors"]
    if distractors:
        uniform = len(distractors) / len(a["clusters"])
        q = [sum(it["distractor"][d][k] for d in distractors) for k in range(4)]
        verdict = "met" if all(x <= uniform / 2 for x in q[1:]) else "missed"
        out.append(
            f"- IT2ACL's share of the distractors ({', '.join(distractors)}) is <= half their uniform share "
            f"({uniform / 2:.3f}) from the second quarter on: **{verdict}** "
            f"(quarters 1-4: {', '.join(f'{x:.3f}' for x in q)})."
        )
    if data == "bench_v1" and BALANCED in s:  # the first suite: no worse than balanced
        (m_it, sd_it), (m_b, sd_b) = it["learnable_loss"], s[BALANCED]["learnable_loss"]
        spread = max(sd_it, sd_b)
        verdict = "met" if m_it - m_b <= spread else "missed"
        out.append(
            f"- On the old suite IT2ACL is no worse than `{BALANCED}` beyond the seed spread: **{verdict}** "
            f"({m_it:.4f} vs {m_b:.4f}: {m_it - m_b:+.4f}, spread {spread:.4f})."
        )
    if data == "bench_v1":
        (m_it, sd_it), (m_iid, sd_iid) = it["learnable_loss"], s["iid"]["learnable_loss"]
        spread = max(sd_it, sd_iid)
        verdict = "met" if m_it - m_iid <= spread else "missed"
        out.append(
            f"- On the old suite IT2ACL is no worse than IID beyond the seed spread: **{verdict}** "
            f"({m_it:.4f} vs {m_iid:.4f}: {m_it - m_iid:+.4f}, spread {spread:.4f})."
        )
    if a["chained"] and a["has_em"] and a["hardest"]:  # the first suite's level-3 target (docs/results.md)
        iid = s["iid"]["chained_hardest_em"][0]
        for name in ("it2acl", "phased"):
            if name in s:
                gain = (s[name]["chained_hardest_em"][0] - iid) * 100
                out.append(
                    f"- {name} beats IID's exact match on the hardest level ({a['hardest']}) of the chained clusters "
                    f"({', '.join(a['chained'])}) by >= 10 points: **{'met' if gain >= 10 else 'missed'}** "
                    f"({gain:+.1f} points: {s[name]['chained_hardest_em'][0] * 100:.1f} vs {iid * 100:.1f})."
                )
    return out
