"""ct_train against TRL's SFTTrainer on identical batches: step time and tokens/s (docs/benchmarks.md).

    python benchmarks/peer.py [--model smollm2|tiny] [--records N] [--steps S] [--rounds R] [--out DIR]

Every variant is one fresh process on this machine's cores (1 rank, fp32, lr 2e-5, global batch 8 =
micro-batches of 4 x 2 accumulation steps, `curriculum=iid`):

- `ct_train`: `ct-train` with its defaults (ZeRO-3, packed micro-batches); `ct_train zero2`:
  `deepspeed=zero2`; `ct_train padded`: `data.packing=false` (rows padded as TRL pads them).
- `trl`: TRL's SFTTrainer with its defaults (activation checkpointing on, fused AdamW, padded rows);
  `trl no-ckpt`: `gradient_checkpointing=False`; `trl padding-free`: that and `padding_free=True`
  (each micro-batch flattened into one row; sdpa's mask from the restarting position ids).

Identical batches: the first ct_train run of a round logs its sample order (`trainer.log_samples`); TRL
gets exactly those samples in that order (a sequential sampler, no shuffling), tokenised by ct_train
(its chat template, its truncation, response-only labels), so both see the same tokens, micro-batches
and padding (to the longest sample of a micro-batch) at every step. The first step of each run is a
warm-up and not counted. A round runs every variant once, the order rotating from round to round (the
machine's speed drifts); the ratios are of summed step times within a round, then averaged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batching import ALPACA, REPO, run  # noqa: E402

MICRO, ACCUM, LR = 4, 2, 2e-5
LENGTH = {"smollm2": 256, "tiny": 512}  # data.max_seq_len per model (the lengths)
CT_VARIANTS = {"ct_train": [], "ct_train zero2": ["deepspeed=zero2"], "ct_train padded": ["data.packing=false"]}
# name -> (gradient_checkpointing, padding_free)
TRL_VARIANTS = {"trl": (True, False), "trl no-ckpt": (False, False), "trl padding-free": (False, True)}


def ct_run(out: Path, model: str, records: Path, steps: int, extra: list) -> list:
    """One ct-train run; its per-step (tokens, loss, seconds)."""
    common = [f"data.max_seq_len={LENGTH[model]}", f"trainer.global_batch_size={MICRO * ACCUM}",
              f"trainer.micro_batch_size={MICRO}", f"trainer.lr={LR}", "curriculum=iid",
              "trainer.log_samples=true"]  # fmt: skip
    run(out, model, records, steps, common + extra)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time_s" in r]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + rows, rows)]
    return [(t, r["loss"], r["step_time_s"]) for t, r in zip(tokens, rows)]


def trl_worker(args: argparse.Namespace) -> None:
    """One TRL run (this process): the ct_train run's samples in its order; writes per-step seconds."""
    import dataclasses

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ct_train.compose import load_config
    from ct_train.data import prepare_data
    from ct_train.data.tokenizer import load_tokenizer
    from ct_train.modeling import build_hf_model

    ct_dir = Path(args.ct_run)
    cfg = load_config(str(ct_dir / "config.yaml"))
    tok = load_tokenizer(cfg.model.tokenizer, cfg.model.path)
    train = prepare_data(cfg.data, tok).train.dataset
    row_of = {sample_id: i for i, sample_id in enumerate(train["id"])}
    logged = [json.loads(line)["ids"] for line in (ct_dir / "samples.rank0.jsonl").read_text().splitlines()]
    order = [row_of[sample_id] for step in logged for sample_id in step]
    rows = train.select(order)
    dataset = Dataset.from_dict({"input_ids": rows["input_ids"], "labels": rows["labels"]})
    if cfg.model.path:
        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32, attn_implementation="sdpa")
    else:  # the tiny model: the same architecture and initial weights as ct_train's
        torch.manual_seed(cfg.trainer.seed)
        # sdpa as on CPU (on CUDA ct_train's `auto` would pick FlexAttention with its own block mask)
        model = build_hf_model(dataclasses.replace(cfg.model, attn_implementation="sdpa"), tok, torch.float32)

    ends = []
    micro, accum, lr = args.micro or MICRO, args.accum or ACCUM, args.lr or LR

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    config = SFTConfig(
        output_dir=args.out, max_steps=len(order) // (micro * accum), per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, learning_rate=lr, gradient_checkpointing=args.checkpointing,
        train_sampling_strategy="sequential", max_length=None, use_cpu=not args.gpu, bf16=args.gpu, report_to="none",
        use_liger_kernel=args.liger,
        logging_steps=1, save_strategy="no", seed=cfg.trainer.seed, disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", padding_free=args.padding_free,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok, callbacks=[StepClock()])
    fed = [0]  # padding-free rows hold no padding: every position is a real token
    if args.padding_free:
        # TRL counts "non_padding" tokens without an attention mask as those != pad id, and SmolLM2's
        # pad is its <|im_end|>, in every sample: count what the collator actually feeds instead.
        collate = trainer.data_collator

        def counting(examples):
            batch = collate(examples)
            fed[0] += batch["input_ids"].numel()
            return batch

        trainer.data_collator = counting
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    result = {"seconds": [b - a for a, b in zip(ends, ends[1:])], "losses": losses,
              "tokens": fed[0] if args.padding_free else trainer.state.num_input_tokens_seen,
              "checkpointing": model.is_gradient_checkpointing,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if args.gpu else float("nan")}  # fmt: skip
    Path(args.out, "steps.json").write_text(json.dumps(result))


def trl_run(out: Path, ct_dir: Path, checkpointing: bool, padding_free: bool) -> list:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--trl-worker", "--ct-run", str(ct_dir), "--out", str(out)]
    cmd += ["--checkpointing"] if checkpointing else []
    cmd += ["--padding-free"] if padding_free else []
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(os.cpu_count())}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out / "steps.json").read_text())
    if result["checkpointing"] != checkpointing:
        raise SystemExit(f"{out}: TRL ran with gradient checkpointing {result['checkpointing']}, not {checkpointing}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(LENGTH), default="smollm2")
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join([*CT_VARIANTS, *TRL_VARIANTS]))
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench-peer"))
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ct-run", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--padding-free", action="store_true", help=argparse.SUPPRESS)
    # the worker as benchmarks/gpu.py runs it: its batch and lr, on the GPU (bf16 autocast), with Liger
    parser.add_argument("--micro", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--accum", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--liger", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        return trl_worker(args)
    root = Path(args.out) / args.model
    root.mkdir(parents=True, exist_ok=True)
    records = root / "records.jsonl"
    with open(ALPACA) as f:
        records.write_text("".join(line for _, line in zip(range(args.records), f)))
    names = args.variants.split(",")
    if "ct_train" not in names:
        raise SystemExit("--variants must include ct_train (its run gives the sample order and the tokens)")
    times = {name: [] for name in names}  # per round: summed seconds of the counted steps
    tokens, all_tokens = 0, 0  # ct_train's: of the counted steps, of all steps
    for r in range(args.rounds):
        # ct_train first (its order feeds TRL), then the others rotated.
        others = [n for n in names if n != "ct_train"]
        others = others[r % len(others) :] + others[: r % len(others)] if others else []
        for name in ["ct_train", *others]:
            out = root / f"round{r}" / name.replace(" ", "-")
            if name in TRL_VARIANTS:
                trl = trl_run(out, root / f"round{r}" / "ct_train", *TRL_VARIANTS[name])
                losses, steps = trl["losses"], trl["seconds"]
                if trl["tokens"] != all_tokens:  # the same samples, so the same real tokens
                    raise SystemExit(f"{name}: {trl['tokens']:,} tokens seen, ct_train trained {all_tokens:,}")
            else:
                counted = ct_run(out, args.model, records, args.steps, CT_VARIANTS[name])
                _, losses, steps = zip(*counted)
                tokens = tokens or sum(t for t, _, _ in counted[1:])
                all_tokens = sum(t for t, _, _ in counted)
            if len(steps) != args.steps:
                raise SystemExit(f"{name}: {len(steps)} steps timed, expected {args.steps}")
            times[name].append(sum(steps[1:]))
            # The losses show that both trained on the same tokens (both normalise by the batch's
            # response tokens; they part once the lr schedules do: ct_train warms up, TRL does not).
            print(f"round {r} {name:>15}: {sum(steps[1:]):.1f} s for steps 2..{args.steps} "
                  f"({', '.join(f'{s:.1f}' for s in steps)}); first loss {losses[0]:.4f}", flush=True)  # fmt: skip
    print(f"\n{args.model}: {tokens:,} tokens in steps 2..{args.steps}, {args.rounds} rounds")
    print("| variant | tokens/s (mean of rounds) | per round |")
    print("| --- | --- | --- |")
    for name in names:
        rates = [tokens / t for t in times[name]]
        print(f"| {name} | {statistics.fmean(rates):,.1f} | {', '.join(f'{x:,.1f}' for x in rates)} |")
    peers = [n for n in names if n in TRL_VARIANTS]
    print("\nct_train's tokens/s over TRL's (mean of the rounds' ratios; each round's in brackets)")
    print("| | " + " | ".join(f"vs {p}" for p in peers) + " |")
    print("| --- |" + " --- |" * len(peers))
    for name in (n for n in names if n not in TRL_VARIANTS):
        cells = []
        for peer in peers:
            ratios = [b / a for a, b in zip(times[name], times[peer])]
            cells.append(f"{statistics.fmean(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
