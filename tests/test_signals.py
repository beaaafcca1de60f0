"""The per-step signal reduction: several accumulators and the stop flags in one collective."""

import torch

from ct_train.signals import ClusterLossAccumulator, reduce_together


def test_reduce_together_carries_the_stop_flags_whatever_the_number_of_clusters():
    # One cluster (a user's data without clusters) and two flags: the flags do not fit a (1, C) row,
    # which is how this broke once; they ride beside the tables.
    for clusters in (["all"], ["a", "b", "c"]):
        train = ClusterLossAccumulator(clusters, torch.device("cpu"))
        probe = ClusterLossAccumulator(clusters, torch.device("cpu"))
        train.add(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]), torch.tensor([3, 0]))  # the 2nd: no target
        probe.add(torch.tensor([len(clusters) - 1]), torch.tensor([5.0]), torch.tensor([1]))
        flags = [1.0, 15.0]
        first, second = reduce_together([train, probe], flags=flags)
        assert first.loss_sum[0] == 1.0 and first.count[0] == 1.0 and second.loss_sum[-1] == 5.0
        assert flags == [1.0, 15.0]  # one process: the sums are this rank's own
        assert float(train.table.abs().sum()) == 0.0  # reset after the reduction
        (plain,) = reduce_together([probe])
        assert plain.count.sum() == 0.0
