"""`ct_train.kernels.linear_cross_entropy` against an fp64 PyTorch reference.

The Triton kernel's own code runs here on CPU under TRITON_INTERPRET=1 (set in conftest before any
import of triton), in fp32 and fp16, with the kernel's pinned tile sizes.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from ct_train.kernels.cross_entropy import linear_cross_entropy


def reference(
    hidden,
    weight,
    labels,
    samples,
    num_samples,
    *,
    ignore_index,
    reduction,
    sample_weights=None,
    label_smoothing=0.0,
    softcap=None,
):
    """Materialised logits, F.cross_entropy per token, reduced per sample: the definition."""
    z = hidden.double() @ weight.double().t()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    tok = F.cross_entropy(z, labels, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    valid = (labels != ignore_index).double()
    w = sample_weights.double()[samples] if sample_weights is not None else torch.ones_like(valid)
    if reduction == "token":
        return tok * w
    if reduction == "sum":
        return (tok * w * valid).sum()
    if reduction == "mean":
        return (tok * w * valid).sum() / (w * valid).sum()
    sums = torch.zeros(num_samples, dtype=torch.float64).index_add(0, samples, tok * valid)
    counts = torch.zeros(num_samples, dtype=torch.float64).index_add(0, samples, valid)
    out = sums / counts.clamp(min=1)
    return out * sample_weights.double() if sample_weights is not None else out


def make_case(n=37, h=31, v=123, ignore_index=-100, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) / h**0.5
    labels = torch.randint(0, v, (n,), generator=g)
    # packed: 5 samples of uneven length, sample 3 fully masked, prompts masked in the others
    cuts = [0, 9, 17, 25, 30, n]
    samples = torch.repeat_interleave(torch.arange(5), torch.tensor([b - a for a, b in zip(cuts, cuts[1:])]))
    for start in cuts[:-1]:
        labels[start : start + 3] = ignore_index
    labels[25:30] = ignore_index
    return hidden.to(dtype), weight.to(dtype), labels, samples, torch.tensor(cuts)


OPTIONS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "softcap": {"softcap": 3.0},
    "weighted": {"sample_weights": torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25], dtype=torch.float64)},
    "all": {
        "label_smoothing": 0.2,
        "softcap": 2.0,
        "sample_weights": torch.tensor([1.5, 0.0, 1.0, 1.0, 0.7], dtype=torch.float64),
    },
}


def _upstream(reduction, n, seed=1):
    """A non-uniform upstream gradient of the output's shape, drawn in fp64 (the same for every dtype)."""
    shape = {"sample": (5,), "token": (n,), "mean": (), "sum": ()}[reduction]
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run(backend, hidden, weight, labels, samples, reduction, ignore_index, opts, grad_mode="recompute"):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    up = _upstream(reduction, len(labels))
    out = linear_cross_entropy(
        h,
        w,
        labels,
        samples,
        num_samples=5,
        ignore_index=ignore_index,
        reduction=reduction,
        backend=backend,
        chunk_tokens=7,
        grad_mode=grad_mode,
        # "forward" finishes the gradients for the upstream announced here; "recompute" needs none
        upstream_grad=up if grad_mode == "forward" else None,
        **opts,
    )
    (out * up.to(out.dtype)).sum().backward()
    return out, h.grad, w.grad


def _reference_grads(hidden, weight, labels, samples, reduction, ignore_index, opts):
    h = hidden.double().clone().requires_grad_(True)
    w = weight.double().clone().requires_grad_(True)
    out = reference(h, w, labels, samples, 5, ignore_index=ignore_index, reduction=reduction, **opts)
    (out * _upstream(reduction, len(labels))).sum().backward()
    return out, h.grad, w.grad


@pytest.mark.parametrize("grad_mode", ["recompute", "forward"])
@pytest.mark.parametrize("reduction", ["sample", "token", "mean", "sum"])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("ignore_index", [-100, 7])
def test_torch_backend_matches_fp64_reference(reduction, option, ignore_index, grad_mode):
    hidden, weight, labels, samples, _ = make_case(ignore_index=ignore_index)
    ours = _run("torch", hidden, weight, labels, samples, reduction, ignore_index, OPTIONS[option], grad_mode)
    ref = _reference_grads(hidden, weight, labels, samples, reduction, ignore_index, OPTIONS[option])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("grad_mode", ["recompute", "forward"])
def test_frozen_weight_gets_no_gradient_and_the_hidden_one_is_unchanged(grad_mode, monkeypatch):
    """LoRA freezes lm_head: the torch backend must not compute dW (the V x H product per chunk) and
    dX must stay what it is with a trainable weight."""
    hidden, weight, labels, samples, _ = make_case()
    _, grad_h_ref, _ = _run("torch", hidden, weight, labels, samples, "sample", -100, {}, grad_mode)
    products = []
    real_mm = torch.Tensor.__matmul__

    def counting(a, b):
        products.append(tuple(a.shape) + tuple(b.shape))
        return real_mm(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", counting)
    h = hidden.clone().requires_grad_(True)
    up = _upstream("sample", len(labels))
    out = linear_cross_entropy(h, weight, labels, samples, num_samples=5, reduction="sample", backend="torch",
                               chunk_tokens=7, grad_mode=grad_mode,
                               upstream_grad=up if grad_mode == "forward" else None)  # fmt: skip
    (out * up).sum().backward()
    monkeypatch.undo()
    torch.testing.assert_close(h.grad, grad_h_ref)
    # dW would be d^T (V x n_c) @ h_c (n_c x H); no such product ran
    assert products and not any(p[0] == weight.shape[0] and p[-1] == hidden.shape[1] for p in products)


def test_masked_sample_is_zero_and_cu_seqlens_equals_sample_index():
    hidden, weight, labels, samples, cuts = make_case()
    by_index = linear_cross_entropy(hidden, weight, labels, samples, backend="torch")
    by_cuts = linear_cross_entropy(hidden, weight, labels, cu_seqlens=cuts, backend="torch")
    torch.testing.assert_close(by_index, by_cuts)
    assert by_index[3] == 0 and torch.isfinite(by_index).all()
    loss, correct = linear_cross_entropy(hidden, weight, labels, samples, backend="torch", return_correct=True)
    z = hidden @ weight.t()
    valid = labels != -100
    expect = torch.zeros(5, dtype=torch.float64).index_add(0, samples[valid], (z.argmax(1) == labels)[valid].double())
    torch.testing.assert_close(correct, expect)


def test_forward_mode_takes_any_multiple_of_the_announced_upstream_and_refuses_another():
    hidden, weight, labels, samples, _ = make_case()
    up = torch.rand(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5

    def grads(mode, sent, announced=up):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        out = linear_cross_entropy(h, w, labels, samples, backend="torch", grad_mode=mode, upstream_grad=announced)
        (out * sent).sum().backward()  # e.g. DeepSpeed dividing the loss by the accumulation steps
        return h.grad, w.grad

    for a, b in zip(grads("forward", -2.5 * up), grads("recompute", -2.5 * up, None)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(RuntimeError, match="not a multiple of it"):
        grads("forward", up.flip(0))
    with pytest.raises(ValueError, match=r"upstream_grad must have the output's shape \[5\]"):
        grads("forward", up, torch.ones(4, dtype=torch.float64))
    with torch.no_grad():  # no gradient asked: forward mode only forwards
        torch.testing.assert_close(
            linear_cross_entropy(hidden, weight, labels, samples, backend="torch", grad_mode="forward"),
            linear_cross_entropy(hidden, weight, labels, samples, backend="torch"),
        )


def test_bad_arguments_are_named():
    hidden, weight, labels, samples, _ = make_case()
    with pytest.raises(ValueError, match="reduction='avg'"):
        linear_cross_entropy(hidden, weight, labels, samples, reduction="avg")
    with pytest.raises(ValueError, match="exactly one of sample_index"):
        linear_cross_entropy(hidden, weight, labels)
    with pytest.raises(ValueError, match=r"labels must be in \[0, V=123\)"):
        linear_cross_entropy(hidden, weight, torch.full_like(labels, 500), samples)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="Triton needs a GPU or TRITON_INTERPRET=1",
)
@pytest.mark.parametrize("grad_mode", ["recompute", "forward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("option", ["plain", "all"])
@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_triton_kernel_matches_reference(dtype, option, reduction, grad_mode, monkeypatch):
    """Both modes' forward: the chunk kernel after each chunk's matmul (chunk_tokens=7: several chunks
    of rows); recompute: then the backward over vocabulary slices (32 columns here: 4 slices of V=123);
    forward: dlogits in place and the chunk's dX, dW."""
    tce = pytest.importorskip("ct_train.kernels.triton_cross_entropy")
    monkeypatch.setattr(tce, "SLICE_BYTES", 37 * 32 * torch.finfo(dtype).bits // 8)
    hidden, weight, labels, samples, _ = make_case(n=37, h=31, v=123, seed=2)
    opts = {k: (v.to(torch.float32) if torch.is_tensor(v) else v) for k, v in OPTIONS[option].items()}
    hi, wi = hidden.to(dtype), weight.to(dtype)
    ours = _run("triton", hi, wi, labels, samples, reduction, -100, opts, grad_mode)
    ref = _reference_grads(hidden, weight, labels, samples, reduction, -100, OPTIONS[option])
    if dtype == torch.float32:
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)
        return
    # fp16: at most 3x (loss) / 2x (gradients) the error PyTorch itself makes from fp16 inputs.
    # The fp16-rounded inputs are the same for both, so the baseline error is that of fp16 arithmetic:
    # PyTorch's fp16 path (fp16 matmul, fp32 softmax) against the fp64 reference.
    h16, w16 = hidden.to(dtype).requires_grad_(True), weight.to(dtype).requires_grad_(True)
    z = (h16 @ w16.t()).float()
    if opts.get("softcap"):
        z = opts["softcap"] * torch.tanh(z / opts["softcap"])
    tok = F.cross_entropy(z, labels, reduction="none", label_smoothing=opts.get("label_smoothing", 0.0))
    valid = (labels != -100).float()
    sw = opts.get("sample_weights")
    if reduction == "token":
        out = tok * valid * (sw[samples] if sw is not None else 1.0)
    else:
        sums = torch.zeros(5).index_add(0, samples, tok * valid)
        out = sums / torch.zeros(5).index_add(0, samples, valid).clamp(min=1)
        out = out * sw if sw is not None else out
    (out * _upstream(reduction, len(labels)).float()).sum().backward()
    torch_low = [out.detach(), h16.grad, w16.grad]
    for i, (a, t, b) in enumerate(zip(ours, torch_low, ref)):
        ours_err = (a.double() - b).abs().max().item()
        torch_err = (t.double() - b).abs().max().item()
        factor, slack = (3, 1e-5) if i == 0 else (2, 1e-4)
        assert ours_err <= factor * torch_err + slack, (i, ours_err, torch_err)


def test_benchmark_script_runs_and_reports_every_case(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "table.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ct_train.kernels.bench_cross_entropy",
            "--shapes",
            "64,16,96",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--impls",
            "ours,ours-fwd,eager",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 64 |")]
    assert len(rows) == 6  # 3 implementations x (all-valid, 50% response)
    assert all(float(r.split("|")[6]) > 0 for r in rows)


def _low_precision_vs_pytorch(device, dtype, n, hdim, vocab, grad_mode, samples=16):
    """Our Triton kernel and PyTorch's own low-precision path (matmul in `dtype`, fp32 softmax), both
    from the same rounded inputs, against fp64 from those inputs: loss error at most 3x PyTorch's
    + 1e-5, gradient errors at most 2x + 1e-4. A quarter of the rows are prompt rows (-100)."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, hdim, generator=g).to(device=device, dtype=dtype)
    weight = (torch.randn(vocab, hdim, generator=g) / hdim**0.5).to(device=device, dtype=dtype)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[torch.arange(n) % 4 == 0] = -100
    labels, index = labels.to(device), (torch.arange(n) * samples // n).to(device)
    up = torch.randn(samples, generator=g, dtype=torch.float64).to(device)

    def per_sample(z):  # the definition: F.cross_entropy per token, mean over each sample's valid rows
        tok = F.cross_entropy(z, labels, reduction="none")
        zeros = torch.zeros(samples, dtype=z.dtype, device=device)
        return zeros.index_add(0, index, tok) / zeros.index_add(0, index, (labels != -100).to(z.dtype)).clamp(min=1)

    got = {}
    for name in ("fp64", "pytorch", "ours"):
        h = (hidden.double() if name == "fp64" else hidden.clone()).requires_grad_(True)
        w = (weight.double() if name == "fp64" else weight.clone()).requires_grad_(True)
        if name == "ours":
            out = linear_cross_entropy(
                h,
                w,
                labels,
                index,
                num_samples=samples,
                backend="triton",
                grad_mode=grad_mode,
                upstream_grad=up if grad_mode == "forward" else None,
            )
        else:
            out = per_sample((h @ w.t()).to(torch.float64 if name == "fp64" else torch.float32))
        (out * up.to(out.dtype)).sum().backward()
        got[name] = [out.detach().double(), h.grad.double(), w.grad.double()]
    ratios = []
    for i, (ours, low, ref) in enumerate(zip(got["ours"], got["pytorch"], got["fp64"])):
        ours_err, torch_err = (ours - ref).abs().max().item(), (low - ref).abs().max().item()
        factor, slack = (3, 1e-5) if i == 0 else (2, 1e-4)
        assert ours_err <= factor * torch_err + slack, (["loss", "dX", "dW"][i], ours_err, torch_err)
        ratios.append(ours_err / max(torch_err, 1e-30))
    return ratios


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="Triton needs a GPU or TRITON_INTERPRET=1",
)
@pytest.mark.parametrize("grad_mode", ["recompute", "forward"])
def test_low_precision_rule_on_packed_samples_with_prompts(grad_mode):
    """The GPU test's check, here on CPU in fp16 under the interpreter (so the check itself is tested)."""
    pytest.importorskip("triton")
    ratios = _low_precision_vs_pytorch("cpu", torch.float16, 96, 31, 123, grad_mode)
    assert all(r > 0 for r in ratios)  # both paths really differ from fp64: the comparison is not vacuous


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("grad_mode", ["recompute", "forward"])
def test_bf16_at_a_128k_vocabulary_on_gpu(grad_mode):
    pytest.importorskip("triton")
    ratios = _low_precision_vs_pytorch("cuda", torch.bfloat16, 2048, 512, 128256, grad_mode)
    print(f"bf16, V=128256, grad_mode={grad_mode}: error / PyTorch's error (loss, dX, dW) = {ratios}")
