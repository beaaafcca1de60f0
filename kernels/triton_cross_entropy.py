"""Triton backend of `linear_cross_entropy`: per-token losses of compacted valid rows.

Forward: one program per block of rows streams the vocabulary in tiles; each tile's logits are
accumulated over H in fp32 (`tl.dot`), soft-capped if asked, and folded into an online log-sum-exp;
the target logit, the logit sum (label smoothing) and the running argmax are gathered on the way. Only
lse, the loss and the argmax flag are written: O(rows) memory, never [rows x vocab].

Backward (recompute): one program per (row block, vocabulary tile) rebuilds its logits tile, forms
dlogits = g * (softmax - (1-eps) onehot - eps/V) * softcap' in fp32, rounds it once to the input dtype,
and accumulates dh = dlogits @ W and dW = dlogits^T @ h into fp32 buffers with atomics.

Program ids are cast to int64 before address arithmetic: rows x H exceeds 2^31 at the sizes this is
for (16K rows x 4096), as Liger-Kernel's cross-entropy notes. Tile sizes are pinned (no autotune), so
the kernel runs identically under `TRITON_INTERPRET=1`, which is how CI tests it on CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N, BLOCK_V, BLOCK_H = 16, 64, 32  # tl.dot needs >= 16 per dimension


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    rows,
    cols,
    rmask,
    cmask,
    H,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        hmask = hk < H
        a = tl.load(h_ptr + rows[:, None] * H + hk[None, :], mask=rmask[:, None] & hmask[None, :], other=0.0)
        b = tl.load(w_ptr + cols[:, None] * H + hk[None, :], mask=cmask[:, None] & hmask[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def _fwd_kernel(
    h_ptr,
    w_ptr,
    y_ptr,
    lse_ptr,
    loss_ptr,
    correct_ptr,
    N,
    V,
    H,
    eps,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rmask = rows < N
    y = tl.load(y_ptr + rows, mask=rmask, other=0)
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    zsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    best = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        cmask = cols < V
        z = _logits_tile(
            h_ptr, w_ptr, rows, cols, rmask, cmask, H, softcap, HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION
        )
        z = tl.where(cmask[None, :], z, float("-inf"))
        tile_max = tl.max(z, axis=1)
        new_m = tl.maximum(m, tile_max)
        s = s * tl.exp(m - new_m) + tl.sum(tl.exp(z - new_m[:, None]), axis=1)
        m = new_m
        target += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
        zsum += tl.sum(tl.where(cmask[None, :], z, 0.0), axis=1)
        tile_arg = tl.argmax(z, axis=1).to(tl.int64) + v0
        better = tile_max > best  # first maximum wins, as torch.argmax
        best_idx = tl.where(better, tile_arg, best_idx)
        best = tl.where(better, tile_max, best)
    lse = m + tl.log(s)
    loss = (1.0 - eps) * (lse - target) + eps * (lse - zsum / V)
    tl.store(lse_ptr + rows, lse, mask=rmask)
    tl.store(loss_ptr + rows, loss, mask=rmask)
    tl.store(correct_ptr + rows, (best_idx == y).to(tl.int8), mask=rmask)


@triton.jit
def _bwd_kernel(
    h_ptr,
    w_ptr,
    y_ptr,
    lse_ptr,
    g_ptr,
    dh_ptr,
    dw_ptr,
    N,
    V,
    H,
    eps,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    pid_v = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    rmask = rows < N
    cmask = cols < V
    y = tl.load(y_ptr + rows, mask=rmask, other=0)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    g = tl.load(g_ptr + rows, mask=rmask, other=0.0)
    z = _logits_tile(
        h_ptr, w_ptr, rows, cols, rmask, cmask, H, softcap, HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION
    )
    d = tl.exp(z - lse[:, None]) - (1.0 - eps) * (cols[None, :] == y[:, None]).to(tl.float32) - eps / V
    if HAS_SOFTCAP:
        d = d * (1.0 - (z / softcap) * (z / softcap))
    d = d * g[:, None]
    d = tl.where(rmask[:, None] & cmask[None, :], d, 0.0)
    d = d.to(h_ptr.dtype.element_ty)  # rounded once, after the upstream scale
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        hmask = hk < H
        w = tl.load(w_ptr + cols[:, None] * H + hk[None, :], mask=cmask[:, None] & hmask[None, :], other=0.0)
        tl.atomic_add(
            dh_ptr + rows[:, None] * H + hk[None, :],
            tl.dot(d, w, input_precision=PRECISION),
            mask=rmask[:, None] & hmask[None, :],
        )
        a = tl.load(h_ptr + rows[:, None] * H + hk[None, :], mask=rmask[:, None] & hmask[None, :], other=0.0)
        tl.atomic_add(
            dw_ptr + cols[:, None] * H + hk[None, :],
            tl.dot(tl.trans(d), a, input_precision=PRECISION),
            mask=cmask[:, None] & hmask[None, :],
        )


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: full-precision dots (tf32 would lose ~3 digits of the logits).
    return "ieee" if dtype == torch.float32 else "tf32"


class TritonLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, label_smoothing, softcap):
        if h.dtype == torch.float64:
            raise TypeError("backend='triton' supports fp32/fp16/bf16 inputs; use backend='torch' for fp64")
        h, weight, targets = h.contiguous(), weight.contiguous(), targets.contiguous()
        n, hdim = h.shape
        vocab = weight.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        loss = torch.empty(n, dtype=torch.float32, device=h.device)
        correct = torch.empty(n, dtype=torch.int8, device=h.device)
        if n:
            _fwd_kernel[(triton.cdiv(n, BLOCK_N),)](
                h,
                weight,
                targets,
                lse,
                loss,
                correct,
                n,
                vocab,
                hdim,
                float(label_smoothing),
                float(softcap or 1.0),
                HAS_SOFTCAP=softcap is not None,
                BLOCK_N=BLOCK_N,
                BLOCK_V=BLOCK_V,
                BLOCK_H=BLOCK_H,
                PRECISION=_precision(h.dtype),
            )
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.label_smoothing, ctx.softcap = label_smoothing, softcap
        correct = correct.bool()
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        h, weight, targets, lse = ctx.saved_tensors
        n, hdim = h.shape
        vocab = weight.shape[0]
        dh = torch.zeros((n, hdim), dtype=torch.float32, device=h.device)
        dw = torch.zeros((vocab, hdim), dtype=torch.float32, device=h.device)
        if n:
            grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(vocab, BLOCK_V))
            _bwd_kernel[grid](
                h,
                weight,
                targets,
                lse,
                grad_loss.float().contiguous(),
                dh,
                dw,
                n,
                vocab,
                hdim,
                float(ctx.label_smoothing),
                float(ctx.softcap or 1.0),
                HAS_SOFTCAP=ctx.softcap is not None,
                BLOCK_N=BLOCK_N,
                BLOCK_V=BLOCK_V,
                BLOCK_H=BLOCK_H,
                PRECISION=_precision(h.dtype),
            )
        return dh.to(h.dtype), dw.to(weight.dtype), None, None, None
