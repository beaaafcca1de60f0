"""Benchmark: fused linear cross-entropy (ours) vs eager PyTorch, torch.compile and Liger-Kernel.

Times forward + backward and measures peak extra memory (beyond the inputs and their gradients) for
each (N, H, V) shape, with all tokens valid and with 50% response tokens (the rest labelled -100, as
prompt tokens are in SFT). Every implementation computes the same thing: per-sample mean loss over
the valid tokens (16 samples of N/16 rows), then the mean over samples, back-propagated.

    python -m ct_train.kernels.bench_cross_entropy                      # the issue's shapes, bf16, CUDA
    python -m ct_train.kernels.bench_cross_entropy --shapes 2048,256,8192 --dtype fp32 --device cpu

`ours` is grad_mode="recompute" (the default), `ours-fwd` grad_mode="forward" (gradients finished
in forward for the known upstream gradient of the mean). Writes a markdown table to stdout (and to
--out when given). Liger is included when `liger_kernel` imports; its fused linear CE has no
per-sample reduction, so it gets reduction="mean" (less work).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ct_train.kernels.cross_entropy import linear_cross_entropy

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SAMPLES = 16


def _eager(h, w, labels, sample_index):
    logits = (h @ w.t()).float()
    tok = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
    valid = (labels != -100).float()
    sums = torch.zeros(SAMPLES, device=h.device).index_add(0, sample_index, tok)
    counts = torch.zeros(SAMPLES, device=h.device).index_add(0, sample_index, valid)
    return (sums / counts.clamp(min=1)).mean()


def _ours(h, w, labels, sample_index):
    return linear_cross_entropy(h, w, labels, sample_index, num_samples=SAMPLES, reduction="sample").mean()


def _ours_forward(h, w, labels, sample_index):
    # grad_mode="forward": the gradients of the mean over samples are finished in forward
    up = torch.full((SAMPLES,), 1.0 / SAMPLES, device=h.device)
    return linear_cross_entropy(
        h, w, labels, sample_index, num_samples=SAMPLES, reduction="sample", grad_mode="forward", upstream_grad=up
    ).mean()


def _liger() -> Optional[Callable]:
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return lambda h, w, labels, sample_index: liger_fused_linear_cross_entropy(h, w, labels, reduction="mean")


def _inputs(n, h, v, dtype, device, response_fraction, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) / h**0.25).to(device=device, dtype=dtype).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(device=device, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, v, (n,), generator=g)
    per = n // SAMPLES
    sample_index = torch.arange(n) // per
    sample_index.clamp_(max=SAMPLES - 1)
    if response_fraction < 1.0:  # the first part of each sample is its prompt
        pos = torch.arange(n) - sample_index * per
        labels[pos < int(per * (1 - response_fraction))] = -100
    return hidden, weight, labels.to(device), sample_index.to(device)


def _time(fn, hidden, weight, labels, sample_index, iters, warmup) -> Tuple[float, Optional[float]]:
    """Median ms of forward+backward, and peak extra GiB on CUDA (None on CPU)."""
    cuda = hidden.is_cuda
    times: List[float] = []
    peak = None
    for i in range(warmup + iters):
        hidden.grad = weight.grad = None
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn(hidden, weight, labels, sample_index).backward()
        if cuda:
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end)
            grads = hidden.numel() * hidden.element_size() + weight.numel() * weight.element_size()
            peak = (torch.cuda.max_memory_allocated() - base - grads) / 2**30
        else:
            elapsed = (time.perf_counter() - t0) * 1000
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times), peak


def run(shapes, dtype, device, iters, warmup, only=("ours", "ours-fwd", "eager", "compile", "liger")) -> str:
    impls: Dict[str, Callable] = {"ours": _ours, "ours-fwd": _ours_forward, "eager": _eager}
    if "compile" in only:
        impls["compile"] = torch.compile(_eager)
    liger = _liger()
    if liger is not None and device == "cuda":
        impls["liger"] = liger
    impls = {k: v for k, v in impls.items() if k in only}
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [
        f"device: {name}, dtype: {dtype}, torch {torch.__version__}",
        "",
        "| N | H | V | response | impl | ms (fwd+bwd) | x matmul floor | peak extra GiB |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for n, h, v in shapes:
        for fraction in (1.0, 0.5):
            floor_ms = None
            if device == "cuda":  # 6 N H V flops at the ~790 TFLOP/s measured on H100/H200 for bf16
                floor_ms = 6 * n * h * v / 790e12 * 1000
            for impl, fn in impls.items():
                inputs = _inputs(n, h, v, DTYPES[dtype], device, fraction)
                try:
                    ms, peak = _time(fn, *inputs, iters=iters, warmup=warmup)
                except torch.OutOfMemoryError:
                    lines.append(f"| {n} | {h} | {v} | {fraction:.0%} | {impl} | OOM | | |")
                    continue
                ratio = f"{ms / floor_ms:.2f}" if floor_ms else "n/a"
                mem = f"{peak:.2f}" if peak is not None else "n/a"
                lines.append(f"| {n} | {h} | {v} | {fraction:.0%} | {impl} | {ms:.1f} | {ratio} | {mem} |")
                del inputs
                if device == "cuda":
                    torch.cuda.empty_cache()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="16384,4096,128256;8192,2304,256000", help="N,H,V;N,H,V...")
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--impls",
        default="ours,ours-fwd,eager,compile,liger",
        help="which to run, comma-separated (ours: grad_mode=recompute; ours-fwd: grad_mode=forward)",
    )
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    table = run(shapes, args.dtype, args.device, args.iters, args.warmup, tuple(args.impls.split(",")))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
