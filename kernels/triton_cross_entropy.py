"""Triton backend of `linear_cross_entropy`: per-token losses of compacted valid rows.

The matmuls are cuBLAS's (torch `@`, input dtype, fp32 accumulation); Triton does the row-wise part
that PyTorch would need several [rows x vocab] passes and fp32 copies for.

Forward (both modes) goes a chunk of rows at a time (`_chunked`; `forward_chunk_rows` sizes a chunk's
logits to 256 MiB): one matmul materialises the chunk's logits, `_chunk_kernel` reads each row once
for the online log-sum-exp, the loss (label smoothing, soft-cap) and the argmax. In grad_mode="forward"
it reads the row again to write dlogits = scale * (softmax - (1-eps) onehot - eps/V) * softcap' over
the logits in place (fp32 arithmetic, rounded once), and two matmuls give the chunk's dX and its
share of dW, summed in an fp32 [V x H] buffer (1.96 GiB at V=128256, H=4096: the price of that mode).
In grad_mode="recompute" only lse, the loss and the argmax flag are kept.

Backward (recompute, `_vocab_sliced_backward`): a vocabulary slice at a time over ALL rows, so each
dW row is one matmul rounded once and no fp32 [V x H] buffer exists; `_slice_kernel` turns the slice's
logits into dlogits in place from the saved lse. Recompute costs 8 N*H*V flops in all (2 forward, 6
backward), forward mode 6. Until 2026-12-06 the recompute forward was one fused Triton kernel with
16 x 64 x 32 tiles: every program block re-read the whole weight, 4.9x the matmul floor on an H200
(issue 33), so the forward now uses the same cuBLAS chunks as forward mode.

Program ids are cast to int64 before address arithmetic: rows x V exceeds 2^31 at the sizes this is
for (16K rows x 128K vocabulary), as Liger-Kernel's cross-entropy notes. Tile sizes are pinned (no
autotune), so the kernels run identically under `TRITON_INTERPRET=1`, which is how CI tests them on CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _capped_tile(z_row, offs, cmask, softcap, HAS_SOFTCAP: tl.constexpr):
    """A tile of one row of materialised logits, in fp32, soft-capped if asked."""
    z = tl.load(z_row + offs, mask=cmask, other=0.0).to(tl.float32)
    if HAS_SOFTCAP:
        z = softcap * _tanh(z / softcap)
    return z


@triton.jit
def _chunk_kernel(
    z_ptr,
    y_ptr,
    scale_ptr,
    lse_ptr,
    loss_ptr,
    correct_ptr,
    V,
    eps,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One row of a materialised logits chunk: log-sum-exp, loss and argmax; with WITH_GRAD, then
    dlogits * scale over z in place."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * V
    y = tl.load(y_ptr + row)
    m = tl.full((), float("-inf"), dtype=tl.float32)
    s = tl.zeros((), dtype=tl.float32)
    target = tl.zeros((), dtype=tl.float32)
    zsum = tl.zeros((), dtype=tl.float32)
    best = tl.full((), float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros((), dtype=tl.int64)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        cmask = cols < V
        z = tl.where(cmask, _capped_tile(z_row, cols, cmask, softcap, HAS_SOFTCAP), float("-inf"))
        tile_max = tl.max(z, axis=0)
        new_m = tl.maximum(m, tile_max)
        s = s * tl.exp(m - new_m) + tl.sum(tl.exp(z - new_m), axis=0)
        m = new_m
        target += tl.sum(tl.where(cols == y, z, 0.0), axis=0)
        zsum += tl.sum(tl.where(cmask, z, 0.0), axis=0)
        tile_arg = tl.argmax(z, axis=0).to(tl.int64) + v0
        better = tile_max > best  # first maximum wins, as torch.argmax
        best_idx = tl.where(better, tile_arg, best_idx)
        best = tl.where(better, tile_max, best)
    lse = m + tl.log(s)
    tl.store(lse_ptr + row, lse)
    tl.store(loss_ptr + row, (1.0 - eps) * (lse - target) + eps * (lse - zsum / V))
    tl.store(correct_ptr + row, (best_idx == y).to(tl.int8))
    if WITH_GRAD:
        g = tl.load(scale_ptr + row)
        _dlogits_in_place(z_row, y, lse, g, 0, V, V, eps, softcap, HAS_SOFTCAP, BLOCK_V)


@triton.jit
def _dlogits_in_place(
    z_row, y, lse, g, v_start, width, V, eps, softcap, HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr
):
    """z_row[0:width] (vocabulary columns v_start..) becomes g * dl/dz, computed in fp32 and rounded once
    to the logits' dtype after the upstream scale g."""
    for c0 in range(0, width, BLOCK_V):
        offs = c0 + tl.arange(0, BLOCK_V).to(tl.int64)
        cmask = offs < width
        z = _capped_tile(z_row, offs, cmask, softcap, HAS_SOFTCAP)
        d = tl.exp(z - lse) - (1.0 - eps) * ((offs + v_start) == y).to(tl.float32) - eps / V
        if HAS_SOFTCAP:
            d = d * (1.0 - (z / softcap) * (z / softcap))
        tl.store(z_row + offs, (d * g).to(z_row.dtype.element_ty), mask=cmask)


@triton.jit
def _slice_kernel(
    z_ptr,
    y_ptr,
    lse_ptr,
    g_ptr,
    v_start,
    width,
    V,
    eps,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One row of a vocabulary slice's logits (columns v_start..+width): dlogits * g in place, from the
    row's log-sum-exp that the forward kernel already computed (one read, one write)."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * width
    y = tl.load(y_ptr + row)
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row)
    _dlogits_in_place(z_row, y, lse, g, v_start, width, V, eps, softcap, HAS_SOFTCAP, BLOCK_V)


def _vocab_sliced_backward(h, weight, targets, lse, eps, softcap, grad, need_h, need_w):
    """Recompute backward, a slice of the vocabulary at a time over ALL rows: each slice's dW rows come
    from one matmul (rounded once, straight into dW); dX sums the slices in fp32."""
    n, vocab = h.shape[0], weight.shape[0]
    grad = grad.float().contiguous()
    grad_w = torch.empty_like(weight) if need_w else None
    grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_h else None
    width = slice_columns(n, h.dtype)
    for v0 in range(0, vocab, width):
        w_slice = weight[v0 : v0 + width]
        z = h @ w_slice.t()  # (rows, slice) in the input dtype: becomes dlogits below, in place
        _slice_kernel[(n,)](
            z,
            targets,
            lse,
            grad,
            v0,
            w_slice.shape[0],
            vocab,
            float(eps),
            float(softcap or 1.0),
            HAS_SOFTCAP=softcap is not None,
            BLOCK_V=min(4096, triton.next_power_of_2(w_slice.shape[0])),
        )
        if grad_w is not None:
            torch.mm(z.t(), h, out=grad_w[v0 : v0 + width])
        if grad_h is not None:
            grad_h += z @ w_slice
    return None if grad_h is None else grad_h.to(h.dtype), grad_w


SLICE_BYTES = 128 << 20  # recompute backward: one vocabulary slice's logits for all rows


def slice_columns(rows: int, dtype: torch.dtype) -> int:
    """Vocabulary columns per backward slice: rows x columns logits take SLICE_BYTES (a multiple of 16)."""
    cols = SLICE_BYTES // (max(rows, 1) * torch.finfo(dtype).bits // 8)
    return max(16, cols // 16 * 16)


CHUNK_BYTES = 256 << 20  # grad_mode="forward": one chunk of rows' logits


def forward_chunk_rows(vocab: int, dtype: torch.dtype) -> int:
    """Rows per chunk so that chunk x vocab logits take CHUNK_BYTES (a multiple of 64, at least 64)."""
    rows = CHUNK_BYTES // (vocab * torch.finfo(dtype).bits // 8)
    return max(64, rows // 64 * 64)


def triton_forward_grads(h, weight, targets, eps, softcap, chunk, scale, need_h, need_w):
    """grad_mode="forward": token losses, correct flags and the gradients of sum(scale * loss)."""
    _check_dtype(h)
    loss, correct, _lse, grad_h, grad_w = _chunked(
        h.contiguous(), weight.contiguous(), targets.contiguous(), eps, softcap, chunk, scale, need_h, need_w
    )
    return loss, correct, grad_h, grad_w


def _chunked(h, weight, targets, eps, softcap, chunk, scale, need_h, need_w):
    """Rows chunk by chunk: logits by matmul, then `_chunk_kernel` (log-sum-exp, loss, argmax). With a
    `scale` (grad_mode="forward") the kernel goes on to dlogits * scale in place, and dX, dW follow;
    without one (the recompute forward) only the per-row results are kept."""
    n, vocab = h.shape[0], weight.shape[0]
    with_grad = scale is not None
    scale = scale.float().contiguous() if with_grad else None
    lse = torch.empty(n, dtype=torch.float32, device=h.device)
    loss = torch.empty(n, dtype=torch.float32, device=h.device)
    correct = torch.empty(n, dtype=torch.int8, device=h.device)
    grad_h = torch.empty_like(h) if with_grad and need_h else None
    # dW sums over every chunk: in fp32 (a [V x H] fp32 buffer for half-precision weights, the price
    # of this mode), as one rounding per chunk into bf16 would pass 2x PyTorch's error at ~3 chunks.
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grad and need_w else None
    block_v = min(4096, triton.next_power_of_2(vocab))
    for s in range(0, n, chunk):
        hc = h[s : s + chunk]
        z = hc @ weight.t()  # (rows, V) in the input dtype: becomes dlogits below, in place
        _chunk_kernel[(hc.shape[0],)](
            z,
            targets[s : s + chunk],
            scale[s : s + chunk] if with_grad else lse,  # not read without WITH_GRAD
            lse[s : s + chunk],
            loss[s : s + chunk],
            correct[s : s + chunk],
            vocab,
            float(eps),
            float(softcap or 1.0),
            HAS_SOFTCAP=softcap is not None,
            WITH_GRAD=with_grad,
            BLOCK_V=block_v,
        )
        if grad_h is not None:
            grad_h[s : s + chunk] = z @ weight
        if grad_w is not None:
            grad_w += z.t() @ hc
    return loss, correct.bool(), lse, grad_h, None if grad_w is None else grad_w.to(weight.dtype)


def _check_dtype(h: torch.Tensor) -> None:
    if h.dtype == torch.float64:
        raise TypeError("backend='triton' supports fp32/fp16/bf16 inputs; use backend='torch' for fp64")


class TritonLinearCE(torch.autograd.Function):
    """grad_mode="recompute": the forward keeps per-row results only (the chunk workspace is freed),
    the backward rebuilds the logits a vocabulary slice at a time."""

    @staticmethod
    def forward(ctx, h, weight, targets, label_smoothing, softcap, chunk):
        _check_dtype(h)
        h, weight, targets = h.contiguous(), weight.contiguous(), targets.contiguous()
        loss, correct, lse, _, _ = _chunked(h, weight, targets, label_smoothing, softcap, chunk, None, False, False)
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.label_smoothing, ctx.softcap = label_smoothing, softcap
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        h, weight, targets, lse = ctx.saved_tensors
        grad_h, grad_w = _vocab_sliced_backward(
            h, weight, targets, lse, ctx.label_smoothing, ctx.softcap, grad_loss, *ctx.needs_input_grad[:2]
        )
        return grad_h, grad_w, None, None, None, None
