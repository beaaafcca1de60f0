"""Every GPU figure of issue 33 in one command (`make bench-gpu`); `--smoke`: the same on CPU, tiny.

    python benchmarks/gpu.py [--smoke] [--out DIR] [--steps S] [--variants A,B,...]

Writes DIR/bench_gpu.md (and prints it):

1. The fused loss kernel: `ct_train.kernels.bench_cross_entropy` at the issue's shapes, bf16 (ours in
   both grad modes, eager, torch.compile, Liger).
2. Training on identical samples: the first records of the Alpaca stage-3 file (../shared/data), a
   1.1B Llama (TinyLlama's shape, random init, byte-level tokens), global batch 64 = 16 x 4, rows of
   1024, lr 1e-4, 1 GPU:
   - ct_train through the deepspeed launcher: ZeRO-3 packed (`model.attn_implementation=auto`:
     FlexAttention on CUDA without flash-attn), the same on sdpa with the dense mask, ZeRO-3 padded
     (`data.packing=false`), ZeRO-2 packed, ZeRO-3 packed with `model.liger_kernel=true`;
   - the plain PyTorch reference: the same model from transformers, sdpa, bf16 autocast over fp32
     weights, fused AdamW, each step's samples (ct_train's logged order) concatenated into full rows;
   - TRL's SFTTrainer (padding-free, Liger on, bf16, no activation checkpointing) on the same samples
     in the same order, tokenised by ct_train (benchmarks/peer.py's worker).
   Tokens/s over the steps after the first `WARMUP` (real tokens), 6N-MFU (N: the parameters that
   take part in matmuls, the input embedding excluded; peak 989 TFLOP/s, H100/H200 bf16 dense) and
   the peak GPU memory of each run.

Each run is its own process, so peaks do not mix. `--smoke` runs the same code with the tiny model,
fp32, a few steps and a small kernel shape on CPU (`make test` runs it so the script does not rot);
its figures mean nothing. On the GPU machine, run `make bench-gpu` (benchmarks/gpu.sh installs the
carried wheels first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batching import ALPACA, REPO  # noqa: E402

PEAK_TFLOPS = 989.0  # H100 SXM / H200, bf16 dense
WARMUP = 2  # steps not timed (compilation, allocator warm-up)
# TinyLlama-1.1B's shape; vocab 32000 as there (the byte-level tokenizer uses the first 264 ids)
ARCH_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
           "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048}  # fmt: skip
SETTINGS = {  # per mode: the model, the batch, the budget, the kernel shapes
    "gpu": dict(arch=ARCH_1B, steps=12, global_batch=64, micro=16, seq=1024, lr=1e-4,
                shapes="16384,4096,128256;8192,2304,256000", dtype="bf16", iters=10, warmup=3),
    "smoke": dict(arch={}, steps=4, global_batch=8, micro=4, seq=256, lr=1e-3,
                  shapes="256,64,512", dtype="fp32", iters=1, warmup=0),
}  # fmt: skip
CT_VARIANTS = {  # --variants key -> (the table's label, ct-train overrides)
    "zero3": ("ct_train ZeRO-3 packed", []),
    "zero3-sdpa": ("ct_train ZeRO-3 packed, sdpa + dense mask", ["model.attn_implementation=sdpa"]),
    "zero3-padded": ("ct_train ZeRO-3 padded", ["data.packing=false"]),
    "zero2": ("ct_train ZeRO-2 packed", ["deepspeed=zero2"]),
    "zero3-liger": ("ct_train ZeRO-3 packed, Liger", ["model.liger_kernel=true"]),
    "zero3-compile": ("ct_train ZeRO-3 packed, blocks compiled", ["model.compile=true"]),
}
# on CPU: the same as zero3 / refused; compile: its test is tests/distributed/test_compile_run.py (the
# smoke run would spend most of its time compiling)
GPU_ONLY = {"zero3-sdpa", "zero3-liger", "zero3-compile"}
LABELS = {**{k: v[0] for k, v in CT_VARIANTS.items()}, "reference": "plain PyTorch reference",
          "trl": "TRL SFTTrainer (padding-free, Liger on GPU)"}  # fmt: skip


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def ct_overrides(s: dict, records: Path, out: Path) -> list:
    arch = [f"model.architecture.{k}={v}" for k, v in s["arch"].items()]
    return arch + [
        "data=jsonl", f"data.path={records}", f"data.max_seq_len={s['seq']}", "data.eval_fraction=0",
        "curriculum=iid", f"trainer.global_batch_size={s['global_batch']}", f"trainer.micro_batch_size={s['micro']}",
        f"trainer.lr={s['lr']}", f"trainer.max_steps={s['steps']}", "trainer.eval_every_steps=0",
        "trainer.save_every_steps=0", "trainer.save_final=false", "trainer.export_final=false",
        "trainer.log_every_steps=1", "trainer.log_samples=true", "logger.progress_bar=false",
        f"trainer.output_dir={out}",
    ]  # fmt: skip


def ct_run(s: dict, records: Path, out: Path, extra: list, port: int) -> dict:
    """One ct-train run through the deepspeed launcher (1 rank): per-step tokens, seconds, peak."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if not cuda():
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(os.cpu_count()))
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(port),
           "--no_local_rank", "--module", "ct_train", *ct_overrides(s, records, out), *extra]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time_s" in r]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + rows, rows)]
    peak = max((r.get("memory/peak_gib", float("nan")) for r in rows), default=float("nan"))
    return {"tokens": tokens, "seconds": [r["step_time_s"] for r in rows], "loss": rows[0]["loss"], "peak_gib": peak}


def reference_worker(ct_dir: Path, out: Path) -> None:
    """The plain PyTorch loop (this process): ct_train's samples, step by step, in full rows."""
    import dataclasses

    import torch

    from ct_train.compose import load_config
    from ct_train.data import prepare_data
    from ct_train.data.tokenizer import load_tokenizer
    from ct_train.modeling import build_hf_model

    cfg = load_config(str(ct_dir / "config.yaml"))
    tok = load_tokenizer(cfg.model.tokenizer, cfg.model.path)
    train = prepare_data(cfg.data, tok).train.dataset
    row_of = {sample_id: i for i, sample_id in enumerate(train["id"])}
    steps = [json.loads(line)["ids"] for line in (ct_dir / "samples.rank0.jsonl").read_text().splitlines()]
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    torch.manual_seed(cfg.trainer.seed)
    model = build_hf_model(dataclasses.replace(cfg.model, attn_implementation="sdpa"), tok, torch.float32).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.trainer.lr, weight_decay=0.0, fused=on_gpu)
    seq, micro = cfg.data.max_seq_len, cfg.trainer.micro_batch_size
    seconds, tokens, losses = [], [], []
    for ids in steps:
        rows = train.select([row_of[i] for i in ids])
        flat_ids = torch.tensor([t for r in rows["input_ids"] for t in r])
        flat_labels = torch.tensor([t for r in rows["labels"] for t in r])
        pad = -len(flat_ids) % seq  # the last row is filled with padding that no label counts
        flat_ids = torch.cat([flat_ids, torch.full((pad,), tok.pad_token_id)]).view(-1, seq)
        flat_labels = torch.cat([flat_labels, torch.full((pad,), -100)]).view(-1, seq)
        n_labels = int((flat_labels[:, 1:] != -100).sum())
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        total = 0.0
        for i in range(0, len(flat_ids), micro):
            x, y = flat_ids[i : i + micro].to(device), flat_labels[i : i + micro].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                loss = model(input_ids=x, labels=y, num_items_in_batch=n_labels).loss
            loss.backward()
            total += float(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        tokens.append(sum(len(r) for r in rows["input_ids"]))
        losses.append(total)
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.json").write_text(
        json.dumps({"seconds": seconds, "tokens": tokens, "losses": losses, "peak_gib": peak})
    )


def worker_run(cmd: list, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ)
    if not cuda():
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(os.cpu_count()))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads((out / "steps.json").read_text())


def param_count(ct_dir: Path) -> int:
    """N for 6N-MFU: the parameters in matmuls (the input embedding is a lookup, the LM head is not),
    of the model a ct_train run built."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ct_train.compose import load_config

    arch = dict(load_config(str(ct_dir / "config.yaml")).model.architecture)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def rate(run: dict, tokens: list) -> float:
    """Tokens/s over the steps after WARMUP; `tokens` per step (ct_train's, for runs that do not count)."""
    return sum(tokens[WARMUP:]) / max(sum(run["seconds"][WARMUP:]), 1e-9)


def kernel_table(s: dict) -> str:
    from ct_train.kernels.bench_cross_entropy import run

    shapes = [tuple(int(x) for x in sh.split(",")) for sh in s["shapes"].split(";")]
    device = "cuda" if cuda() else "cpu"
    only = ("ours", "ours-fwd", "eager", "compile", "liger") if device == "cuda" else ("ours", "ours-fwd", "eager")
    return run(shapes, s["dtype"], device, s["iters"], s["warmup"], only)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, not speed")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench-gpu"))
    parser.add_argument("--steps", type=int, default=0, help="training steps per run (default: the mode's)")
    parser.add_argument("--variants", default=",".join(LABELS), help=f"of {', '.join(LABELS)}")
    parser.add_argument("--skip-kernel", action="store_true", help="only the training table")
    parser.add_argument("--port", type=int, default=29710, help="the deepspeed launcher's rendezvous port")
    parser.add_argument("--reference-worker", help=argparse.SUPPRESS)  # a ct_train run dir
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_worker:
        return reference_worker(Path(args.reference_worker), Path(args.worker_out))
    if not args.smoke and not cuda():
        raise SystemExit("benchmarks/gpu.py measures a GPU and none is visible here (--smoke checks it on CPU)")
    s = dict(SETTINGS["smoke" if args.smoke else "gpu"])
    s["steps"] = args.steps or s["steps"]
    if s["steps"] <= WARMUP:
        raise SystemExit(f"--steps={s['steps']}: needs more than the {WARMUP} warm-up steps")
    names = args.variants.split(",")
    unknown = [n for n in names if n not in LABELS]
    if unknown or names[0] not in CT_VARIANTS:
        raise SystemExit(f"--variants: {unknown or names[0]!r}: the first must be a ct_train variant (its logged "
                         f"samples feed the others); known: {', '.join(LABELS)}")  # fmt: skip
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    records = root / "records.jsonl"
    with open(ALPACA) as f:  # every step draws distinct samples (one epoch is more than the run)
        records.write_text("".join(line for _, line in zip(range(s["steps"] * s["global_batch"] * 2), f)))
    import torch

    device = torch.cuda.get_device_name() if cuda() else f"CPU ({os.cpu_count()} cores), smoke: figures mean nothing"
    command = f"python benchmarks/gpu.py {'--smoke ' if args.smoke else ''}--steps {s['steps']}"
    lines = [
        f"# bench-gpu: {device}",
        "",
        f"torch {torch.__version__}; `{command}`; {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]
    t_start = time.perf_counter()
    if not args.skip_kernel:
        lines += ["## Fused linear cross-entropy (forward + backward)", "", kernel_table(s), ""]
        print("\n".join(lines), flush=True)
    results, base_tokens, first = {}, None, root / "runs" / "ct-0"
    for k, name in enumerate(names):
        out = root / "runs" / f"ct-{k}"
        t0 = time.perf_counter()
        if name in GPU_ONLY and not cuda():
            print(f"{LABELS[name]}: GPU only, skipped on CPU", flush=True)
            continue
        try:
            if name in CT_VARIANTS:
                run = ct_run(s, records, out, CT_VARIANTS[name][1], args.port + k)
                base_tokens = base_tokens or run["tokens"]
                if run["tokens"] != base_tokens:
                    raise RuntimeError(
                        f"{LABELS[name]}: trained {sum(run['tokens']):,} tokens, the first run {sum(base_tokens):,}"
                    )
            elif name == "reference":
                cmd = [sys.executable, __file__, "--reference-worker", str(first), "--worker-out", str(out)]
                run = worker_run(cmd, out)
                run["loss"] = run["losses"][0]
            else:
                cmd = [sys.executable, str(REPO / "benchmarks" / "peer.py"), "--trl-worker", "--ct-run", str(first),
                       "--out", str(out), "--micro", str(s["micro"]), "--accum", str(s["global_batch"] // s["micro"]),
                       "--lr", str(s["lr"]), "--padding-free"] + (["--gpu", "--liger"] if cuda() else [])  # fmt: skip
                run = worker_run(cmd, out)
                if run["tokens"] != sum(base_tokens):
                    raise RuntimeError(
                        f"{LABELS[name]}: {run['tokens']:,} tokens seen, ct_train trained {sum(base_tokens):,}"
                    )
                run["loss"] = run["losses"][0]
        except RuntimeError as e:  # one failed variant is a row, not the end of the reservation
            if k == 0:
                raise SystemExit(f"{LABELS[name]} failed: the other runs have no samples to follow\n{e}") from None
            print(f"{name}: FAILED\n{e}", flush=True)
            results[name] = None
            continue
        results[name] = run
        print(f"{LABELS[name]}: {rate(run, base_tokens):,.0f} tokens/s, first loss {run['loss']:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    n_params = param_count(first)
    ref = results.get("reference")
    ref_rate = rate(ref, base_tokens) if ref else None
    lines += ["## Training: identical samples, 1 GPU" + (" (smoke: tiny model on CPU)" if args.smoke else ""), "",
              f"{n_params / 1e9:.3f}B parameters in matmuls; {s['steps']} steps of {s['global_batch']} samples, "
              f"{sum(base_tokens[WARMUP:]):,} real tokens timed (steps {WARMUP + 1}..{s['steps']}); "
              f"6N-MFU at {PEAK_TFLOPS:.0f} TFLOP/s", "",
              "| run | tokens/s | vs reference | 6N-MFU | peak GiB | first loss |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, run in results.items():
        if run is None:
            lines.append(f"| {LABELS[name]} | failed | | | | |")
            continue
        r = rate(run, base_tokens)
        mfu = f"{6 * n_params * r / (PEAK_TFLOPS * 1e12):.1%}" if cuda() else "n/a"
        vs = f"{r / ref_rate:.2f}x" if ref_rate else "n/a"
        peak = f"{run['peak_gib']:.1f}" if run["peak_gib"] == run["peak_gib"] else "n/a"
        lines.append(f"| {LABELS[name]} | {r:,.0f} | {vs} | {mfu} | {peak} | {run['loss']:.4f} |")
    lines += ["", f"Wall time of this command after the wheels: {time.perf_counter() - t_start:.0f} s; median "
              f"step of the first run {statistics.median(results[names[0]]['seconds']):.2f} s"
              if results.get(names[0]) else ""]  # fmt: skip
    (root / "bench_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if any(r is None for r in results.values()):
        raise SystemExit(f"some runs failed (above); the table is in {root / 'bench_gpu.md'}")


if __name__ == "__main__":
    main()
