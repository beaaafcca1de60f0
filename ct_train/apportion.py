"""Splitting a whole number of samples (or steps) in proportion to weights.

Used by the sampler (samples per pool), the curricula (steps per stage) and the benchmark; on the
ground floor so that none of them imports another for it.
"""

from __future__ import annotations

import numpy as np


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to `weights` summing to `total` (ties go to the earlier entry)."""
    share = total * weights / weights.sum()
    out = np.floor(share).astype(np.int64)
    rest = total - out.sum()
    if rest:
        out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    return out


def exact_counts(total: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integers summing to `total`, each the floor or the ceiling of its share total * w / sum(w), and
    equal to the share in expectation: the units left after the floors go to pools by systematic
    sampling over the fractional parts (one uniform draw). Largest remainder would give them to the
    same pools at every step when the plan repeats, a bias of up to one sample per step."""
    share = total * weights / weights.sum()
    out = np.floor(share).astype(np.int64)
    rest = total - int(out.sum())
    if rest:
        edges = np.cumsum(share - out)
        hits = np.searchsorted(edges, rng.random() + np.arange(rest), side="right")
        np.add.at(out, np.minimum(hits, len(out) - 1), 1)
    return out
