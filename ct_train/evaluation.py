"""Held-out per-cluster loss and exact match, and a few greedy generations to read.

Exact match is computed teacher-forced in the same forward as the loss: greedy decoding reproduces
the reference response (and its end-of-turn token) exactly when, at every response position, the
argmax of the next-token distribution given the reference prefix is the reference token. So
`n_correct == n_target` is greedy-decoding exact match, at the cost of one forward and no generate
loop (which under ZeRO-3 would need every rank to run the same number of decoding steps).

Every rank runs the same number of forward calls (ZeRO-3 gathers parameters collectively): ranks
whose shard runs out repeat a real batch with zero weight.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ct_train import distributed as dist
from ct_train.data import MicroBatch, TokenizedSplit, collate

MAX_DIFFICULTY_LEVELS = 10


def difficulty_levels(split: TokenizedSplit) -> np.ndarray:
    """The distinct difficulty values of a split when they form a few levels (else none)."""
    levels = np.unique(split.difficulty[np.isfinite(split.difficulty)])
    return levels if 1 < len(levels) <= MAX_DIFFICULTY_LEVELS else np.empty(0)


def _level_name(value: float) -> str:
    return f"{value:g}"


@torch.no_grad()
def evaluate(
    engine, split: TokenizedSplit, clusters: List[str], micro_batch_size: int, pad_id: int, exact_match: bool
) -> Dict[str, float]:
    """Held-out metrics, averaged over samples with a response token.

    `eval/<cluster>/loss`, `eval/loss`, `.../token_accuracy` and, when `exact_match`,
    `.../exact_match`; when the split's difficulty takes a few distinct values (levels), also
    `eval_difficulty/<level>/...` and, for a cluster holding more than one level,
    `eval/<cluster>/L<level>/...` (the cell a benchmark reads: a run with data.split_by_difficulty
    names its clusters `<cluster>/L<level>`, so its keys are the same).
    """
    micro = dist.rank_micro_batches(
        np.arange(len(split)), dist.rank(), dist.world_size(), micro_batch_size, interleave=True
    )
    levels = difficulty_levels(split)
    # Columns: clusters, then difficulty levels, then (cluster, level) cells; a sample without a level
    # goes to the last column, which is dropped.
    C, L = len(clusters), len(levels)
    dropped = C + L + C * L
    level_col = np.full(len(split), dropped, dtype=np.int64)
    cell_col = np.full(len(split), dropped, dtype=np.int64)
    if L:
        finite = np.isfinite(split.difficulty)
        level_of = np.searchsorted(levels, split.difficulty[finite])
        level_col[finite] = C + level_of
        cell_col[finite] = C + L + split.cluster_ids[finite] * L + level_of
    # Rows: loss sum, samples, exact matches, correct target tokens, target tokens.
    table = torch.zeros(5, dropped + 1, dtype=torch.float64, device=engine.device)
    with engine.eval_mode():
        for idx in micro:
            weight = 1.0
            if len(idx) == 0:  # keep the forward count equal across ranks
                idx, weight = np.arange(min(micro_batch_size, len(split))), 0.0
            batch: MicroBatch = collate(split, idx, pad_id).to(engine.device)
            loss, n_correct = engine.forward(batch)
            has = (batch.n_target > 0).to(torch.float64) * weight
            exact = (n_correct == batch.n_target).double() * has
            for col in (
                batch.cluster_ids,
                *(torch.from_numpy(c[idx]).to(engine.device) for c in (level_col, cell_col)),
            ):
                table[0].index_add_(0, col, loss.double() * has)
                table[1].index_add_(0, col, has)
                table[2].index_add_(0, col, exact)
                table[3].index_add_(0, col, n_correct.double() * weight)
                table[4].index_add_(0, col, batch.n_target.double() * weight)
    table = dist.all_reduce_sum(table).cpu().numpy()  # one collective for every metric
    out: Dict[str, float] = {}
    for c, name in enumerate(clusters):
        if table[1, c] > 0:
            out[f"eval/{name}/loss"] = float(table[0, c] / table[1, c])
            out[f"eval/{name}/token_accuracy"] = float(table[3, c] / max(table[4, c], 1.0))
            if exact_match:
                out[f"eval/{name}/exact_match"] = float(table[2, c] / table[1, c])
    for j, value in enumerate(levels):
        c = len(clusters) + j
        if table[1, c] > 0:
            out[f"eval_difficulty/{_level_name(value)}/loss"] = float(table[0, c] / table[1, c])
            if exact_match:
                out[f"eval_difficulty/{_level_name(value)}/exact_match"] = float(table[2, c] / table[1, c])
    for c, name in enumerate(clusters):
        cells = [(C + L + c * L + j, value) for j, value in enumerate(levels) if table[1, C + L + c * L + j] > 0]
        if len(cells) < 2:  # one level: the cluster's own row says it all
            continue
        for col, value in cells:
            out[f"eval/{name}/L{_level_name(value)}/loss"] = float(table[0, col] / table[1, col])
            if exact_match:
                out[f"eval/{name}/L{_level_name(value)}/exact_match"] = float(table[2, col] / table[1, col])
    per_cluster = table[:, : len(clusters)]
    total = per_cluster[1].sum()
    if total > 0:
        out["eval/loss"] = float(per_cluster[0].sum() / total)
        # (token accuracy: argmax-correct response tokens over all of them, the next-token view of
        # exact match; perplexity is exp of eval/loss with data.loss_normalization=token)
        out["eval/token_accuracy"] = float(per_cluster[3].sum() / max(per_cluster[4].sum(), 1.0))
        if exact_match:
            out["eval/exact_match"] = float(per_cluster[2].sum() / total)
    return out


@torch.no_grad()
def sample_losses(
    engine, split: TokenizedSplit, micro_batch_size: int, pad_id: int, indices: Optional[np.ndarray] = None
) -> np.ndarray:
    """Per-sample loss of the current model on `indices` of `split` (default: all), on every rank.

    The samples are sorted by length and dealt round-robin, so a micro-batch holds similar lengths
    (little padding) and every rank gets about the same work. Every rank runs the same number of
    forwards (a rank whose share runs out repeats a batch and discards it: ZeRO-3 gathers parameters
    collectively and hangs otherwise), then one all-reduce of the losses and of how many times each
    sample was scored, which must be exactly once. A sample without a response token gets 0.
    """
    todo = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
    by_length = np.argsort(split.lengths[todo], kind="stable")  # positions into todo
    micro = dist.rank_micro_batches(by_length, dist.rank(), dist.world_size(), micro_batch_size, interleave=True)
    table = torch.zeros(2, len(todo), dtype=torch.float64, device=engine.device)  # loss, times scored
    with engine.eval_mode():
        for pos in micro:
            keep = len(pos) > 0
            idx = todo[pos] if keep else todo[: min(micro_batch_size, len(todo))]  # a dummy batch, discarded
            batch = collate(split, idx, pad_id).to(engine.device)
            loss, _ = engine.forward(batch)
            if keep:
                at = torch.from_numpy(pos).to(engine.device)
                table[0, at] = torch.where(batch.n_target > 0, loss.double(), 0.0)
                table[1, at] = 1.0
    table = dist.all_reduce_sum(table).cpu().numpy()
    if len(todo) and not (table[1] == 1).all():
        raise RuntimeError(f"scoring pass scored {int((table[1] != 1).sum())} samples not exactly once")
    return table[0]


def probe_loss(engine, probe: TokenizedSplit, n_clusters: int, micro_batch_size: int, pad_id: int) -> np.ndarray:
    """(C,) mean loss of each cluster's held-out probe samples (NaN without any): the distributed
    no-grad scoring pass (the same forward count on every rank), then a per-cluster mean."""
    losses = sample_losses(engine, probe, micro_batch_size, pad_id)
    return cluster_means(losses, probe.cluster_ids, probe.n_target, n_clusters)


def cluster_means(losses: np.ndarray, cluster_ids: np.ndarray, n_target: np.ndarray, n_clusters: int) -> np.ndarray:
    """(C,) the mean of per-sample `losses` over each cluster's samples with a response token (NaN
    for a cluster without any)."""
    has = (n_target > 0).astype(np.float64)
    total = np.bincount(cluster_ids, weights=losses * has, minlength=n_clusters)
    count = np.bincount(cluster_ids, weights=has, minlength=n_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


def prompt_information(
    engine,
    combined: TokenizedSplit,
    n_probe: int,
    kept: np.ndarray,
    n_clusters: int,
    micro_batch_size: int,
    pad_id: int,
) -> tuple:
    """(probe_loss, info, info_se), each (C,), from one scoring pass over the probe followed by its
    prompt-swapped twins (`data.prompt_swap.with_twins`; the first `n_probe` samples are the probe):
    the probe's per-cluster mean loss as `probe_loss` gives it, and each cluster's mean of twin loss
    minus own-prompt loss (what the model takes from the prompt, in nats) with its standard error
    (NaN with fewer than two pairs)."""
    losses = sample_losses(engine, combined, micro_batch_size, pad_id)
    own, swapped = losses[:n_probe], losses[n_probe:]
    ok = (combined.n_target[kept] > 0) & (combined.n_target[n_probe:] > 0)
    diff, cid = (swapped - own[kept])[ok], combined.cluster_ids[n_probe:][ok]
    n = np.bincount(cid, minlength=n_clusters).astype(np.float64)
    total = np.bincount(cid, weights=diff, minlength=n_clusters)
    sq = np.bincount(cid, weights=diff**2, minlength=n_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1.0), np.nan)
        var = np.where(n > 1, (sq - n * mean**2) / np.maximum(n - 1.0, 1.0), np.nan)
        se = np.sqrt(np.maximum(var, 0.0) / np.maximum(n, 1.0))
    probe = cluster_means(own, combined.cluster_ids[:n_probe], combined.n_target[:n_probe], n_clusters)
    return probe, mean, se


def first_turn(input_ids: List[int], labels: List[int]) -> Optional[Tuple[List[int], List[int]]]:
    """(prompt, reference) of a tokenised sample: the tokens before its first response token, and that
    response (its labelled span, end-of-turn included); None when nothing is labelled."""
    start = next((i for i, label in enumerate(labels) if label != -100), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(labels)) if labels[i] == -100), len(labels))
    return list(input_ids[:start]), list(input_ids[start:end])


def generations(
    engine, split: TokenizedSplit, clusters: List[str], per_cluster: int, max_new_tokens: int, tokenizer: Any
) -> List[Dict[str, Any]]:
    """Greedy generations for the first `per_cluster` held-out samples of every cluster (the same ones
    at every eval, so a reader follows them change): [{cluster, id, prompt, reference, generation}].
    One left-padded batch; every rank runs it (ZeRO-3), every rank gets the rows."""
    picked = []
    for c, name in enumerate(clusters):
        for i in np.flatnonzero(split.cluster_ids == c)[:per_cluster]:
            row = split.dataset[int(i)]
            turn = first_turn(row["input_ids"], row["labels"])
            if turn is not None:
                picked.append((name, row["id"], *turn))
    if not picked:
        return []
    width = max(len(prompt) for _, _, prompt, _ in picked)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for _, _, p, _ in picked])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, _, p, _ in picked])
    out = engine.generate(ids, mask, max_new_tokens, pad, tokenizer.eos_token_id).cpu()
    rows = []
    for (name, sample_id, prompt, reference), seq in zip(picked, out):
        new = seq[width:].tolist()
        if tokenizer.eos_token_id in new:  # up to and without the end of turn
            new = new[: new.index(tokenizer.eos_token_id)]
        rows.append(
            {
                "cluster": name,
                "id": sample_id,
                "prompt": tokenizer.decode(prompt, skip_special_tokens=True),
                "reference": tokenizer.decode(reference, skip_special_tokens=True),
                "generation": tokenizer.decode(new, skip_special_tokens=True),
            }
        )
    return rows
