"""Checkpoints: DeepSpeed's ZeRO checkpoint plus the trainer's own state, and which one to resume.

Layout: `<output_dir>/checkpoints/step<N>/` holds DeepSpeed's files, one `rng_rank<R>.pt` per rank
and, written last, `trainer_state.json` (step, sampler, curriculum, ...). That file is written by
rank 0 only after every rank has finished writing (a barrier), to a temporary name then renamed, so
its presence marks a complete checkpoint: a save killed half-way leaves a directory without it, which
`latest_complete` never picks. DeepSpeed's own `latest` file is not used for the same reason.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from ct_train import distributed as dist
from ct_train import io
from ct_train.errors import CheckpointError, ConfigError

STATE_FILE = "trainer_state.json"
TAG_RE = re.compile(r"^step(\d+)$")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def complete_tags(ckpt_dir: str) -> List[Tuple[int, str]]:
    """(step, tag) of every complete checkpoint, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    out = []
    for name in os.listdir(ckpt_dir):
        m = TAG_RE.match(name)
        if m and os.path.isfile(os.path.join(ckpt_dir, name, STATE_FILE)):
            out.append((int(m.group(1)), name))
    return sorted(out)


def describe_latest(output_dir: str) -> str:
    """'the last complete checkpoint is stepN' (or that there is none), for messages on failure."""
    tags = complete_tags(checkpoints_dir(output_dir))
    return f"the last complete checkpoint is {tags[-1][1]}" if tags else "no checkpoint was written yet"


def resolve_resume(resume: str, output_dir: str) -> Optional[Tuple[str, str]]:
    """(checkpoints dir, tag) to resume from, or None to start fresh.

    auto: the latest complete checkpoint in the output dir, if any. never: none. Otherwise a path to
    a checkpoint (`.../checkpoints/step00000100`) or to a checkpoints directory (its latest).
    """
    if resume == "never":
        return None
    if resume == "auto":
        tags = complete_tags(checkpoints_dir(output_dir))
        return (checkpoints_dir(output_dir), tags[-1][1]) if tags else None
    path = os.path.abspath(os.path.expanduser(resume))
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return os.path.dirname(path), os.path.basename(path)
    tags = complete_tags(path) or complete_tags(os.path.join(path, "checkpoints"))
    if tags:
        base = path if complete_tags(path) else os.path.join(path, "checkpoints")
        return base, tags[-1][1]
    raise ConfigError(
        f"trainer.resume={resume}: no complete checkpoint there "
        f"(expected a directory with {STATE_FILE}, or a checkpoints directory)"
    )


def _rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _agree_ok(error: Optional[str], step: int, ckpt_dir: str) -> None:
    """Every rank learns whether any rank failed (a collective), and all raise the same error."""
    errors = [e for e in dist.all_gather_object(error) if e]
    if errors:
        previous = complete_tags(ckpt_dir)
        intact = f"the previous checkpoint {previous[-1][1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {tag_for(step)} in {ckpt_dir} ({errors[0]}); {intact}")


def save(engine: Any, output_dir: str, step: int, trainer_state: Dict[str, Any], drills: Any = None) -> str:
    """Write a complete checkpoint for `step` (a collective: every rank calls it). Returns its path.

    Each rank first checks that it can write the checkpoint directory and the ranks agree on the
    result, so an unwritable directory is one clear error on every rank instead of one rank failing
    inside DeepSpeed's save while the others wait for it. A write that fails later (disk full) is
    reported the same way after the save. `drills`: the run's `drills.FaultDrills` (kill points).
    """
    kill_point = drills.kill_point if drills is not None else (lambda name, step: None)
    ckpt_dir = checkpoints_dir(output_dir)
    tag = tag_for(step)
    path = os.path.join(ckpt_dir, tag)
    error = None
    try:
        if dist.is_main() and os.path.exists(os.path.join(path, STATE_FILE)):
            os.remove(os.path.join(path, STATE_FILE))  # being rewritten: not complete until the end
        io.make_writable_dir(path)
    except OSError as e:
        error = f"rank {dist.rank()}: {e.strerror or e}: {e.filename or path}"
    _agree_ok(error, step, ckpt_dir)
    kill_point("before_engine_save", step)
    try:
        engine.save(ckpt_dir, tag)
        kill_point("after_engine_save", step)
        torch.save(_rng_state(), os.path.join(path, f"rng_rank{dist.rank()}.pt"))
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as a RuntimeError from its zip writer; say how much room is left.
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:160]
        free_mib = shutil.disk_usage(ckpt_dir).free / 2**20
        error = f"rank {dist.rank()}: write failed: {reason}; {free_mib:.1f} MiB free there"
    _agree_ok(error, step, ckpt_dir)  # also the barrier: every rank's files are on disk before the marker
    if dist.is_main():
        with io.atomic_path(os.path.join(path, STATE_FILE)) as tmp:
            with open(tmp, "w") as f:
                json.dump(trainer_state, f)
                f.flush()
                os.fsync(f.fileno())
            kill_point("before_marker_rename", step)
    dist.barrier()
    return path


def rotate(output_dir: str, keep_last: int, protect: Iterable[Optional[str]] = ()) -> List[str]:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all), never those in
    `protect` (the checkpoint this run resumed from, the ends of curriculum stages). Incomplete
    directories older than the newest complete checkpoint are interrupted saves and go too. Rank 0
    only. Returns the deleted tags."""
    ckpt_dir = checkpoints_dir(output_dir)
    complete = complete_tags(ckpt_dir)
    if keep_last <= 0 or not complete:
        return []
    keep = {tag for _, tag in complete[-keep_last:]} | {t for t in protect if t}
    newest = complete[-1][0]
    doomed = [tag for _, tag in complete if tag not in keep]
    for name in os.listdir(ckpt_dir):
        m = TAG_RE.match(name)
        if (
            m
            and int(m.group(1)) < newest
            and name not in keep
            and not os.path.isfile(os.path.join(ckpt_dir, name, STATE_FILE))
        ):
            doomed.append(name)
    for tag in doomed:
        # The marker goes first: a deletion interrupted half-way leaves an incomplete checkpoint.
        marker = os.path.join(ckpt_dir, tag, STATE_FILE)
        if os.path.exists(marker):
            os.remove(marker)
        shutil.rmtree(os.path.join(ckpt_dir, tag), ignore_errors=True)
    return sorted(doomed)


def saved_world_size(ckpt_dir: str, tag: str) -> int:
    """How many ranks wrote the checkpoint (its ZeRO partitions are per rank)."""
    with open(os.path.join(ckpt_dir, tag, STATE_FILE)) as f:
        return int(json.load(f).get("world_size", 0))


def load(engine: Any, ckpt_dir: str, tag: str, weights_dir: Optional[str] = None) -> Dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; return the trainer state.

    `weights_dir`: where DeepSpeed's files for `tag` are, when not beside the trainer state (a
    universal checkpoint converted for another world size).
    """
    path = os.path.join(ckpt_dir, tag)
    with open(os.path.join(path, STATE_FILE)) as f:
        state = json.load(f)
    engine.load(weights_dir or ckpt_dir, tag)
    rng_file = os.path.join(path, f"rng_rank{dist.rank()}.pt")
    if os.path.isfile(rng_file):  # absent when resuming on more ranks than saved
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return state
