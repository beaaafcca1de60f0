"""LoRA vs full tuning on SmolLM2-135M-Instruct: trainable parameters, optimizer-state bytes and
tokens/s on the same samples (docs/benchmarks.md).

    python benchmarks/lora.py [--records N] [--steps S] [--out DIR] [OVERRIDE ...]

Both are one `ct-train` run (1 rank, plain python, all cores, ZeRO-3, AdamW) on the first N Alpaca
stage-3 records, same seed and batches. The optimizer state is what DeepSpeed writes for it: the
size of the checkpoint's `*_optim_states.pt` files (fp32 master weights + Adam's two moments).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batching import ALPACA, REPO, run  # noqa: E402

VARIANTS = {"full": [], "lora": ["model.lora.enabled=true"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench-lora"))
    parser.add_argument("overrides", nargs="*", help="more ct-train overrides for both runs, e.g. deepspeed=zero2")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    records = root / "records.jsonl"
    with open(ALPACA) as f:
        records.write_text("".join(line for _, line in zip(range(args.records), f)))
    rows = {}
    for name, extra in VARIANTS.items():
        save = ["trainer.save_final=true", "data.max_seq_len=512"]
        r = run(root / name, "smollm2", records, args.steps, extra + save + args.overrides)
        found = re.search(r"([\d,]+) parameters(?: \(([\d,]+) trainable)?", r["stdout"])
        total = int(found.group(1).replace(",", ""))
        r["trainable"] = int(found.group(2).replace(",", "")) if found.group(2) else total
        r["optim_bytes"] = sum(p.stat().st_size for p in (root / name / "checkpoints").rglob("*optim_states.pt"))
        rows[name] = r
        print(f"{name:>5}: {r['trainable']:,} of {total:,} parameters trainable; optimizer state "
              f"{r['optim_bytes'] / 2**20:,.1f} MiB; median {r['median_tokens_per_s']:,.1f} tokens/s over "
              f"{r['steps']} steps (median step {r['median_step_s']:.1f} s; first loss {r['first_loss']:.4f})",
              flush=True)  # fmt: skip
    full, lora = rows["full"], rows["lora"]
    print(f"lora vs full: {lora['trainable'] / full['trainable']:.4f}x trainable, "
          f"{lora['optim_bytes'] / full['optim_bytes']:.4f}x optimizer state, "
          f"{lora['median_tokens_per_s'] / full['median_tokens_per_s']:.2f}x tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
