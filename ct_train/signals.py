"""Per-cluster progress signals, combined across ranks with one all-reduce per optimizer step.

Each rank adds its micro-batches' per-sample losses into a (2, C) table [sum_loss; count]. At the
accumulation boundary one all_reduce(SUM) of that table gives every rank the same `ClusterStats`
(DESIGN.md, "Signal"): the only collective ct_train adds to ZeRO's own.
"""

from __future__ import annotations

import torch

from ct_train import distributed as dist
from ct_train.curriculum.base import ClusterStats


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
        table = dist.all_reduce_sum(self.table)  # sync point: (2, C) float64, one call per step
        stats = ClusterStats(self.clusters, table[0].cpu().numpy().copy(), table[1].cpu().numpy().copy())
        self.table = torch.zeros_like(self.table)
        return stats


def cluster_loss_metrics(stats: ClusterStats, prefix: str = "cluster") -> dict:
    """`{prefix}/<name>/loss` for each cluster seen this step."""
    return {f"{prefix}/{c}/loss": v for c, v in stats.mean_loss().items()}
