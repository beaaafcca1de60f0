"""Fused linear cross-entropy with per-sample reduction: the API and the chunked PyTorch backend.

`linear_cross_entropy` projects hidden states onto the vocabulary and takes the cross-entropy without
ever holding the [tokens x vocab] logits: rows whose label is `ignore_index` (prompt, padding) are
dropped first, the valid rows go through a backend that returns one loss per valid token, and the
reduction to samples / tokens / a scalar is a differentiable scatter over those (O(tokens), cheap).
Because the backends' backward receives the upstream gradient per token, any upstream gradient on
the per-sample vector is exact (Liger's per-token path got this wrong, Liger #968, #1298).

Token loss, for logits z = softcap(h W^T) (softcap(x) = c * tanh(x / c) when set) and target y:
    l = (1 - eps) * (lse(z) - z_y) + eps * (lse(z) - mean_j z_j)        (PyTorch's label smoothing)
    dl/dz_j = softmax(z)_j - (1 - eps) [j = y] - eps / V,  times (1 - (z_j / c)^2) under softcap.

Backends: `torch` (here; chunks of `chunk_tokens` rows, logits recomputed in backward) and `triton`
(`triton_cross_entropy.py`; online log-sum-exp over vocabulary tiles). `auto` is Triton on CUDA.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

REDUCTIONS = ("sample", "token", "mean", "sum")
BACKENDS = ("auto", "triton", "torch")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in at least fp32 (bf16/fp16 are upcast; fp64 stays fp64 for reference tests)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _logits(h: torch.Tensor, weight: torch.Tensor, softcap: Optional[float]) -> torch.Tensor:
    z = (h @ weight.t()).to(_acc_dtype(h.dtype))
    return softcap * torch.tanh(z / softcap) if softcap else z


class TorchLinearCE(torch.autograd.Function):
    """Per-token losses of compacted valid rows; recompute-in-backward, `chunk` rows at a time."""

    @staticmethod
    def forward(ctx, h, weight, targets, label_smoothing, softcap, chunk):
        n, acc = h.shape[0], _acc_dtype(h.dtype)
        lse = torch.empty(n, dtype=acc, device=h.device)
        loss = torch.empty(n, dtype=acc, device=h.device)
        correct = torch.empty(n, dtype=torch.bool, device=h.device)
        for s in range(0, n, chunk):
            z = _logits(h[s : s + chunk], weight, softcap)  # (n_c, V): the only vocab-sized buffer
            t = targets[s : s + chunk]
            lse[s : s + chunk] = torch.logsumexp(z, dim=-1)
            nll = lse[s : s + chunk] - z.gather(1, t[:, None]).squeeze(1)
            if label_smoothing:
                nll = (1 - label_smoothing) * nll + label_smoothing * (lse[s : s + chunk] - z.mean(dim=-1))
            loss[s : s + chunk] = nll
            correct[s : s + chunk] = z.argmax(dim=-1) == t
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.label_smoothing, ctx.softcap, ctx.chunk = label_smoothing, softcap, chunk
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        h, weight, targets, lse = ctx.saved_tensors
        eps, cap, chunk = ctx.label_smoothing, ctx.softcap, ctx.chunk
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=_acc_dtype(weight.dtype), device=weight.device)
        vocab = weight.shape[0]
        for s in range(0, h.shape[0], chunk):
            hc = h[s : s + chunk]
            z = _logits(hc, weight, cap)
            d = torch.exp(z - lse[s : s + chunk, None])
            d[torch.arange(hc.shape[0], device=h.device), targets[s : s + chunk]] -= 1 - eps
            if eps:
                d -= eps / vocab
            if cap:
                d *= 1 - (z / cap) ** 2
            d *= grad_loss[s : s + chunk, None].to(d.dtype)  # upstream scale folded in before rounding
            d = d.to(h.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = d @ weight
            grad_w += (d.t() @ hc).to(grad_w.dtype)
        grad_w = grad_w.to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None, None


def _sample_index(n: int, sample_index, cu_seqlens, device) -> torch.Tensor:
    if (sample_index is None) == (cu_seqlens is None):
        raise ValueError("linear_cross_entropy: pass exactly one of sample_index [N] or cu_seqlens [S+1]")
    if cu_seqlens is not None:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if int(cu_seqlens[-1]) != n or bool((lengths < 0).any()):
            raise ValueError(f"cu_seqlens must rise from 0 to N={n}, got last={int(cu_seqlens[-1])}")
        return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    if sample_index.shape != (n,):
        raise ValueError(f"sample_index must have shape [N]=[{n}], got {list(sample_index.shape)}")
    return sample_index


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    sample_index: Optional[torch.Tensor] = None,
    *,
    cu_seqlens: Optional[torch.Tensor] = None,
    num_samples: Optional[int] = None,
    ignore_index: int = -100,
    reduction: str = "sample",
    sample_weights: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.0,
    softcap: Optional[float] = None,
    backend: str = "auto",
    chunk_tokens: int = 4096,
    return_correct: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Cross-entropy of `hidden @ weight.T` against `labels`, reduced per sample, per token or overall.

    Args:
        hidden: [N, H] rows (tokens; packed sequences are fine).
        weight: [V, H] output projection.
        labels: [N] target ids; `ignore_index` rows cost nothing and get zero gradient.
        sample_index: [N] sample of each row (0..S-1), or give `cu_seqlens` [S+1] instead.
        num_samples: S when trailing samples have no rows (default: from the index).
        reduction: "sample" -> [S] mean over each sample's valid rows (0, not NaN, when it has none);
            "token" -> [N] (0 on ignored rows); "sum" / "mean" -> scalar (mean over valid rows,
            weighted by `sample_weights` when given).
        sample_weights: [S] multiplies each sample's contribution.
        label_smoothing: eps in [0, 1), PyTorch's definition.
        softcap: c > 0 applies c * tanh(logits / c) before the softmax (Gemma-2 style).
        backend: "auto" (Triton on CUDA, else torch), "triton", or "torch".
        return_correct: also return, reduced like the loss's counts, how many valid rows have the
            target as the argmax ("sample": per-sample count; "token": per-row 0/1; else a total).

    Returns:
        The loss (fp32, or fp64 for fp64 inputs), and the correct counts when asked.
    """
    n, h_dim = hidden.shape
    if weight.dim() != 2 or weight.shape[1] != h_dim:
        raise ValueError(f"weight must be [V, H={h_dim}], got {list(weight.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N]=[{n}], got {list(labels.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {REDUCTIONS}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; expected one of {BACKENDS}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap={softcap} must be > 0 (or None)")
    samples = _sample_index(n, sample_index, cu_seqlens, hidden.device)
    if num_samples is None:
        num_samples = int(samples.max()) + 1 if n else 0
    valid_rows = (labels != ignore_index).nonzero(as_tuple=True)[0]
    targets = labels.index_select(0, valid_rows)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        raise ValueError(f"labels must be in [0, V={weight.shape[0]}) or ignore_index={ignore_index}")
    h = hidden.index_select(0, valid_rows)  # compaction: ignored rows never reach the projection
    if backend == "auto":
        backend = "triton" if hidden.is_cuda else "torch"
    if backend == "triton":
        from ct_train.kernels.triton_cross_entropy import TritonLinearCE

        tok, correct = TritonLinearCE.apply(h, weight, targets, float(label_smoothing), softcap)
    else:
        tok, correct = TorchLinearCE.apply(h, weight, targets, float(label_smoothing), softcap, chunk_tokens)
    rows_sample = samples.index_select(0, valid_rows)
    w_rows = None
    if sample_weights is not None:
        if sample_weights.shape != (num_samples,):
            raise ValueError(f"sample_weights must be [S]=[{num_samples}], got {list(sample_weights.shape)}")
        w_rows = sample_weights.to(tok.dtype).index_select(0, rows_sample)
    weighted = tok * w_rows if w_rows is not None else tok
    correct = correct.to(tok.dtype)

    if reduction == "token":
        out = torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, valid_rows, weighted)
        extra = torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, valid_rows, correct)
    elif reduction == "sample":
        zeros = torch.zeros(num_samples, dtype=tok.dtype, device=tok.device)
        counts = zeros.index_add(0, rows_sample, torch.ones_like(tok))
        sums = zeros.index_add(0, rows_sample, tok)
        out = sums / counts.clamp(min=1)  # 0 for a sample with no valid row
        if sample_weights is not None:
            out = out * sample_weights.to(out.dtype)
        extra = zeros.index_add(0, rows_sample, correct)
    elif reduction == "sum":
        out, extra = weighted.sum(), correct.sum()
    else:
        denominator = w_rows.sum() if w_rows is not None else tok.new_tensor(float(tok.numel()))
        out = weighted.sum() / denominator.clamp(min=torch.finfo(tok.dtype).tiny)
        extra = correct.sum()
    return (out, extra) if return_correct else out
