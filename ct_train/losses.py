"""Per-sample losses and the training objective.

`per_sample_loss` fuses the lm_head projection with the cross-entropy, chunked over response tokens:
prompt and padding positions (label -100) are dropped before the projection, and at most
`chunk_tokens x vocab` fp32 logits exist at once, in the forward and in the backward (which recomputes
each chunk's logits from the saved hidden states and log-sum-exp instead of storing them). The
gradient is exact for any upstream gradient on the per-sample vector. A Triton kernel (issue 4) will
replace `_ChunkedLinearCE` behind the same function.

`objective` turns per-sample losses into the scalar that is back-propagated, normalised by counts of
the *global* batch, so the gradient is the same for any split into ranks x micro-batches x
accumulation steps (DESIGN.md, "Loss").
"""

from __future__ import annotations

from typing import Tuple

import torch

IGNORE_INDEX = -100


def _acc(x: torch.Tensor) -> torch.Tensor:
    """Accumulate in at least fp32 (bf16/fp16 logits are upcast; fp64 stays fp64 for tests)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _ChunkedLinearCE(torch.autograd.Function):
    """Mean cross-entropy per sample over compacted valid rows; recompute-in-backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, sample_index, inv_count, chunk_tokens):
        # hidden: (N, H) valid rows only; weight: (V, H); targets, sample_index: (N,); inv_count: (B,)
        n = hidden.shape[0]
        acc = _acc(hidden[:0]).dtype
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        token_loss = torch.empty(n, dtype=acc, device=hidden.device)
        correct = torch.empty(n, dtype=torch.bool, device=hidden.device)
        for s in range(0, n, chunk_tokens):
            logits = _acc(hidden[s : s + chunk_tokens] @ weight.t())  # (n_c, V), fp32 or wider
            t = targets[s : s + chunk_tokens]
            lse[s : s + chunk_tokens] = torch.logsumexp(logits, dim=-1)
            token_loss[s : s + chunk_tokens] = lse[s : s + chunk_tokens] - logits.gather(1, t[:, None]).squeeze(1)
            correct[s : s + chunk_tokens] = logits.argmax(dim=-1) == t
        inv_count = inv_count.to(acc)
        per_sample = torch.zeros_like(inv_count).index_add_(0, sample_index, token_loss) * inv_count
        n_correct = torch.zeros_like(inv_count).index_add_(0, sample_index, correct.to(acc))
        ctx.save_for_backward(hidden, weight, targets, sample_index, inv_count, lse)
        ctx.chunk_tokens = chunk_tokens
        ctx.mark_non_differentiable(n_correct)
        return per_sample, n_correct

    @staticmethod
    def backward(ctx, grad_per_sample, _grad_correct):
        hidden, weight, targets, sample_index, inv_count, lse = ctx.saved_tensors
        # d loss_s / d logit_t = (softmax_t - onehot_t) / n_s for each token t of sample s.
        token_scale = (grad_per_sample.to(inv_count.dtype) * inv_count)[sample_index]  # (N,)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=_acc(weight[:0]).dtype, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        step = ctx.chunk_tokens
        for s in range(0, hidden.shape[0], step):
            h = hidden[s : s + step]
            logits = _acc(h @ weight.t())
            dlogits = torch.exp(logits - lse[s : s + step, None])
            rows = torch.arange(h.shape[0], device=h.device)
            dlogits[rows, targets[s : s + step]] -= 1.0
            dlogits *= token_scale[s : s + step, None]  # fold the upstream scale in before rounding
            dlogits = dlogits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[s : s + step] = dlogits @ weight
            if grad_weight is not None:
                grad_weight += _acc(dlogits.t() @ h)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def per_sample_loss(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_tokens: int = 4096
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean response-token cross-entropy of every sample, and its number of argmax-correct tokens.

    Args:
        hidden: (B, T, H) final hidden states.
        weight: (V, H) output projection (lm_head) weight.
        labels: (B, T) token ids, -100 where no loss is taken; shifted here (position t predicts t+1).
        chunk_tokens: response tokens projected at once; bounds the fp32 logits to chunk x V.

    Returns:
        (loss, n_correct), both (B,) in fp32 (fp64 for fp64 inputs). A sample with no response
        token has loss 0 (not NaN).
        `n_correct == n_target` means greedy decoding reproduces the response (exact match).
    """
    h = hidden[:, :-1]  # (B, T-1, H)
    target = labels[:, 1:]  # (B, T-1)
    valid = target != IGNORE_INDEX
    counts = valid.sum(dim=1).to(_acc(hidden[:0, :0, :0]).dtype)  # (B,)
    inv_count = torch.where(counts > 0, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))
    sample_index = valid.nonzero(as_tuple=True)[0]  # row of each valid token, in row-major order
    return _ChunkedLinearCE.apply(h[valid], weight, target[valid], sample_index, inv_count, chunk_tokens)


def objective(
    per_sample: torch.Tensor, n_target: torch.Tensor, normalization: str, global_denominator: float, grad_scale: float
) -> torch.Tensor:
    """The scalar to back-propagate for one micro-batch.

    token: sum of token losses / response tokens in the global batch.
    sample: sum of per-sample mean losses / samples (with a response token) in the global batch.
    `global_denominator` is that global count (computed from the global batch, identical on every
    rank, no communication). `grad_scale` undoes what DeepSpeed does to the gradient, which averages
    over ranks and divides by the accumulation steps: grad_scale = world_size x grad_accum_steps.
    """
    if normalization == "token":
        total = (per_sample * n_target.to(per_sample.dtype)).sum()
    else:
        total = per_sample.sum()
    return total * (grad_scale / max(global_denominator, 1.0))
