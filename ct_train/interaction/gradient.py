"""The gradient estimate of the interaction matrix: similarity of per-category mean gradients.

One SGD step on category k changes the loss of j by about -lr * g_j . g_k (first order), so the
similarity of the categories' mean gradients estimates how training on k moves j without training:
E_grad[j][k] = -cos(g_j, g_k) (or -g_j . g_k with `interaction.similarity=dot`).

g_k is the token-mean loss gradient over `interaction.grad_samples` samples of k (drawn once, seeded),
restricted to the parameters whose names match `interaction.params` (fnmatch, names as in the Hugging
Face model, e.g. `model.layers.3.*`). Under ZeRO-3 each of those parameters' gradient is gathered
alone (`Engine.full_grads`, after backward, before the step), folded into a count
sketch of `interaction.sketch_dim` buckets and freed: memory stays at one full parameter gradient,
and K sketches. A count sketch (a fixed random bucket and sign per coordinate) keeps inner products
in expectation; with sketch_dim=0 (or a subset smaller than it) the vectors are exact.

The engine steps with SGD at learning rate 0 (DeepSpeed's micro-step bookkeeping needs the step),
so the weights never change and no optimizer state is allocated.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from typing import Any, Dict, List

import numpy as np
import torch

from ct_train import distributed as dist
from ct_train.config import Config
from ct_train.errors import ConfigError

SKETCH_CHUNK = 1 << 24  # coordinates hashed at once (bounds the index buffers to ~200 MB)


def select_parameters(named: List[tuple], patterns: List[str]) -> List[tuple]:
    """(name, param) pairs whose name (without our wrapper's `lm.` prefix) matches a pattern."""
    out = []
    for name, p in named:
        short = name[3:] if name.startswith("lm.") else name
        if p.requires_grad and any(fnmatch.fnmatchcase(short, pat) for pat in patterns):
            out.append((short, p))
    if not out:
        names = [n[3:] if n.startswith("lm.") else n for n, _ in named]
        raise ConfigError(
            f"interaction.params={list(patterns)!r} matches no trainable parameter; names look like "
            f"{names[:3] + names[-2:]}"
        )
    return out


class CountSketch:
    """Linear sketch of a long vector into `dim` buckets: coordinate i adds sign_i * x_i to bucket h_i,
    with h and sign fixed by (seed, parameter index) so every category's vector uses the same map."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim, self.seed = dim, seed

    def add(self, out: torch.Tensor, values: torch.Tensor, param_index: int) -> None:
        flat = values.reshape(-1)
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + param_index)
        for start in range(0, flat.numel(), SKETCH_CHUNK):
            chunk = flat[start : start + SKETCH_CHUNK].double().cpu()
            bucket = torch.randint(0, self.dim, (chunk.numel(),), generator=gen)
            sign = torch.randint(0, 2, (chunk.numel(),), generator=gen).double() * 2 - 1
            out.index_add_(0, bucket, chunk * sign)


def _token_weights(batch: Any, denominator: float, grad_scale: int) -> torch.Tensor:
    from ct_train.losses import objective_weights

    return objective_weights(batch.n_target, "token", denominator, grad_scale=grad_scale)


def category_gradients(cfg: Config, data: Any, tokenizer: Any, categories: List[str], log) -> Dict[str, Any]:
    """(K, D) matrix of per-category mean gradients (sketched or exact), identical on every rank."""
    from ct_train.data import collate
    from ct_train.engine import Engine

    interaction, trainer = cfg.interaction, cfg.trainer
    world, rank = dist.world_size(), dist.rank()
    per_step = world * trainer.micro_batch_size
    batch = math.ceil(interaction.grad_samples / per_step) * per_step  # one accumulation cycle per category
    gcfg = dataclasses.replace(
        cfg,
        trainer=dataclasses.replace(
            trainer, optimizer="sgd", lr=0.0, weight_decay=0.0, grad_clip=0.0, global_batch_size=batch, max_steps=1
        ),
    )
    engine = Engine(gcfg, tokenizer)
    chosen = select_parameters(list(engine.module.named_parameters()), list(interaction.params))
    total = engine.full_numel(p for _, p in chosen)
    exact = interaction.sketch_dim == 0 or total <= interaction.sketch_dim
    dim = total if exact else interaction.sketch_dim
    log(
        f"gradient estimate: {len(chosen)} parameter tensors ({total:,} values) matching {list(interaction.params)}, "
        + ("exact vectors" if exact else f"count sketch of {dim:,} buckets")
        + f", {batch} samples per category"
    )
    sketch = CountSketch(dim, trainer.seed)
    split = data.train
    out = np.zeros((len(categories), dim), dtype=np.float64)
    engine.train()
    for k, name in enumerate(categories):
        pool = np.flatnonzero(split.cluster_ids == data.clusters.index(name))
        rng = np.random.default_rng([trainer.seed, 0x6AAD, k])
        idx = rng.choice(pool, batch, replace=len(pool) < batch)
        denominator = float(split.n_target[idx].sum())
        micro = dist.rank_micro_batches(idx, rank, world, trainer.micro_batch_size)
        batches = [collate(split, m, tokenizer.pad_token_id).to(engine.device) for m in micro]
        weights_of = functools.partial(_token_weights, denominator=denominator, grad_scale=world * len(micro))
        for _ in engine.accumulate(batches, weights_of):
            pass  # the gradients accumulate in the engine; read below before the boundary step
        vec = torch.zeros(dim, dtype=torch.float64)
        offset = 0
        # One full gradient at a time (a collective under ZeRO-3): memory stays at one parameter's.
        for j, g in enumerate(engine.full_grads([p for _, p in chosen])):
            if exact:
                n = g.numel()
                vec[offset : offset + n] = g.reshape(-1).double().cpu()
                offset += n
            else:
                sketch.add(vec, g, j)
            del g
        engine.step()  # lr 0: the weights stay; DeepSpeed clears the gradients for the next category
        out[k] = vec.numpy()
    del engine
    return {"vectors": out, "exact": exact, "dim": dim, "parameters": total, "samples": batch}


def similarity(vectors: np.ndarray, kind: str) -> np.ndarray:
    """(K, K) cosine or dot similarity of the rows."""
    dots = vectors @ vectors.T
    if kind == "dot":
        return dots
    norms = np.sqrt(np.clip(np.diag(dots), 1e-300, None))
    return dots / np.outer(norms, norms)
