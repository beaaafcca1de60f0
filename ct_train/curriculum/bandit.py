"""Bandit building blocks shared by the automated curricula: Exp3.S and the quantile reward scaler.

Both are plain numpy state machines with `state_dict()`; they know nothing about clusters or steps.

Exp3.S (Auer et al. 2002, in the form Graves et al. 2017 use for curricula):
  policy   pi(i) = (1 - eps) * softmax(w)_i + eps / N
  reward   r~_i = (r_i * n_i / m + beta) / pi(i)        (n_i of the step's m draws went to arm i; with
                                                        m = 1 this is Graves' (r * [i = k] + beta) / pi(i))
  weights  w_i <- log((1 - a_t) e^{w_i + eta r~_i} + a_t / (N - 1) * sum_{j != i} e^{w_j + eta r~_j}),
           a_t = 1 / t (Graves' choice: the weights settle as evidence accumulates), or max(1 / t, `alpha`)
           (a memory of about 1 / alpha updates: an arm that stops paying loses its lead at a steady rate)
With every arm's reward observed (all clusters in the step's batch, or a held-out probe of every
cluster) `update_full` is the full-information form (Hedge with the same fixed share): r~_i = r_i,
no importance weight, so no variance from dividing by a small pi(i).

Computed in log space, and shifted so max(w) = 0 after each update: the update is shift-equivariant,
so the policy is unchanged and the weights cannot overflow in long runs. O(N) per update: the sum
over j != i is the total minus arm i, except for the largest arm, whose "others" sum is taken
directly (subtracting it from the total would cancel catastrophically when it dominates).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Dict, Optional, Sequence

import numpy as np


class Exp3S:
    def __init__(
        self,
        n_arms: int,
        eta: float,
        eps: float,
        beta: float = 0.0,
        bias: Optional[Sequence] = None,
        alpha: Optional[float] = None,
    ):
        """`bias`: a fixed logit offset per arm (a prior, e.g. easy bands first). It is added in the
        policy, not to the weights, because a_1 = 1 makes the first update replace each weight by
        the mean of the others: a prior put into the weights would be inverted at step 1."""
        if n_arms < 1:
            raise ValueError("a bandit needs at least one arm")
        self.n, self.eta, self.eps, self.beta, self.alpha = n_arms, eta, eps, beta, alpha
        self.bias = np.zeros(n_arms) if bias is None else np.asarray(bias, dtype=np.float64)
        self.w = np.zeros(n_arms)
        self.t = 0  # updates so far

    def probs(self) -> np.ndarray:
        logits = self.w + self.bias
        soft = np.exp(logits - logits.max())
        return (1.0 - self.eps) * soft / soft.sum() + self.eps / self.n

    def update(self, rewards: np.ndarray, draws: np.ndarray, probs: np.ndarray) -> None:
        """One Exp3.S step. `rewards[i]` in [-1, 1] for drawn arms (ignored elsewhere), `draws[i]`
        how many of the step's draws chose arm i, `probs` the policy those draws were made with."""
        draws = np.asarray(draws, dtype=np.float64)
        m = draws.sum()
        if m == 0:
            return
        credited = np.where(draws > 0, np.nan_to_num(np.asarray(rewards, dtype=np.float64)), 0.0)
        self._mix(self.eta * (credited * draws / m + self.beta) / probs)

    def update_full(self, rewards: np.ndarray, eta: Optional[float] = None) -> None:
        """One full-information step: every arm's reward in [-1, 1] is known (no importance weight).
        `eta` overrides the step size (an update that stands for several steps' worth of signal)."""
        self._mix((self.eta if eta is None else eta) * np.nan_to_num(np.asarray(rewards, dtype=np.float64)))

    def _mix(self, delta: np.ndarray) -> None:
        """w <- fixed-share mix of w + delta (the common tail of both updates)."""
        self.t += 1
        if self.n == 1:
            return
        alpha = 1.0 / self.t if self.alpha is None else max(self.alpha, 1.0 / self.t)
        v = self.w + delta
        top = int(np.argmax(v))
        e = np.exp(v - v[top])  # e[top] = 1, every other entry <= 1
        others = e.sum() - e  # sum_{j != i} e_j: no cancellation for i != top (the sum keeps e[top] = 1)
        others[top] = np.delete(e, top).sum()
        mixed = (1.0 - alpha) * e + alpha / (self.n - 1) * others
        self.w = v[top] + np.log(mixed)
        self.w -= self.w.max()

    def state_dict(self) -> Dict[str, Any]:
        return {"w": self.w.tolist(), "t": self.t}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if len(state["w"]) != self.n:
            raise ValueError(f"bandit state has {len(state['w'])} arms, this run has {self.n}")
        self.w = np.asarray(state["w"], dtype=np.float64)
        self.t = int(state["t"])


class QuantileRewardScaler:
    """Raw gains -> rewards in [-1, 1] by the low/high percentiles of a bounded history (Graves 2017).

    r = -1 below the low percentile, +1 above the high one, linear in between. The history is the
    last `history` raw gains of every arm (a window, so the scale follows a non-stationary signal).
    """

    def __init__(self, history: int, low: float = 20.0, high: float = 80.0) -> None:
        self.low, self.high = low, high
        self.history: deque = deque(maxlen=history)

    def add(self, gains: Sequence[float]) -> None:
        self.history.extend(float(g) for g in gains if np.isfinite(g))

    def scale(self, gain: float) -> float:
        return self.scale_many([gain])[0]

    def scale_many(self, gains: Sequence[float]) -> list:
        """Rewards of several raw gains against the current history (percentiles computed once)."""
        if not self.history:
            return [0.0] * len(gains)
        lo, hi = np.percentile(np.fromiter(self.history, dtype=np.float64), [self.low, self.high])
        out = []
        for g in gains:
            if not np.isfinite(g):
                out.append(0.0)
            elif hi <= lo:
                out.append(float(np.sign(g - lo)))
            else:
                out.append(float(np.clip(2.0 * (g - lo) / (hi - lo) - 1.0, -1.0, 1.0)))
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"history": list(self.history), "maxlen": self.history.maxlen}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.history = deque(state["history"], maxlen=self.history.maxlen)
