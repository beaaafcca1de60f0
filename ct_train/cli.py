"""The Hydra entry point: `ct-train`, `python -m ct_train`, and under `deepspeed`/`torchrun`;
`ct-train-score` is the same with `mode=score` (ct_train.scoring), `ct-train-bench` with `mode=bench`
(ct_train.bench); `ct-train-sample` writes the bundled skill suite as a JSON lines file.

The deepspeed launcher (without --no_local_rank) appends `--local_rank=N`, which Hydra would reject
as an override; it is stripped here before Hydra parses and LOCAL_RANK is taken from the environment
(set by every launcher) or from that argument. User errors (bad config value, bad data file, an
unwritable checkpoint) print one line on rank 0 and exit with status 2, no traceback; a run stopped
on purpose (non-finite loss) likewise with status 3; a run saved and stopped on SIGTERM/SIGUSR1/Ctrl-C
(preemption) with status 4. The overrides are composed once before Hydra runs the app, so a mistyped
group option or key is one line with the nearest match, exit 2 (`override_error`); `--help` is ours
(groups and examples), Hydra's is `--hydra-help`.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import warnings
from typing import Dict, List, Optional

EXIT_USER_ERROR = 2
EXIT_STOPPED = 3
EXIT_PREEMPTED = 4  # saved on a stop signal: rerun (or requeue) the same command to resume
PROGS = ("ct-train", "ct-train-score", "ct-train-bench")  # (python -m ct_train: ct-train)
_LOCAL_RANK = re.compile(r"^--local[_-]rank(=(\d+))?$")


def strip_local_rank(argv: List[str]) -> List[str]:
    """argv without `--local_rank=N` / `--local_rank N` (also `--local-rank`); sets LOCAL_RANK if unset."""
    out, i = [], 0
    while i < len(argv):
        m = _LOCAL_RANK.match(argv[i])
        if m:
            value = m.group(2)
            if value is None and i + 1 < len(argv) and argv[i + 1].isdigit():
                value = argv[i + 1]
                i += 1
            if value is not None:
                os.environ.setdefault("LOCAL_RANK", value)
        else:
            out.append(argv[i])
        i += 1
    return out


USAGE_EXAMPLES = """\
examples:
  ct-train                                             tiny model, bundled skill suite, IID (CPU is fine)
  ct-train curriculum=it2acl trainer.max_steps=200     IT2ACL's bandit over the skill clusters
  ct-train model=hf model.path=/models/SmolLM2-135M-Instruct data=jsonl data.path=train.jsonl \\
      curriculum=phased                                a pretrained model on your data (lr 2e-5 by default)
  deepspeed --num_gpus 8 --no_local_rank --module ct_train model=llama3_8b model.path=/models/Meta-Llama-3-8B \\
      data=jsonl data.path=/data/mix.jsonl trainer.micro_batch_size=4 trainer.global_batch_size=128
  ct-train-score data=jsonl data.path=train.jsonl scoring=ifd model=hf model.path=/models/base
  ct-train-bench --quick                               every strategy x seeds on the benchmark suite

any key can be set with key=value (trainer.lr=1e-4 data.max_seq_len=1024); `--cfg job` prints the
composed config; README.md lists the keys. Exit status: 2 bad config or data, 3 training stopped,
4 saved on SIGTERM/SIGUSR1/Ctrl-C (rerun to resume; a second Ctrl-C aborts without saving)."""

DESCRIPTIONS = {
    "ct-train": "Instruction-tune a causal LM on DeepSpeed ZeRO with a curriculum (IT2ACL, Phased IFT, TAPIR, "
    "Beyond IID, ODM, mixtures, IID).",
    "ct-train-score": "Write the data back with a difficulty per record (scoring=field|length|loss|ifd|judge_gap).",
    "ct-train-bench": "Run every curriculum x seeds at the same budget and write report.md (--quick: CI's grid).",
}


def config_groups() -> Dict[str, List[str]]:
    """The Hydra groups a user picks from and their options (the `<name>_schema` entries that type the
    curriculum YAMLs are internal and left out)."""
    from importlib.resources import files

    root = files("ct_train.hydra_conf")
    return {
        group.name: sorted(f.name[: -len(".yaml")] for f in group.iterdir() if f.name.endswith(".yaml"))
        for group in sorted(root.iterdir(), key=lambda p: p.name)
        if group.is_dir() and not group.name.startswith("_")
    }


def help_text(prog: str) -> str:
    groups = "\n".join(f"  {g:<11} {', '.join(opts)}" for g, opts in config_groups().items())
    return (
        f"usage: {prog} [GROUP=OPTION ...] [KEY=VALUE ...]\n\n{DESCRIPTIONS.get(prog, DESCRIPTIONS['ct-train'])}\n\n"
        f"config groups (GROUP=OPTION):\n{groups}\n\n{USAGE_EXAMPLES}"
    )


def _compose(overrides: List[str], hydra_keys: bool = False):
    """The config Hydra would compose from these overrides (raises Hydra's errors)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("ct_train.hydra_conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_keys)


def override_error(args: List[str]) -> Optional[str]:
    """One line for an override Hydra cannot compose (a mistyped group option, an unknown key, a value
    of the wrong type, bad syntax), else None. Hydra's own report is several lines and exits 1; ours
    exits 2 like every other user error, before anything starts."""
    from hydra.errors import HydraException, MissingConfigException

    from ct_train.compose import register_configs

    register_configs()
    try:
        _compose(args, hydra_keys=True)  # (hydra.* overrides are legal too)
    except MissingConfigException as e:
        group, _, option = (e.missing_cfg_file or "").partition("/")
        options = config_groups().get(group)
        if not options:
            return str(e).splitlines()[0]
        close = difflib.get_close_matches(option, options, n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"{group}={option}: no such {group}{hint}; choose one of: {', '.join(options)}"
    except HydraException as e:
        lines = str(e).splitlines()
        cause = str(e.__cause__) if e.__cause__ else ""
        unknown = re.search(r"full_key: (\S+)", cause) if cause.startswith("Key ") else None
        if unknown:
            return _unknown_key(unknown.group(1), args)
        bad = re.match(r"Error (?:merging|parsing) override '?([^']+?)'?$", lines[0])
        why = cause.splitlines()[0] if cause else (lines[1] if len(lines) > 1 else "")
        return f"{bad.group(1)}: {why}" if bad else f"{lines[0]} {why}".strip()
    return None


def _unknown_key(key: str, args: List[str]) -> str:
    """`trainer.max_step: no such key (did you mean trainer.max_steps?)`, the keys of its section read
    from the config composed without the offending override."""
    from omegaconf import DictConfig, OmegaConf

    parent, _, name = key.rpartition(".")
    hint = ""
    try:
        rest = [a for a in args if a.lstrip("+~").split("=", 1)[0] != key]
        section = OmegaConf.select(_compose(rest), parent) if parent else None
        if isinstance(section, DictConfig):
            close = difflib.get_close_matches(name, list(section.keys()), n=1)
            hint = f" (did you mean {parent}.{close[0]}?)" if close else f" ({parent} has: {', '.join(section)})"
    except Exception:  # the hint is a courtesy: the one-line error stands without it
        pass
    return f"{key}: no such key{hint}"


def _run(cfg) -> None:
    from omegaconf import OmegaConf

    from ct_train import distributed as dist
    from ct_train.compose import to_typed
    from ct_train.errors import Preempted, TrainingStopped, UserError

    try:
        typed = to_typed(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if typed.mode == "score":
            from ct_train.scoring import score

            score(typed, resolved)
        elif typed.mode == "interaction":
            from ct_train.interaction import measure

            measure(typed, resolved)
        elif typed.mode == "bench":
            from hydra.core.hydra_config import HydraConfig

            from ct_train.bench import run

            run(typed, resolved, list(HydraConfig.get().overrides.task))
        else:
            from ct_train.trainer import train

            train(typed, resolved)
    except Preempted as e:
        if dist.rank() == 0:
            print(f"ct-train: stopped: {e}", file=sys.stderr, flush=True)
        dist.shutdown(wait_for_all=False)
        sys.exit(EXIT_PREEMPTED)
    except (UserError, TrainingStopped) as e:
        if dist.rank() == 0:
            print(f"ct-train: error: {e}", file=sys.stderr, flush=True)
        dist.shutdown(wait_for_all=False)
        sys.exit(EXIT_USER_ERROR if isinstance(e, UserError) else EXIT_STOPPED)
    dist.shutdown()


def main() -> None:
    # DeepSpeed 0.19 calls collectives torch 2.13 renamed; the warning repeats every step and says
    # nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    args = strip_local_rank(sys.argv[1:])
    prog = os.path.basename(sys.argv[0]) if os.path.basename(sys.argv[0]) in PROGS else "ct-train"
    if "--help" in args or "-h" in args:
        print(help_text(prog))  # (Hydra's own help, with its config dump: --hydra-help)
        return
    sys.argv = [sys.argv[0]] + args
    import hydra

    from ct_train.compose import register_configs

    register_configs()
    # Checked here only for a plain run: Hydra's flags (--cfg, -m sweeps, ...) keep Hydra's handling.
    if not any(a.startswith("-") for a in args):
        error = override_error(args)
        if error:
            if int(os.environ.get("RANK", 0)) == 0:
                print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
    app = hydra.main(version_base="1.3", config_path="pkg://ct_train.hydra_conf", config_name="config")(_run)
    app()


def score_main() -> None:
    """`ct-train-score ...` = `ct-train mode=score ...`: write the data with a difficulty per record."""
    sys.argv = [sys.argv[0], "mode=score"] + sys.argv[1:]
    main()


def bench_main() -> None:
    """`ct-train-bench [--quick] ...` = `ct-train mode=bench data=bench trainer.output_dir=outputs/bench ...`
    (the user's own data= / trainer.output_dir= win): every strategy x seeds, then report.md."""
    args = sys.argv[1:]
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    given = {a.lstrip("+").split("=", 1)[0] for a in args}
    defaults = [] if "data" in given else ["data=bench"]
    if "trainer.output_dir" not in given:
        defaults.append("trainer.output_dir=outputs/bench" + ("-quick" if quick else ""))
    sys.argv = [sys.argv[0], "mode=bench"] + defaults + (["bench.quick=true"] if quick else []) + args
    main()


def sample_main(argv: Optional[List[str]] = None) -> None:
    """`ct-train-sample OUT.jsonl`: the bundled skill suite as a JSON lines file of your own, to try
    data=jsonl and the curricula with nothing outside the checkout."""
    import argparse

    from ct_train.data.skills import DEFAULT_SUITE, write_sample

    ap = argparse.ArgumentParser(prog="ct-train-sample", description=sample_main.__doc__.split("\n")[0])
    ap.add_argument("out", help="the .jsonl file to write (refused if it exists)")
    ap.add_argument("--clusters", default=",".join(DEFAULT_SUITE), help="comma-separated skills")
    ap.add_argument("--levels", type=int, default=3, help="difficulty levels per skill")
    ap.add_argument("--per-level", type=int, default=20, help="records per skill and level")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    clusters = [c for c in args.clusters.split(",") if c]
    try:
        n = write_sample(args.out, clusters, args.levels, args.per_level, args.seed)
    except ValueError as e:
        ap.error(str(e))
    print(f"wrote {n} records ({len(clusters)} clusters x {args.levels} levels) to {args.out}")


if __name__ == "__main__":
    main()
