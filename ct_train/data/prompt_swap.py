"""Prompt-swapped twins of a split: each sample's response after another sample's prompt (same cluster).

The held-out question a twin answers is whether the model uses the prompt. The loss of a response
after a prompt that is not its own, minus its loss after its own prompt, is the information the model
has learned to take from the prompt (IFD's idea, Li et al. 2024, with a same-cluster prompt as the
unconditioned case so the template and the task's format stay): about 0 for a cluster whose answers
do not depend on their prompts (random labels), however far its loss falls towards the answers'
marginal, and growing as a learnable cluster is learned.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from ct_train.data.prepare import TokenizedSplit


def _response_start(labels: List[int]) -> int:
    """The first labelled position (the end of the prompt); len(labels) when nothing is labelled."""
    return next((i for i, label in enumerate(labels) if label != -100), len(labels))


def swap_pairs(cluster_ids: np.ndarray) -> np.ndarray:
    """(N,) for each sample the sample whose prompt its twin takes: the next one of its cluster
    (cyclic, in index order), so each prompt is used once and never with its own response; a sample
    alone in its cluster gets -1 (no twin)."""
    partner = np.full(len(cluster_ids), -1, dtype=np.int64)
    for c in np.unique(cluster_ids):
        idx = np.flatnonzero(cluster_ids == c)
        if len(idx) > 1:
            partner[idx] = np.roll(idx, -1)
    return partner


def with_twins(split: TokenizedSplit) -> Tuple[TokenizedSplit, np.ndarray]:
    """(combined, kept): `split`'s samples followed by their twins, so one scoring pass measures both;
    `kept` are the indices of `split` that have a twin, and combined[len(split) + k] is sample
    kept[k]'s labelled span (and what follows it) after the prompt of its partner (`swap_pairs`).
    A twin is cut to the longest sample of `split`, so it is never longer than the data allows."""
    import datasets

    partner = swap_pairs(split.cluster_ids)
    kept = np.flatnonzero(partner >= 0)
    longest = int(split.lengths.max()) if len(split) else 0
    rows = split.dataset[[int(i) for i in kept]]
    prompts = split.dataset[[int(j) for j in partner[kept]]]
    out: Dict[str, list] = {key: [] for key in split.dataset.column_names}
    for k in range(len(kept)):
        labels = rows["labels"][k]
        start, cut = _response_start(labels), _response_start(prompts["labels"][k])
        new_labels = ([-100] * cut + list(labels[start:]))[:longest]
        for key in out:
            out[key].append(rows[key][k])
        out["id"][-1] = f"{rows['id'][k]}~swap"
        out["input_ids"][-1] = (list(prompts["input_ids"][k][:cut]) + list(rows["input_ids"][k][start:]))[:longest]
        out["labels"][-1] = new_labels
        out["n_target"][-1] = sum(1 for label in new_labels[1:] if label != -100)
    twins = datasets.Dataset.from_dict(out, features=split.dataset.features)
    combined = TokenizedSplit(
        dataset=datasets.concatenate_datasets([split.dataset, twins]),
        cluster_ids=np.concatenate([split.cluster_ids, split.cluster_ids[kept]]),
        difficulty=np.concatenate([split.difficulty, split.difficulty[kept]]),
        lengths=np.concatenate([split.lengths, np.array([len(x) for x in out["input_ids"]], dtype=np.int64)]),
        n_target=np.concatenate([split.n_target, np.array(out["n_target"], dtype=np.int64)]),
        part_ids=np.concatenate([split.part_ids, split.part_ids[kept]]) if len(split.part_ids) else split.part_ids,
        parts=split.parts,
    )
    return combined, kept
