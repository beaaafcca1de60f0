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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ct_train import distributed as dist
from ct_train.errors import ConfigError

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


def save(engine: Any, output_dir: str, step: int, trainer_state: Dict[str, Any]) -> str:
    """Write a complete checkpoint for `step` (a collective: every rank calls it). Returns its path."""
    ckpt_dir = checkpoints_dir(output_dir)
    tag = tag_for(step)
    path = os.path.join(ckpt_dir, tag)
    if dist.is_main() and os.path.exists(os.path.join(path, STATE_FILE)):
        os.remove(os.path.join(path, STATE_FILE))  # being rewritten: not complete until the end
    dist.barrier()
    engine.save(ckpt_dir, tag)
    torch.save(_rng_state(), os.path.join(path, f"rng_rank{dist.rank()}.pt"))
    dist.barrier()  # every rank's files are on disk before the marker appears
    if dist.is_main():
        tmp = os.path.join(path, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(trainer_state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, STATE_FILE))
    dist.barrier()
    return path


def load(engine: Any, ckpt_dir: str, tag: str) -> Dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; return the trainer state."""
    path = os.path.join(ckpt_dir, tag)
    with open(os.path.join(path, STATE_FILE)) as f:
        state = json.load(f)
    engine.load(ckpt_dir, tag)
    rng_file = os.path.join(path, f"rng_rank{dist.rank()}.pt")
    if os.path.isfile(rng_file):  # absent when resuming on more ranks than saved
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return state
