"""Per-sample losses and the training objective.

`per_sample_loss` shifts the labels of a (B, T) batch and hands the rows to the fused linear
cross-entropy (`ct_train.kernels`): prompt and padding positions are dropped before the lm_head
projection and the [tokens x vocab] logits never exist at once (Triton on CUDA; on CPU the chunked
PyTorch path, at most `chunk_tokens x vocab` fp32 logits in forward and backward).

`objective` turns per-sample losses into the scalar that is back-propagated, normalised by counts of
the *global* batch, so the gradient is the same for any split into ranks x micro-batches x
accumulation steps (DESIGN.md, "Loss").
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ct_train.kernels.cross_entropy import linear_cross_entropy

IGNORE_INDEX = -100


def per_sample_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int = 4096,
    backend: str = "auto",
    grad_mode: str = "recompute",
    upstream_grad: Optional[torch.Tensor] = None,
    sample_index: Optional[torch.Tensor] = None,
    num_samples: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean response-token cross-entropy of every sample, and its number of argmax-correct tokens.

    Args:
        hidden: (B, T, H) final hidden states.
        weight: (V, H) output projection (lm_head) weight.
        labels: (B, T) token ids, -100 where no loss is taken; shifted here (position t predicts t+1).
        chunk_tokens: rows projected at once by the PyTorch backend (bounds its logits to chunk x V).
        backend: `ct_train.kernels` backend: auto (Triton on CUDA), triton, torch.
        grad_mode, upstream_grad: "forward" finishes the gradients in forward for the upstream
            gradient (B,) that backward will bring (the objective's weights); see ct_train.kernels.
        sample_index, num_samples: packed rows (`data.packing`): the sample of each token, -1 on
            padding, and how many samples there are (B above is then their number, not the rows').
            A label is predicted only from a token of the same sample.

    Returns:
        (loss, n_correct), both (B,) in fp32 (fp64 for fp64 inputs). A sample with no response
        token has loss 0 (not NaN). `n_correct == n_target` means greedy decoding reproduces the
        response (exact match).
    """
    b, t, h = hidden.shape
    # Shift the labels, not the hidden states: (B*T, H) stays a view, the last position gets -100.
    following = labels[:, 1:]
    if sample_index is not None:  # the next token of a packed row may start another sample
        following = following.masked_fill(sample_index[:, 1:] != sample_index[:, :-1], IGNORE_INDEX)
    shifted = torch.cat([following, labels.new_full((b, 1), IGNORE_INDEX)], dim=1).reshape(-1)
    if sample_index is None:
        rows_sample, num_samples = torch.arange(b, device=hidden.device).repeat_interleave(t), b
    else:  # padding (-1) has no label left: any valid sample number will do
        rows_sample = sample_index.clamp(min=0).reshape(-1)
        num_samples = int(sample_index.max()) + 1 if num_samples is None else num_samples
    return linear_cross_entropy(
        hidden.reshape(b * t, h),
        weight,
        shifted,
        rows_sample,
        num_samples=num_samples,
        ignore_index=IGNORE_INDEX,
        reduction="sample",
        backend=backend,
        chunk_tokens=chunk_tokens,
        return_correct=True,
        grad_mode=grad_mode,
        upstream_grad=upstream_grad,
    )


def objective(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The scalar to back-propagate for one micro-batch: sum(weights * per_sample), `weights` from
    `objective_weights`. It is linear in the per-sample losses, so its gradient on them (the weights)
    is known before the forward pass: model.loss_grad_mode=forward finishes the lm_head and hidden
    gradients there."""
    return (per_sample * weights.to(per_sample.dtype)).sum()


def objective_weights(
    n_target: torch.Tensor,
    normalization: str,
    global_denominator: float,
    grad_scale: float,
    sample_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(B,) weight of each sample's loss in the micro-batch's objective.

    token: sum of token losses / response tokens in the global batch.
    sample: sum of per-sample mean losses / samples (with a response token) in the global batch.
    `global_denominator` is that global count (computed from the global batch, identical on every
    rank, no communication). `grad_scale` undoes what DeepSpeed does to the gradient, which averages
    over ranks and divides by the accumulation steps: grad_scale = world_size x grad_accum_steps.
    `sample_weights` (B,) scale each sample's term (per-cluster loss weights); the denominator is then
    the weighted count of the global batch, so the objective is a weighted mean.
    """
    w = n_target.to(torch.float32) if normalization == "token" else torch.ones(n_target.shape, device=n_target.device)
    if sample_weights is not None:
        w = w * sample_weights.to(w.dtype)
    return w * (grad_scale / max(global_denominator, 1.0))
