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


def targets(a: Dict[str, Any], data: str) -> List[str]:
    """The issue's targets for IT2ACL, each with the measured number and whether it is met."""
    s, out = a["summary"], []
    if "it2acl" not in s:
        return out
    it = s["it2acl"]
    ratio, _ = it["steps_ratio"]
    n = it["reached"]
    what = "IID's final learnable-cluster held-out loss"
    if n == 0:
        out.append(f"- IT2ACL reaches {what} in <= 0.7x the steps, 3 of 3 seeds: **missed** (never reached it).")
    else:
        verdict = "met" if ratio <= 0.7 and n == it["n"] and it["worst_ratio"] <= 0.7 else "missed"
        out.append(
            f"- IT2ACL reaches {what} in <= 0.7x the steps, every seed: **{verdict}** (mean {ratio:.2f}x, worst "
            f"{it['worst_ratio']:.2f}x, {n}/{it['n']} seeds reached it)."
        )
    if "mixture" in s:
        (m_it, sd_it), (m_mx, sd_mx) = it["learnable_loss"], s["mixture"]["learnable_loss"]
        spread = max(sd_it, sd_mx)
        verdict = "met" if m_mx - m_it > spread else "missed"
        out.append(
            f"- IT2ACL beats `mixture` on the learnable loss by more than the seed spread: **{verdict}** "
            f"({m_it:.4f} vs {m_mx:.4f}: {m_mx - m_it:+.4f}, spread {spread:.4f})."
        )
    distractors = a["structure"]["distractors"]
    if distractors:
        uniform = len(distractors) / len(a["clusters"])
        q = [sum(it["distractor"][d][k] for d in distractors) for k in range(4)]
        verdict = "met" if all(x < uniform for x in q[1:]) else "missed"
        out.append(
            f"- IT2ACL's share of the distractors ({', '.join(distractors)}) is below their uniform share "
            f"({uniform:.3f}) after the first quarter: **{verdict}** "
            f"(quarters 1-4: {', '.join(f'{x:.3f}' for x in q)})."
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
