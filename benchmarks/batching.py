"""Tokens/s of padded, length-grouped and packed micro-batches on the same samples (docs/benchmarks.md).

    python benchmarks/batching.py [--model tiny|smollm2] [--records N] [--steps S] [--micro B]
                                  [--variants padded,packed,...] [--out DIR] [OVERRIDE ...]
    python benchmarks/batching.py --model smollm2 --records 256 --micro 16 --compute-only

Each variant is one `ct-train` run (1 rank, plain python, all cores) on the same first N records of
the Alpaca stage-3 file (../shared/data), the same seed, so the same global batches: only how each
micro-batch is laid out differs. Prints median tokens/s after the first step, and each variant's
ratio to the padded run. Tokens are real tokens (prompt + response, no padding) in every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "data" / "alpaca52k-gpt4-scored-stage3.jsonl"
VARIANTS = {  # each names its layout: packing is the default since 2026-12-02
    "padded": ["data.packing=false"],
    "grouped": ["data.packing=false", "data.group_by_length=true"],
    "packed": ["data.packing=true"],
    "packed+grouped": ["data.packing=true", "data.group_by_length=true"],
}
# Per model: (its overrides, global batch, micro-batch). 8 micro-batches a step for the tiny model
# (so grouping has a rank's share to regroup), 4 for SmolLM2 (61 tokens/s here: kept short).
MODELS = {
    "tiny": ([], 64, 8),
    "smollm2": (["model=hf", "model.path={model_path}", "trainer.lr=2e-5"], 16, 4),
}


def run(out: Path, model: str, records: Path, steps: int, extra: list, micro: int = 0) -> dict:
    from ct_train.plot import throughput

    overrides, global_batch, default_micro = MODELS[model]
    micro = micro or default_micro
    model_path = ""
    if model == "smollm2":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from smollm2 import model_dir

        model_path = str(model_dir())
    cmd = [sys.executable, "-m", "ct_train", *[o.format(model_path=model_path) for o in overrides],
           "data=jsonl", f"data.path={records}", "data.max_seq_len=2048", "data.eval_fraction=0",
           "trainer.save_final=false",
           f"trainer.global_batch_size={global_batch}", f"trainer.micro_batch_size={micro}",
           f"trainer.max_steps={steps}", "trainer.eval_every_steps=0", "trainer.save_every_steps=0",
           "trainer.export_final=false", "trainer.log_every_steps=1", "logger.progress_bar=false",
           f"trainer.output_dir={out}"]  # fmt: skip
    keys = {e.split("=", 1)[0] for e in extra}
    cmd = [c for c in cmd if c.split("=", 1)[0] not in keys] + list(extra)  # a variant's own value wins
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(os.cpu_count())}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    result = throughput(str(out), skip_steps=1)
    result["wall_s"] = time.perf_counter() - t0
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    result["first_loss"] = losses[0]
    result["stdout"] = proc.stdout
    return result


def compute_only(model: str, records: Path, micro: int, start: int = 16, repeats: int = 2) -> None:
    """Forward + backward of one micro-batch (records start..start+micro), padded vs packed, with the
    plain model in this process: no DeepSpeed, no optimizer step. Separates what packing saves in
    compute from the rest of a training step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ct_train.config import DataConfig
    from ct_train.data import collate, prepare_data
    from ct_train.losses import objective
    from ct_train.modeling import SampleLossModel

    if model != "smollm2":
        raise SystemExit("--compute-only is for --model smollm2 (a model directory to load)")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from smollm2 import model_dir

    path = str(model_dir())
    tok = AutoTokenizer.from_pretrained(path)
    data = prepare_data(DataConfig(name="jsonl", path=str(records), max_seq_len=2048, eval_fraction=0.0), tok)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    net = SampleLossModel(lm).train()
    indices = list(range(start, start + micro))
    weights = torch.full((micro,), 1.0 / micro)
    for _ in range(repeats):
        for pack in (False, True):
            batch = collate(data.train, indices, tok.pad_token_id, pack)
            extra = dict(position_ids=batch.position_ids, sample_index=batch.sample_index, num_samples=micro)
            t0 = time.perf_counter()
            loss, _ = net(batch.input_ids, batch.attention_mask, batch.labels, weights, **(extra if pack else {}))
            objective(loss, weights).backward()
            net.zero_grad(set_to_none=True)
            print(f"{'packed' if pack else 'padded'} {tuple(batch.input_ids.shape)}: forward + backward "
                  f"{time.perf_counter() - t0:.2f} s ({batch.num_tokens} real tokens)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--records", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--micro", type=int, default=0, help="micro-batch size (default: the model's, above)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--compute-only", action="store_true", help="time one micro-batch's forward + backward only")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench-batching"))
    parser.add_argument(
        "overrides", nargs="*", help="more ct-train overrides for every variant, e.g. model.lora.enabled=true"
    )
    args = parser.parse_args()
    root = Path(args.out) / (
        args.model + (f"-micro{args.micro}" if args.micro else "") + ("-more" if args.overrides else "")
    )
    root.mkdir(parents=True, exist_ok=True)
    records = root / "records.jsonl"
    with open(ALPACA) as f:
        records.write_text("".join(line for _, line in zip(range(args.records), f)))
    if args.compute_only:
        return compute_only(args.model, records, args.micro or MODELS[args.model][2])
    rows = {}
    for name in args.variants.split(","):
        rows[name] = r = run(root / name, args.model, records, args.steps, VARIANTS[name] + args.overrides, args.micro)
        print(f"{name:>15}: median {r['median_tokens_per_s']:,.0f} tokens/s over {r['steps']} steps "
              f"({r['tokens_per_step']:,.0f} tokens/step, median step {r['median_step_s']:.2f} s; "
              f"first loss {r['first_loss']:.6f}; {r['wall_s']:.0f} s wall)", flush=True)  # fmt: skip
    base = rows["padded"]["median_tokens_per_s"]
    print("vs padded: " + ", ".join(f"{k} {v['median_tokens_per_s'] / base:.2f}x" for k, v in rows.items()))


if __name__ == "__main__":
    main()
