"""Per-cluster progress signals, combined across ranks with one all-reduce per reduction point.

Each rank adds its micro-batches' per-sample losses into a (2, C) table [sum_loss; count]. At the
accumulation boundary one all_reduce(SUM) gives every rank the same `ClusterStats` (DESIGN.md,
"Signal"); tables measured at the same point (the step's training loss and, for SPG, the fresh
batch's loss before the update) are stacked into that one collective.

Prediction gain (`curriculum.signal`, Graves et al. 2017):
- `loss`: nothing extra; one (2, C) all-reduce per step.
- `pg`: after the update, one no-grad forward over the same micro-batches; gain = mean loss before -
  mean loss after, per cluster, over the same samples. A second (2, C) all-reduce after the update
  (the first must come before it: a non-finite loss stops the run with the weights untouched).
- `spg`: the same on a fresh batch drawn from the step's plan by a separate sampler stream (not
  trained on): a no-grad forward before the update (stacked into the first all-reduce) and one after.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from ct_train import distributed as dist
from ct_train.curriculum.base import ClusterStats
from ct_train.data import collate


class ClusterLossAccumulator:
    def __init__(self, clusters: list, device: torch.device) -> None:
        self.clusters = list(clusters)
        self.device = device
        self.table = torch.zeros(2, len(self.clusters), dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, cluster_ids: torch.Tensor, per_sample_loss: torch.Tensor, n_target: torch.Tensor) -> None:
        """Count samples that have at least one response token (the others carry no signal)."""
        has = (n_target > 0).to(torch.float64).to(self.device)
        ids = cluster_ids.to(self.device)
        self.table[0].index_add_(0, ids, per_sample_loss.detach().to(torch.float64) * has)
        self.table[1].index_add_(0, ids, has)

    def reduce(self) -> ClusterStats:
        """All-reduce and reset. A collective: every rank must call it at the same step."""
        return reduce_together([self])[0]


def reduce_together(accumulators: Sequence[ClusterLossAccumulator], flags: Optional[list] = None) -> List[ClusterStats]:
    """All-reduce several accumulators with ONE collective (stacked), reset them, return their stats.

    `flags`: small per-rank numbers summed in the same collective (the preemption flag: any rank that
    got a stop signal); replaced in place by their sums over ranks."""
    tables = [a.table for a in accumulators]
    device = tables[0].device
    extra = torch.tensor(list(flags or []), dtype=torch.float64, device=device)
    flat = dist.all_reduce_sum(torch.cat([t.reshape(-1) for t in tables] + [extra]))  # sync point, 2kC [+ flags]
    flat = flat.cpu().numpy()
    if flags:
        flags[:] = flat[len(flat) - len(flags) :].tolist()
    table = flat[: len(flat) - len(extra)].reshape(-1, tables[0].shape[1])  # (2k, C)
    out = []
    for i, acc in enumerate(accumulators):
        out.append(ClusterStats(acc.clusters, table[2 * i].copy(), table[2 * i + 1].copy()))
        acc.table = torch.zeros_like(acc.table)
    return out


def prediction_gain(before: ClusterStats, after: ClusterStats) -> np.ndarray:
    """(C,) mean loss before minus after, over the same samples; NaN for a cluster without any."""
    return before.mean_loss_array() - after.mean_loss_array()


@torch.no_grad()
def measure(
    engine, split, micro_batches: List[np.ndarray], pad_id: int, acc: ClusterLossAccumulator, pack: bool = False
) -> None:
    """No-grad forwards of `micro_batches` (in training mode, as the step saw them, packed when the step
    was) into `acc`.

    Every rank passes the same number of micro-batches (its slice of the global batch), so ZeRO-3's
    parameter gathers stay matched across ranks.
    """
    for idx in micro_batches:
        batch = collate(split, idx, pad_id, pack).to(engine.device)
        per_sample, _ = engine.forward(batch)
        acc.add(batch.cluster_ids, per_sample, batch.n_target)


def cluster_loss_metrics(stats: ClusterStats, prefix: str = "cluster") -> dict:
    """`{prefix}/<name>/loss` and `/samples` for each cluster seen this step."""
    out = {f"{prefix}/{c}/loss": v for c, v in stats.mean_loss().items()}
    out.update({f"{prefix}/{c}/samples": int(n) for c, n in zip(stats.clusters, stats.count) if n > 0})
    return out
