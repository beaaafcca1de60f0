"""The instruction mix as a linear program (Beyond IID, step 2).

    maximise   sum_k b_k n_k                 b_k = sum_j w_j B[j][k], B = -E (benefit per probe)
    subject to sum_k n_k <= budget
               min_k <= n_k <= available_k
               lo_k * sum_i n_i <= n_k <= hi_k * sum_i n_i     (optional share bounds)

solved with `scipy.optimize.linprog` (HiGHS). The counts are then rounded down (an integer minimum
stays met; a share bound may move by under one sample). Infeasible settings are found before the
solver where a single constraint explains them, else by re-solving without each group of constraints,
and reported as a ConfigError naming the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ct_train.errors import ConfigError


@dataclass
class MixSolution:
    counts: np.ndarray  # (K,) int64: samples kept per category
    exact: np.ndarray  # (K,) float64: the LP's solution before rounding
    objective: float  # sum_k b_k n_k at the rounded counts


def _solve(b, available, budget, mins, lo, hi, use_budget=True, use_shares=True, use_mins=True):
    from scipy.optimize import linprog

    k = len(b)
    rows, rhs = [], []
    if use_budget and budget is not None:
        rows.append(np.ones(k))
        rhs.append(float(budget))
    if use_shares:
        for i in range(k):
            if lo[i] > 0:  # lo_i * sum n - n_i <= 0
                row = np.full(k, lo[i])
                row[i] -= 1.0
                rows.append(row)
                rhs.append(0.0)
            if hi[i] < 1:  # n_i - hi_i * sum n <= 0
                row = np.full(k, -hi[i])
                row[i] += 1.0
                rows.append(row)
                rhs.append(0.0)
    bounds = [(float(mins[i]) if use_mins else 0.0, float(available[i])) for i in range(k)]
    return linprog(
        -np.asarray(b, dtype=np.float64),
        A_ub=np.array(rows) if rows else None,
        b_ub=np.array(rhs) if rows else None,
        bounds=bounds,
        method="highs",
    )


def solve_mix(
    benefit: np.ndarray,
    available: np.ndarray,
    categories: List[str],
    budget: Optional[int] = None,
    min_samples: Optional[np.ndarray] = None,
    share_bounds: Optional[np.ndarray] = None,
) -> MixSolution:
    """Samples to keep per category. `benefit` (K,) is b_k per sample; `share_bounds` (K, 2) [lo, hi]."""
    k = len(categories)
    b = np.asarray(benefit, dtype=np.float64)
    available = np.asarray(available, dtype=np.float64)
    mins = np.zeros(k) if min_samples is None else np.asarray(min_samples, dtype=np.float64)
    bounds = np.tile([0.0, 1.0], (k, 1)) if share_bounds is None else np.asarray(share_bounds, dtype=np.float64)
    lo, hi = bounds[:, 0], bounds[:, 1]
    for i, name in enumerate(categories):
        if mins[i] > available[i]:
            raise ConfigError(
                f"curriculum.min_samples.{name}={mins[i]:g} exceeds the {available[i]:g} training samples of {name}"
            )
        if not 0.0 <= lo[i] <= hi[i] <= 1.0:
            raise ConfigError(
                f"curriculum.share_bounds.{name}=[{lo[i]:g}, {hi[i]:g}] must satisfy 0 <= low <= high <= 1"
            )
    if budget is not None and mins.sum() > budget:
        raise ConfigError(
            f"curriculum.min_samples add up to {mins.sum():g} samples, more than curriculum.budget={budget}"
        )
    if lo.sum() > 1.0 + 1e-9:
        raise ConfigError(f"curriculum.share_bounds: the lower bounds add up to {lo.sum():g} > 1")
    res = _solve(b, available, budget, mins, lo, hi)
    if res.status == 2:  # infeasible: which group of constraints is to blame
        culprits = [
            key
            for key, kw in (
                ("curriculum.share_bounds", dict(use_shares=False)),
                ("curriculum.min_samples", dict(use_mins=False)),
                ("curriculum.budget", dict(use_budget=False)),
            )
            if _solve(b, available, budget, mins, lo, hi, **kw).status == 0
        ]
        raise ConfigError(
            "curriculum=beyond_iid: no mix satisfies the constraints together"
            + (f"; dropping {' or '.join(culprits)} would make it feasible" if culprits else "")
            + f" (available per category: {dict(zip(categories, available.astype(int).tolist()))})"
        )
    if res.status != 0:
        raise ConfigError(f"curriculum=beyond_iid: the mix LP failed ({res.message})")
    exact = np.clip(res.x, 0.0, available)
    counts = np.floor(exact + 1e-6).astype(np.int64)
    if counts.sum() == 0:
        raise ConfigError(
            "curriculum=beyond_iid: the LP keeps no sample (no category has a positive benefit for the target "
            "weights); set curriculum.min_samples or curriculum.share_bounds, or use curriculum.mix=all"
        )
    return MixSolution(counts=counts, exact=exact, objective=float(b @ counts))
