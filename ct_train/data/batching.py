"""Micro-batch tensors from tokenised samples: right padding, or packing into rows.

Padded (the default): one row per sample, right-padded to the longest, -100 labels on padding.
Packed (`data.packing=true`): the micro-batch's samples are packed first-fit-decreasing into rows
as long as its longest sample (so at most data.max_seq_len); `position_ids` restart at 0 for every
sample and `sample_index` names the sample each token belongs to (-1 on padding), which the model
turns into attention that never crosses samples and the loss into one value per sample.

Why rows of the longest sample and not of max_seq_len: a dense block-diagonal mask (sdpa/eager on
CPU) costs T^2 per row whatever it masks, so rows longer than the padded batch's would spend more
on attention than packing saves; no wider than it, a packed micro-batch never costs more than the
padded one (docs/benchmarks.md). Either way a MicroBatch's per-sample fields (`cluster_ids`,
`n_target`, `ids`) are in the order of `indices`: signals, curricula and the objective cannot tell
the two layouts apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ct_train.data.prepare import TokenizedSplit


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (R, T) int64: R = B rows padded, or fewer rows packed
    attention_mask: torch.Tensor  # (R, T) int64, 0 on padding
    labels: torch.Tensor  # (R, T) int64, -100 on prompt and padding
    cluster_ids: torch.Tensor  # (B,) int64
    n_target: torch.Tensor  # (B,) int64, labels predicted after the causal shift
    ids: List[str]
    position_ids: Optional[torch.Tensor] = None  # (R, T) int64, packed only: 0.. per sample
    sample_index: Optional[torch.Tensor] = None  # (R, T) int64, packed only: sample of each token, -1 on padding

    def to(self, device: torch.device) -> MicroBatch:
        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device)

        return MicroBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.cluster_ids.to(device),
            self.n_target.to(device),
            self.ids,
            move(self.position_ids),
            move(self.sample_index),
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_samples(self) -> int:
        return len(self.ids)


def pack_rows(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """First-fit decreasing: positions into `lengths`, grouped into rows whose lengths sum to at most
    `capacity` (a longer sample gets a row of its own). Deterministic: ties keep the input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: List[List[int]] = []
    room: List[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def collate(split: TokenizedSplit, indices: Sequence[int], pad_id: int, pack: bool = False) -> MicroBatch:
    """The samples at `indices` of `split`: padded on the right to the longest of them, or, with
    `pack`, packed into rows of that length (fewer rows, as wide as the fullest)."""
    rows = split.dataset[list(map(int, indices))]
    seqs, labs = rows["input_ids"], rows["labels"]
    cluster_ids = torch.from_numpy(split.cluster_ids[np.asarray(indices, dtype=np.int64)])
    n_target, ids = torch.tensor(rows["n_target"]), list(rows["id"])
    lengths = [len(s) for s in seqs]
    layout = pack_rows(lengths, max(lengths)) if pack else [[i] for i in range(len(seqs))]
    width = max(sum(len(seqs[i]) for i in row) for row in layout)
    shape = (len(layout), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    sample_index = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(layout):
        at = 0
        for i in row:
            n = len(seqs[i])
            input_ids[r, at : at + n] = torch.tensor(seqs[i])
            labels[r, at : at + n] = torch.tensor(labs[i])
            mask[r, at : at + n] = 1
            position_ids[r, at : at + n] = torch.arange(n)
            sample_index[r, at : at + n] = i
            at += n
        position_ids[r, at:] = torch.arange(width - at)  # padding: a segment of its own
    if not pack:
        return MicroBatch(input_ids, mask, labels, cluster_ids, n_target, ids)
    return MicroBatch(input_ids, mask, labels, cluster_ids, n_target, ids, position_ids, sample_index)


def group_by_length(micro: List[np.ndarray], lengths: np.ndarray) -> List[np.ndarray]:
    """The same samples and micro-batch sizes, regrouped so each micro-batch holds samples of similar
    length (longest first): less padding. Only inside one rank's share of one step, so the step's
    samples, the stream and (up to float order) the gradient do not change."""
    if len(micro) < 2:
        return micro
    mine = np.concatenate(micro)
    mine = mine[np.argsort(-lengths[mine], kind="stable")]
    sizes = np.cumsum([len(m) for m in micro])[:-1]
    return np.split(mine, sizes)
