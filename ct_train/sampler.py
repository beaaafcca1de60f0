"""Curriculum-aware distributed sampler: plan -> one global batch -> this rank's micro-batches.

Every rank computes the same global batch from (seed, step, plan, state) without communication
(OLMo-core's data loader shape):

1. The plan's pool weights become per-pool counts: a multinomial draw seeded by (seed, step), or,
   for an `exact` plan, each pool's share rounded down or up (systematic sampling of the fractions,
   so the counts are the shares in expectation). A pool never gives more samples in one step than
   it holds; the excess goes to the plan's other pools (only when every planned pool together is
   smaller than the global batch do samples repeat within a step, with a warning).
2. Each pool is a stream of epoch permutations seeded by (seed, pool, epoch); a pool hands out its
   next `count` indices, so within one pass over a pool no sample repeats. When a pass ends inside a
   step, the samples this step already took from the old pass are moved to the end of the new pass's
   permutation, so a step never holds a sample twice (and they are not seen again at once).
3. The drawn indices are shuffled (seeded by (seed, step)) so clusters mix across ranks, and rank r
   takes the r-th contiguous slice, cut into gradient-accumulation micro-batches: every rank gets the
   same number of full micro-batches, whatever the pool sizes.

The state is (epoch, offset, moved samples) per pool. It does not depend on the number of ranks, so
a run resumed on a different world size with the same global batch size sees the identical stream.
The sampler's only randomness is those seeded generators: there is no generator state to save.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

from ct_train import distributed as dist
from ct_train.apportion import exact_counts, largest_remainder


@dataclass(frozen=True)
class Plan:
    """What the next global batch draws from: pool name -> weight (normalised by the sampler).

    A curriculum's `plan(step)` returns one; it is the sampler's input, so it lives here.
    `exact=False`: each sample of the global batch comes from a pool drawn with these weights
    (a multinomial split). `exact=True`: the batch is split in proportion to the weights, rounded
    by largest remainder (a bandit that chose its arms wants exactly those arms).
    `info` is logged as `curriculum/<key>`.
    """

    weights: Dict[str, float]
    info: Dict[str, float] = field(default_factory=dict)
    exact: bool = False


class CurriculumSampler:
    def __init__(self, pools: Dict[str, np.ndarray], global_batch_size: int, seed: int) -> None:
        empty = [name for name, idx in pools.items() if len(idx) == 0]
        if empty:
            raise ValueError(f"sampler pools with no sample: {empty}")
        self.pools = dict(pools)
        self.global_batch_size = global_batch_size
        self.seed = seed
        # pool -> [epoch, offset, samples moved to the end of this epoch's permutation]
        self.cursors: Dict[str, List[Any]] = {name: [0, 0, []] for name in self.pools}
        self._perm_cache: Dict[str, tuple] = {}
        self._warned_small = False

    def replace_pools(self, pools: Dict[str, np.ndarray]) -> None:
        """A new set of pools (a curriculum stage that builds its own, e.g. a TAPIR round), each
        starting its first pass. Stage pools have their own names, so their streams are their own."""
        empty = [name for name, idx in pools.items() if len(idx) == 0]
        if empty:
            raise ValueError(f"sampler pools with no sample: {empty}")
        self.pools = dict(pools)
        self.cursors = {name: [0, 0, []] for name in self.pools}
        self._perm_cache.clear()

    def _permutation(self, pool: str, epoch: int, moved: List[int]) -> np.ndarray:
        # Keyed on the moved list's identity: `_take` and `load_state_dict` make a new list whenever
        # it changes, and comparing up to a global batch of ids on every call would cost more.
        cached = self._perm_cache.get(pool)
        if cached is None or cached[0][0] != epoch or cached[0][1] is not moved:
            rng = np.random.default_rng([self.seed, zlib.crc32(pool.encode()), epoch])
            perm = rng.permutation(self.pools[pool])
            if moved:  # membership by binary search in the few moved ids: no sort of the large pool
                ids = np.sort(np.asarray(moved, dtype=perm.dtype))
                pos = np.minimum(np.searchsorted(ids, perm), len(ids) - 1)
                last = ids[pos] == perm
                perm = np.concatenate([perm[~last], perm[last]])
            cached = ((epoch, moved), perm)
            self._perm_cache[pool] = cached
        return cached[1]

    def _take(self, pool: str, n: int) -> np.ndarray:
        epoch, offset, moved = self.cursors[pool]
        size = len(self.pools[pool])
        out: List[np.ndarray] = []
        taken = 0
        while n > 0:
            perm = self._permutation(pool, epoch, moved)
            k = min(n, size - offset)
            out.append(perm[offset : offset + k])
            offset, n, taken = offset + k, n - k, taken + k
            if offset == size:  # the pass ended; what this step took from it goes last in the next
                epoch, offset = epoch + 1, 0  # pass, when the rest of the pool can fill the step
                moved = np.concatenate(out).tolist() if 0 < n <= size - taken else []
        self.cursors[pool] = [epoch, offset, moved]
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def counts(self, step: int, plan: Plan) -> Dict[str, int]:
        """How many samples of the global batch each pool gives at this step."""
        names = sorted(w for w in plan.weights if plan.weights[w] > 0)
        unknown = [n for n in names if n not in self.pools]
        if unknown or not names:
            raise ValueError(f"plan names unknown or no pools: {unknown or plan.weights}")
        p = np.array([plan.weights[n] for n in names], dtype=np.float64)
        if plan.exact:
            drawn = exact_counts(self.global_batch_size, p, np.random.default_rng([self.seed, step, 2]))
        else:
            drawn = np.random.default_rng([self.seed, step, 0]).multinomial(self.global_batch_size, p / p.sum())
        drawn = self._fit_capacity(drawn, p, np.array([len(self.pools[n]) for n in names]), names)
        return {n: int(c) for n, c in zip(names, drawn) if c > 0}

    def _fit_capacity(self, counts: np.ndarray, weights: np.ndarray, capacity: np.ndarray, names: list) -> np.ndarray:
        """Move what exceeds a pool's size to the planned pools with room, by weight."""
        counts = counts.copy()
        if capacity.sum() < counts.sum():
            if not self._warned_small:
                warnings.warn(
                    f"the planned pools {names} hold {int(capacity.sum())} samples, fewer than the global "
                    f"batch of {self.global_batch_size}: samples repeat within a step",
                    stacklevel=3,
                )
                self._warned_small = True
            return counts
        while (counts > capacity).any():
            excess = int(np.maximum(counts - capacity, 0).sum())
            counts = np.minimum(counts, capacity)
            room = capacity - counts
            w = np.where(room > 0, weights, 0.0)
            if w.sum() == 0:  # only pools with zero weight have room (cannot happen: zero-weight pools are dropped)
                w = (room > 0).astype(np.float64)
            counts += np.minimum(largest_remainder(excess, w), room)
        return counts

    def global_batch(self, step: int, plan: Plan) -> np.ndarray:
        """The next global batch (indices into the training split); advances the state."""
        picks = [self._take(pool, n) for pool, n in self.counts(step, plan).items()]
        batch = np.concatenate(picks).astype(np.int64)
        np.random.default_rng([self.seed, step, 1]).shuffle(batch)
        return batch

    @staticmethod
    def rank_micro_batches(
        global_batch: np.ndarray, rank: int, world_size: int, micro_batch_size: int
    ) -> List[np.ndarray]:
        """Rank `rank`'s contiguous slice of the global batch, as micro-batches in order."""
        return dist.rank_micro_batches(global_batch, rank, world_size, micro_batch_size)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "cursors": {k: [int(v[0]), int(v[1]), [int(i) for i in v[2]]] for k, v in self.cursors.items()},
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
        # Checkpoints from before the moved-samples field hold [epoch, offset].
        cursors = {k: (list(state["cursors"][k]) + [[]])[:3] for k in self.pools}
        for k, (_, offset, moved) in cursors.items():  # a state for other data would over-draw
            if not 0 <= offset <= len(self.pools[k]) or not np.isin(moved, self.pools[k]).all():
                raise ValueError(f"sampler state of pool {k!r} does not fit its {len(self.pools[k])} samples")
        self.cursors = cursors
