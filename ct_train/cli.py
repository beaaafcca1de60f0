"""The Hydra entry point: `ct-train`, `python -m ct_train`, and under `deepspeed`/`torchrun`;
`ct-train-score` is the same with `mode=score` (ct_train.scoring), `ct-train-bench` with `mode=bench`
(ct_train.bench).

The deepspeed launcher (without --no_local_rank) appends `--local_rank=N`, which Hydra would reject
as an override; it is stripped here before Hydra parses and LOCAL_RANK is taken from the environment
(set by every launcher) or from that argument. User errors (bad config value, bad data file, an
unwritable checkpoint) print one line on rank 0 and exit with status 2, no traceback; a run stopped
on purpose (non-finite loss) likewise with status 3; a run saved and stopped on SIGTERM/SIGUSR1
(preemption) with status 4.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from typing import List

EXIT_USER_ERROR = 2
EXIT_STOPPED = 3
EXIT_PREEMPTED = 4  # saved on a stop signal: rerun (or requeue) the same command to resume
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
    sys.argv = [sys.argv[0]] + strip_local_rank(sys.argv[1:])
    import hydra

    from ct_train.compose import register_configs

    register_configs()
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


if __name__ == "__main__":
    main()
