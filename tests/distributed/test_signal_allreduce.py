"""The per-cluster signal: one all-reduce gives every rank the same, correct table (2 gloo processes)."""

import os
import pickle

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import free_port

pytestmark = pytest.mark.distributed

CLUSTERS = ["a", "b", "c"]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from ct_train import distributed as dist
    from ct_train.signals import ClusterLossAccumulator

    dist.init(timeout_s=60)
    acc = ClusterLossAccumulator(CLUSTERS, torch.device("cpu"))
    # rank 0 sees clusters a and b, rank 1 sees b and c; one sample of rank 1 has no response token.
    if rank == 0:
        acc.add(torch.tensor([0, 1, 1]), torch.tensor([1.0, 2.0, 4.0]), torch.tensor([3, 1, 2]))
    else:
        acc.add(torch.tensor([1, 2]), torch.tensor([6.0, 5.0]), torch.tensor([4, 0]))
        acc.add(torch.tensor([2]), torch.tensor([3.0]), torch.tensor([1]))
    stats = acc.reduce()
    again = acc.reduce()  # reset after reducing
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump((stats.loss_sum.tolist(), stats.count.tolist(), stats.mean_loss(), again.count.tolist()), f)
    dist.shutdown()


def test_cluster_stats_identical_and_summed_on_every_rank(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    assert results[0] == results[1]
    loss_sum, count, mean, after_reset = results[0]
    assert loss_sum == [1.0, 12.0, 3.0] and count == [1.0, 3.0, 1.0]  # the empty sample is not counted
    assert mean == {"a": 1.0, "b": 4.0, "c": 3.0}
    assert after_reset == [0.0, 0.0, 0.0]
