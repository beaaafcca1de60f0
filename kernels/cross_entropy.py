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

Backends: `torch` (here; chunks of `chunk_tokens` rows) and `triton` (`triton_cross_entropy.py`).
`auto` is Triton on CUDA.

Two ways to get the gradients (`grad_mode`):
- "recompute" (default): forward keeps only per-row results (a chunk of rows' logits exists at a
  time and is dropped); backward rebuilds the logits a chunk (torch) or a vocabulary slice (Triton)
  at a time. 8 N*H*V flops in all; exact for ANY upstream gradient.
- "forward": the gradients are finished during forward, a chunk of logits at a time (materialised
  chunk x V, then dlogits in place, then dX and dW), for the upstream gradient the caller says it will
  send (`upstream_grad`; the trainer knows it: its objective is linear in the per-sample losses).
  6 N*H*V flops, no recompute and no second gather of a ZeRO-3 weight; backward only scales the
  stored dX and dW. An upstream gradient that is not a multiple of the announced one is refused.
"""

from __future__ import annotations

import sys
from typing import Optional, Tuple, Union

import torch

REDUCTIONS = ("sample", "token", "mean", "sum")
BACKENDS = ("auto", "triton", "torch")
GRAD_MODES = ("recompute", "forward")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in at least fp32 (bf16/fp16 are upcast; fp64 stays fp64 for reference tests)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _logits(h: torch.Tensor, weight: torch.Tensor, softcap: Optional[float]) -> torch.Tensor:
    z = (h @ weight.t()).to(_acc_dtype(h.dtype))
    return softcap * torch.tanh(z / softcap) if softcap else z


def _chunk_stats(z: torch.Tensor, t: torch.Tensor, eps: float):
    """log-sum-exp, token loss and argmax-correct of one chunk of (capped) logits."""
    lse = torch.logsumexp(z, dim=-1)
    nll = lse - z.gather(1, t[:, None]).squeeze(1)
    if eps:
        nll = (1 - eps) * nll + eps * (lse - z.mean(dim=-1))
    return lse, nll, z.argmax(dim=-1) == t


def _dlogits(z, lse, t, eps, cap, scale, dtype) -> torch.Tensor:
    """dl/dz of one chunk times each row's upstream scale, rounded once to `dtype` (after the scale)."""
    d = torch.exp(z - lse[:, None])
    d[torch.arange(z.shape[0], device=z.device), t] -= 1 - eps
    if eps:
        d -= eps / z.shape[1]
    if cap:
        d *= 1 - (z / cap) ** 2
    d *= scale[:, None].to(d.dtype)
    return d.to(dtype)


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
            lse[s : s + chunk], loss[s : s + chunk], correct[s : s + chunk] = _chunk_stats(
                z, targets[s : s + chunk], label_smoothing
            )
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.label_smoothing, ctx.softcap, ctx.chunk = label_smoothing, softcap, chunk
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        h, weight, targets, lse = ctx.saved_tensors
        eps, cap, chunk = ctx.label_smoothing, ctx.softcap, ctx.chunk
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        # A frozen weight (LoRA's lm_head) needs no dW: a third of the backward's flops skipped.
        need_w = ctx.needs_input_grad[1]
        grad_w = torch.zeros(weight.shape, dtype=_acc_dtype(weight.dtype), device=weight.device) if need_w else None
        for s in range(0, h.shape[0], chunk):
            hc = h[s : s + chunk]
            z = _logits(hc, weight, cap)
            d = _dlogits(z, lse[s : s + chunk], targets[s : s + chunk], eps, cap, grad_loss[s : s + chunk], h.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = d @ weight
            if grad_w is not None:
                grad_w += (d.t() @ hc).to(grad_w.dtype)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def torch_forward_grads(h, weight, targets, eps, cap, chunk, scale, need_h, need_w):
    """grad_mode="forward", torch backend: token losses, correct flags and the gradients of
    sum(scale * loss) with respect to h and weight, in one pass over each chunk's logits."""
    n, acc = h.shape[0], _acc_dtype(h.dtype)
    loss = torch.empty(n, dtype=acc, device=h.device)
    correct = torch.empty(n, dtype=torch.bool, device=h.device)
    grad_h = torch.empty_like(h) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=_acc_dtype(weight.dtype), device=weight.device) if need_w else None
    for s in range(0, n, chunk):
        hc, t = h[s : s + chunk], targets[s : s + chunk]
        z = _logits(hc, weight, cap)
        lse, loss[s : s + chunk], correct[s : s + chunk] = _chunk_stats(z, t, eps)
        d = _dlogits(z, lse, t, eps, cap, scale[s : s + chunk], h.dtype)
        if grad_h is not None:
            grad_h[s : s + chunk] = d @ weight
        if grad_w is not None:
            grad_w += (d.t() @ hc).to(grad_w.dtype)
    return loss, correct, grad_h, None if grad_w is None else grad_w.to(weight.dtype)


def _upstream_multiple(grad: torch.Tensor, scale: torch.Tensor) -> float:
    """c with grad == c * scale (the upstream the forward-finished gradients were made for), or an error."""
    g, s = grad.double(), scale.double()
    ss = float((s * s).sum())
    c = float((g * s).sum()) / ss if ss > 0 else 0.0
    residual = float((g - c * s).abs().max()) if g.numel() else 0.0
    if residual > 1e-5 * max(float(g.abs().max()) if g.numel() else 0.0, 1e-30):
        raise RuntimeError(
            "linear_cross_entropy(grad_mode='forward') finished its gradients for the upstream gradient "
            "given as `upstream_grad` (default: ones); backward received one that is not a multiple of it. "
            "Pass the right upstream_grad, or use grad_mode='recompute' (exact for any upstream gradient)."
        )
    return c


class FinishedInForward(torch.autograd.Function):
    """Token losses whose input gradients `run()` already computed for the upstream `scale`."""

    @staticmethod
    def forward(ctx, h, weight, scale, run):
        loss, correct, grad_h, grad_w = run()
        ctx.grads = (grad_h, grad_w)  # held until backward instead of h and the logits' recompute
        ctx.save_for_backward(scale)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        (scale,) = ctx.saved_tensors
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        c = _upstream_multiple(grad_loss, scale)
        if c != 1.0:  # the announced upstream times c: one more rounding in half precision
            grad_h, grad_w = _times(grad_h, c), _times(grad_w, c)
        return grad_h, grad_w, None, None


def _times(x: Optional[torch.Tensor], c: float) -> Optional[torch.Tensor]:
    if x is None or x.dtype in (torch.float32, torch.float64):
        return None if x is None else x * c
    return (x.float() * c).to(x.dtype)


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
    chunk_tokens: Optional[int] = None,
    return_correct: bool = False,
    grad_mode: str = "recompute",
    upstream_grad: Optional[torch.Tensor] = None,
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
        chunk_tokens: at most this many rows' logits exist at once (default 4096 for torch; the torch
            backend's backward too). The triton backend's forward also caps a chunk at 256 MiB of logits.
        return_correct: also return, reduced like the loss's counts, how many valid rows have the
            target as the argmax ("sample": per-sample count; "token": per-row 0/1; else a total).
        grad_mode: "recompute" (default; exact for any upstream gradient) or "forward" (gradients
            finished in forward for `upstream_grad`; backward scales them; see the module docstring).
        upstream_grad: grad_mode="forward": the gradient backward will bring, up to one scalar factor:
            [S] for "sample", [N] for "token", a scalar for "sum"/"mean". Default: ones.

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
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode={grad_mode!r}; expected one of {GRAD_MODES}")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    samples = _sample_index(n, sample_index, cu_seqlens, hidden.device)
    if num_samples is None:
        num_samples = int(samples.max()) + 1 if n else 0
    valid_rows = (labels != ignore_index).nonzero(as_tuple=True)[0]
    targets = labels.index_select(0, valid_rows)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        raise ValueError(f"labels must be in [0, V={weight.shape[0]}) or ignore_index={ignore_index}")
    # compaction: ignored rows never reach the projection (no copy at all when every row is valid)
    h = hidden if len(valid_rows) == n else hidden.index_select(0, valid_rows)
    rows_sample = samples.index_select(0, valid_rows)
    acc = _acc_dtype(hidden.dtype)
    w_rows = None
    if sample_weights is not None:
        if sample_weights.shape != (num_samples,):
            raise ValueError(f"sample_weights must be [S]=[{num_samples}], got {list(sample_weights.shape)}")
        w_rows = sample_weights.to(acc).index_select(0, rows_sample)
    counts = torch.zeros(num_samples, dtype=acc, device=hidden.device).index_add(
        0, rows_sample, torch.ones(len(valid_rows), dtype=acc, device=hidden.device)
    )
    if w_rows is not None:
        denominator = w_rows.sum()
    else:
        denominator = torch.tensor(float(len(valid_rows)), dtype=acc, device=hidden.device)
    if backend == "auto":
        backend = "triton" if hidden.is_cuda else "torch"

    scale = None  # grad_mode="forward": each valid row's upstream gradient, known before the backend runs
    if grad_mode == "forward" and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        scale = _row_scale(
            reduction,
            upstream_grad,
            n,
            num_samples,
            valid_rows,
            rows_sample,
            counts,
            w_rows,
            sample_weights,
            denominator,
        )
    if backend == "triton":
        from ct_train.kernels import triton_cross_entropy as tce

        chunk = min(chunk_tokens or sys.maxsize, tce.forward_chunk_rows(weight.shape[0], hidden.dtype))
        if scale is not None:
            run = lambda: tce.triton_forward_grads(  # noqa: E731
                h, weight, targets, float(label_smoothing), softcap, chunk, scale, h.requires_grad, weight.requires_grad
            )
            tok, correct = FinishedInForward.apply(h, weight, scale, run)
        else:
            tok, correct = tce.TritonLinearCE.apply(h, weight, targets, float(label_smoothing), softcap, chunk)
    else:
        chunk = chunk_tokens or 4096
        if scale is not None:
            run = lambda: torch_forward_grads(  # noqa: E731
                h, weight, targets, float(label_smoothing), softcap, chunk, scale, h.requires_grad, weight.requires_grad
            )
            tok, correct = FinishedInForward.apply(h, weight, scale, run)
        else:
            tok, correct = TorchLinearCE.apply(h, weight, targets, float(label_smoothing), softcap, chunk)
    weighted = tok * w_rows if w_rows is not None else tok
    correct = correct.to(tok.dtype)

    if reduction == "token":
        out = torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, valid_rows, weighted)
        extra = torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, valid_rows, correct)
    elif reduction == "sample":
        zeros = torch.zeros(num_samples, dtype=tok.dtype, device=tok.device)
        out = zeros.index_add(0, rows_sample, tok) / counts.clamp(min=1)  # 0 for a sample with no valid row
        if sample_weights is not None:
            out = out * sample_weights.to(out.dtype)
        extra = zeros.index_add(0, rows_sample, correct)
    elif reduction == "sum":
        out, extra = weighted.sum(), correct.sum()
    else:
        out = weighted.sum() / denominator.clamp(min=torch.finfo(tok.dtype).tiny)
        extra = correct.sum()
    return (out, extra) if return_correct else out


def _row_scale(reduction, upstream, n, num_samples, valid_rows, rows_sample, counts, w_rows, sample_weights, denom):
    """d(output . upstream) / d(token loss) for every valid row: what the reduction below passes back."""
    acc = counts.dtype
    expected = {"sample": (num_samples,), "token": (n,), "sum": (), "mean": ()}[reduction]
    if upstream is None:
        upstream = torch.ones(expected, dtype=acc, device=counts.device)
    upstream = torch.as_tensor(upstream, dtype=acc, device=counts.device)
    if upstream.shape != expected:
        raise ValueError(
            f"upstream_grad must have the output's shape {list(expected)} for reduction={reduction!r}, "
            f"got {list(upstream.shape)}"
        )
    ones = torch.ones(len(valid_rows), dtype=acc, device=counts.device)
    w = w_rows if w_rows is not None else ones
    if reduction == "sample":
        per_sample = upstream / counts.clamp(min=1)
        if sample_weights is not None:
            per_sample = per_sample * sample_weights.to(acc)
        return per_sample.index_select(0, rows_sample)
    if reduction == "token":
        return upstream.index_select(0, valid_rows) * w
    if reduction == "sum":
        return upstream * w
    return upstream * w / denom.clamp(min=torch.finfo(acc).tiny)
