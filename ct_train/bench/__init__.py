"""`ct-train-bench`: which curriculum wins on this data and budget, and by how much.

    ct-train-bench                          # every strategy x 3 seeds on the benchmark suite (data=bench)
    ct-train-bench --quick                  # a reduced grid that checks the pipeline (~2 min on 2 cores)
    ct-train-bench data=jsonl data.path=my.jsonl bench.strategies=[iid,it2acl,phased]

Every run is a normal training run (`train()`, DeepSpeed, the config composed by Hydra from the same
overrides as the bench plus `curriculum=<strategy> trainer.seed=<seed>`), so the budget is the same
for all: trainer.max_steps optimizer steps of trainer.global_batch_size samples. Runs land in
`<trainer.output_dir>/runs/<strategy>/seed<N>/` with their metrics.jsonl; a finished run keeps a
`bench_result.json` keyed by its overrides, so the same command re-run (after an interruption, or
with another strategy added) trains only what is missing. Then report.md, results.csv and the plots
(ct_train.bench.report) go into trainer.output_dir. Under the deepspeed launcher every rank runs the
grid and each run uses every rank.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ct_train import distributed as dist
from ct_train import io
from ct_train.bench.targets import BALANCED
from ct_train.config import Config
from ct_train.data.skills import GENERATED

RESULT_FILE = "bench_result.json"

# Keys a bench decides per run; the user's own overrides of them are dropped from the runs.
_PER_RUN = ("mode", "bench", "curriculum", "trainer.output_dir", "trainer.seed", "trainer.resume")

# --quick: a smaller model, data and budget (the pipeline end to end, not the winner).
QUICK_STEPS = 12
QUICK_DATA = ["data.skills.train_per_level=24", "data.skills.eval_per_level=4", "data.skills.sizes=null"]
QUICK_MODEL = [
    "model.architecture.num_hidden_layers=2",
    "model.architecture.hidden_size=64",
    "model.architecture.intermediate_size=128",
]
QUICK_TRAINER = [
    f"trainer.max_steps={QUICK_STEPS}",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=8",
    "trainer.eval_every_steps=4",
    "trainer.warmup_steps=2",
]
QUICK_SEEDS = 2


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def user_overrides(overrides: List[str]) -> List[str]:
    """The bench command's overrides that every run shares (not the per-run keys)."""
    return [o for o in overrides if not any(_key(o) == k or _key(o).startswith(k + ".") for k in _PER_RUN)]


def quick_overrides(cfg: Config) -> List[str]:
    out = list(QUICK_TRAINER)
    if cfg.data.name in GENERATED:
        out += QUICK_DATA
    if cfg.model.path is None:
        out += QUICK_MODEL
    return out


@dataclass
class Context:
    """What a strategy's prepare step gets: the bench's config, its root, a composer."""

    cfg: Config
    root: str
    base: List[str]
    prepare_s: Dict[str, float] = field(default_factory=dict)  # set-up seconds per strategy (when it ran)

    def compose(self, extra: List[str]) -> Tuple[Config, Dict[str, Any]]:
        from hydra import compose
        from omegaconf import OmegaConf

        from ct_train.compose import to_typed

        raw = compose(config_name="config", overrides=self.base + list(extra))
        return to_typed(raw), OmegaConf.to_container(raw, resolve=True)

    def cached(self, path: str, overrides: List[str]) -> Optional[Dict[str, Any]]:
        """The JSON at `path` when it was made by the same overrides (see mark_cached)."""
        marker = path + ".bench-key"
        if not (os.path.exists(path) and os.path.exists(marker)):
            return None
        with open(marker) as f:
            if json.load(f) != self.base + list(overrides):
                return None
        with open(path) as f:
            return json.load(f)

    def mark_cached(self, path: str, overrides: List[str]) -> None:
        def write() -> None:
            with open(path + ".bench-key", "w") as f:
                json.dump(self.base + list(overrides), f)

        dist.on_main(write)


def run_dir(root: str, strategy: str, seed: int) -> str:
    return os.path.join(root, "runs", strategy, f"seed{seed}")


def _train_once(ctx: Context, overrides: List[str], out: str) -> Dict[str, Any]:
    """Train one run unless `out` holds the result of the same overrides; returns its result."""
    from ct_train.trainer import train_cached

    cfg, resolved = ctx.compose(overrides)
    if os.path.abspath(cfg.trainer.output_dir) != os.path.abspath(out):
        raise RuntimeError(f"bench run composed into {cfg.trainer.output_dir}, expected {out}")
    result = train_cached(cfg, resolved, ctx.base + overrides, RESULT_FILE)
    if result.get("cached"):
        dist.print0(f"bench: {out}: finished earlier with the same overrides, kept")
    return result


def run(cfg: Config, resolved: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """The grid (strategies x seeds) and the report; call on every rank. `overrides`: the command's
    Hydra overrides, which every run shares."""
    from ct_train.bench import report
    from ct_train.bench.strategies import registered
    from ct_train.errors import UserError

    dist.init(cfg.trainer.dist_timeout_s)
    bench = cfg.bench
    root = os.path.abspath(os.path.expanduser(cfg.trainer.output_dir))

    dist.on_main(lambda: io.prepare_output_dir(cfg.trainer.output_dir))
    base = user_overrides(overrides) + (quick_overrides(cfg) if bench.quick else [])
    ctx = Context(cfg, root, base)
    # The budget and the eval grid as every run will see them.
    run_cfg, _ = ctx.compose([])
    strategies = registered()
    names = list(bench.strategies) or list(strategies)
    if "iid" not in names:
        names = ["iid"] + names  # the reference every ratio is taken against
    if BALANCED not in names:  # what adaptivity adds shows only against the uniform mix
        names.insert(1, BALANCED)
    # The bench command's own trainer.seed (dropped from the runs' shared overrides, which set their own).
    seeds = [cfg.trainer.seed + s for s in range(min(bench.seeds, QUICK_SEEDS) if bench.quick else bench.seeds)]
    dist.print0(
        f"bench: {len(names)} strategies x {len(seeds)} seeds, {run_cfg.trainer.max_steps} steps x "
        f"{run_cfg.trainer.global_batch_size} samples each -> {root}"
    )
    t_all = time.perf_counter()
    runs: List[Dict[str, Any]] = []
    failed: Dict[str, str] = {}
    for name in names:
        strategy = strategies[name]
        try:
            extra = list(strategy.prepare(ctx)) if strategy.prepare else []
            for seed in seeds:
                out = run_dir(root, name, seed)
                dist.print0(f"bench: {name} seed {seed}")
                per_run = list(strategy.overrides) + extra + list((bench.overrides or {}).get(name, []))
                per_run += [f"trainer.seed={seed}", f"trainer.output_dir={out}", "trainer.resume=never", "mode=train"]
                per_run += ["trainer.save_every_steps=0", "trainer.save_final=false", "trainer.export_final=false"]
                result = _train_once(ctx, per_run, out)
                runs.append({"strategy": name, "seed": seed, "dir": out, "wall_s": result["wall_s"]})
            if name == "iid":  # the suite's pilot gate, before the other strategies spend their runs
                for line in report.gate_report(runs, run_cfg.data.name, run_cfg.trainer.max_steps):
                    dist.print0(f"bench: {line}")
        except UserError as e:
            if name == "iid":
                raise  # the reference itself cannot run: nothing to compare against
            # A strategy this data cannot serve (say, Phased IFT without a difficulty) is reported, and
            # the grid goes on: the other strategies' runs are not lost.
            failed[name] = str(e)
            runs = [r for r in runs if r["strategy"] != name]
            dist.print0(f"bench: {name} did not run: {e}")
    meta = {
        "command": "ct-train-bench " + " ".join(overrides),
        "data": run_cfg.data.name,
        "model": run_cfg.model.name,
        "max_steps": run_cfg.trainer.max_steps,
        "global_batch_size": run_cfg.trainer.global_batch_size,
        "world_size": dist.world_size(),
        "seeds": seeds,
        "prepare_s": ctx.prepare_s,
        "runs_s": round(sum(r["wall_s"] for r in runs), 1),  # the runs' own wall times, also of kept ones
        "wall_s": round(time.perf_counter() - t_all, 1),  # this invocation
        "quick": bench.quick,
        "failed": failed,
    }
    summary = dist.on_main(lambda: report.write(root, runs, meta))
    return summary
