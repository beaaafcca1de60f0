"""Held-out per-cluster loss and exact match.

Exact match is computed teacher-forced in the same forward as the loss: greedy decoding reproduces
the reference response (and its end-of-turn token) exactly when, at every response position, the
argmax of the next-token distribution given the reference prefix is the reference token. So
`n_correct == n_target` is greedy-decoding exact match, at the cost of one forward and no generate
loop (which under ZeRO-3 would need every rank to run the same number of decoding steps).

Every rank runs the same number of forward calls (ZeRO-3 gathers parameters collectively): ranks
whose shard runs out repeat a real batch with zero weight.
"""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np
import torch

from ct_train import distributed as dist
from ct_train.data import MicroBatch, TokenizedSplit, collate


@torch.no_grad()
def evaluate(engine, split: TokenizedSplit, clusters: List[str], micro_batch_size: int, pad_id: int,
             exact_match: bool) -> Dict[str, float]:
    """`eval/<cluster>/loss`, `eval/loss` (mean over samples) and, when asked, `.../exact_match`."""
    rank, world = dist.rank(), dist.world_size()
    mine = np.arange(rank, len(split), world)
    n_batches = math.ceil(math.ceil(len(split) / world) / micro_batch_size)
    table = torch.zeros(3, len(clusters), dtype=torch.float64, device=engine.device)  # loss, count, exact
    was_training = engine.ds.training
    engine.train(False)
    for b in range(n_batches):
        idx = mine[b * micro_batch_size: (b + 1) * micro_batch_size]
        weight = 1.0
        if len(idx) == 0:  # keep the forward count equal across ranks
            idx, weight = np.arange(min(micro_batch_size, len(split))), 0.0
        batch: MicroBatch = collate(split, idx, pad_id).to(engine.device)
        loss, n_correct = engine.forward(batch)
        has = (batch.n_target > 0).to(torch.float64) * weight
        table[0].index_add_(0, batch.cluster_ids, loss.double() * has)
        table[1].index_add_(0, batch.cluster_ids, has)
        table[2].index_add_(0, batch.cluster_ids, (n_correct == batch.n_target).double() * has)
    engine.train(was_training)
    table = dist.all_reduce_sum(table).cpu().numpy()
    out: Dict[str, float] = {}
    for c, name in enumerate(clusters):
        if table[1, c] > 0:
            out[f"eval/{name}/loss"] = float(table[0, c] / table[1, c])
            if exact_match:
                out[f"eval/{name}/exact_match"] = float(table[2, c] / table[1, c])
    total = table[1].sum()
    if total > 0:
        out["eval/loss"] = float(table[0].sum() / total)
        if exact_match:
            out["eval/exact_match"] = float(table[2].sum() / total)
    return out
