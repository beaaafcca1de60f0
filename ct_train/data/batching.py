"""Micro-batch tensors from tokenised samples: right padding, -100 labels on padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from ct_train.data.prepare import TokenizedSplit


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64, 0 on padding
    labels: torch.Tensor  # (B, T) int64, -100 on prompt and padding
    cluster_ids: torch.Tensor  # (B,) int64
    n_target: torch.Tensor  # (B,) int64, labels predicted after the causal shift
    ids: List[str]

    def to(self, device: torch.device) -> MicroBatch:
        return MicroBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.cluster_ids.to(device),
            self.n_target.to(device),
            self.ids,
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(split: TokenizedSplit, indices: Sequence[int], pad_id: int) -> MicroBatch:
    """The samples at `indices` of `split`, padded on the right to the longest of them."""
    rows = split.dataset[list(map(int, indices))]
    longest = max(len(x) for x in rows["input_ids"])
    b = len(indices)
    input_ids = torch.full((b, longest), pad_id, dtype=torch.long)
    labels = torch.full((b, longest), -100, dtype=torch.long)
    mask = torch.zeros((b, longest), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows["input_ids"], rows["labels"])):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    cluster_ids = torch.from_numpy(split.cluster_ids[np.asarray(indices, dtype=np.int64)])
    return MicroBatch(input_ids, mask, labels, cluster_ids, torch.tensor(rows["n_target"]), list(rows["id"]))
