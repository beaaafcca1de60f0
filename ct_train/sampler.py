"""Curriculum-aware distributed sampler: plan -> one global batch -> this rank's micro-batches.

Every rank computes the same global batch from (seed, step, plan, state) without communication
(OLMo-core's data loader shape):

1. The plan's pool weights become per-pool counts by a multinomial draw seeded by (seed, step).
2. Each pool is a stream of epoch permutations seeded by (seed, pool, epoch); a pool hands out its
   next `count` indices, so within one pass over a pool no sample repeats.
3. The drawn indices are shuffled (seeded by (seed, step)) so clusters mix across ranks, and rank r
   takes the r-th contiguous slice, cut into gradient-accumulation micro-batches.

The state is one (epoch, cursor) pair per pool. It does not depend on the number of ranks, so a run
resumed on a different world size with the same global batch size sees the identical sample stream.
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, List

import numpy as np

from ct_train.curriculum.base import Plan


class CurriculumSampler:
    def __init__(self, pools: Dict[str, np.ndarray], global_batch_size: int, seed: int) -> None:
        empty = [name for name, idx in pools.items() if len(idx) == 0]
        if empty:
            raise ValueError(f"sampler pools with no sample: {empty}")
        self.pools = {name: np.asarray(idx, dtype=np.int64) for name, idx in pools.items()}
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.cursors: Dict[str, List[int]] = {name: [0, 0] for name in self.pools}  # [epoch, offset]
        self._perm_cache: Dict[str, tuple] = {}

    def _permutation(self, pool: str, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(pool)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, zlib.crc32(pool.encode()), epoch])
            cached = (epoch, rng.permutation(self.pools[pool]))
            self._perm_cache[pool] = cached
        return cached[1]

    def _take(self, pool: str, n: int) -> np.ndarray:
        out = []
        epoch, offset = self.cursors[pool]
        while n > 0:
            perm = self._permutation(pool, epoch)
            k = min(n, len(perm) - offset)
            out.append(perm[offset : offset + k])
            offset, n = offset + k, n - k
            if offset == len(perm):
                epoch, offset = epoch + 1, 0
        self.cursors[pool] = [epoch, offset]
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def counts(self, step: int, plan: Plan) -> Dict[str, int]:
        """How many samples of the global batch each pool gives at this step."""
        names = sorted(w for w in plan.weights if plan.weights[w] > 0)
        unknown = [n for n in names if n not in self.pools]
        if unknown or not names:
            raise ValueError(f"plan names unknown or no pools: {unknown or plan.weights}")
        p = np.array([plan.weights[n] for n in names], dtype=np.float64)
        rng = np.random.default_rng([self.seed, step, 0])
        drawn = rng.multinomial(self.global_batch_size, p / p.sum())
        return {n: int(c) for n, c in zip(names, drawn) if c > 0}

    def global_batch(self, step: int, plan: Plan) -> np.ndarray:
        """The next global batch (indices into the training split); advances the state."""
        picks = [self._take(pool, n) for pool, n in self.counts(step, plan).items()]
        batch = np.concatenate(picks)
        np.random.default_rng([self.seed, step, 1]).shuffle(batch)
        return batch

    @staticmethod
    def rank_micro_batches(
        global_batch: np.ndarray, rank: int, world_size: int, micro_batch_size: int
    ) -> List[np.ndarray]:
        """Rank `rank`'s contiguous slice of the global batch, as micro-batches in order."""
        per_rank = len(global_batch) // world_size
        mine = global_batch[rank * per_rank : (rank + 1) * per_rank]
        return [mine[i : i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "cursors": {k: list(v) for k, v in self.cursors.items()},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["global_batch_size"] != self.global_batch_size:
            raise ValueError(
                f"sampler state is for seed={state['seed']}, global_batch_size={state['global_batch_size']}; "
                f"this run has seed={self.seed}, global_batch_size={self.global_batch_size}"
            )
        missing = set(self.pools) - set(state["cursors"])
        if missing:
            raise ValueError(f"sampler state lacks pools {sorted(missing)}")
        self.cursors = {k: list(state["cursors"][k]) for k in self.pools}
