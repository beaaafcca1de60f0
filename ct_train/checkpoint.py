"""Checkpoints: DeepSpeed's ZeRO checkpoint plus the trainer's own state, and which one to resume.

Layout: `<output_dir>/checkpoints/step<N>/` holds DeepSpeed's files, one `rng_rank<R>.json` per rank
and, written last, `trainer_state.json` (step, sampler, curriculum, ..., and the manifest: size and
sha256 of every other file). That file is written by rank 0 only after every rank has finished
writing (a barrier), to a temporary name then renamed, so its presence marks a complete checkpoint: a
save killed half-way leaves a directory without it, which `complete_tags` never lists. DeepSpeed's
own `latest` file is not used for the same reason.

Before a checkpoint is loaded its files are checked against the manifest. With `trainer.resume=auto`
a damaged newest checkpoint (a file missing, truncated or changed, an unreadable state file) is moved
aside to `step<N>.damaged` (kept, never picked again) and the previous complete one is used, with a
warning naming both; a damaged checkpoint named explicitly is a one-line error. Our own state holds
no pickle (JSON); DeepSpeed's files are still read by DeepSpeed's own loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

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
    return _explicit_checkpoint(resume)


def pick_resume(resume: str, output_dir: str) -> Tuple[Optional[Tuple[str, str]], List[str]]:
    """`resolve_resume` with every candidate checked first (rank 0 only: it reads every file):
    (checkpoint, warnings). With auto, a damaged newest checkpoint is moved aside to
    `<tag>.damaged` and the previous complete one is taken; a damaged one named explicitly is a
    CheckpointError. Returns the choice and the warnings for the log."""
    notes: List[str] = []
    while True:
        choice = resolve_resume(resume, output_dir)
        if choice is None:
            return None, notes
        why = damage(*choice)
        if why is None:
            return choice, notes
        if resume != "auto":
            raise CheckpointError(f"trainer.resume={resume}: checkpoint {choice[1]} is damaged: {why}")
        aside = _move_aside(*choice, ".damaged", f"is damaged ({why})")
        notes.append(
            f"warning: checkpoint {choice[1]} is damaged ({why}); moved to {aside}, resuming from the one before"
        )


def _move_aside(ckpt_dir: str, tag: str, suffix: str, why: str) -> str:
    """Rename checkpoint `tag` to `<tag><suffix>` (kept, never picked again); a directory that cannot
    be renamed (read-only) is one CheckpointError, since the run could not save there either."""
    aside = os.path.join(ckpt_dir, tag + suffix)
    try:
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(os.path.join(ckpt_dir, tag), aside)
    except OSError as e:
        raise CheckpointError(
            f"checkpoint {tag} {why} and could not be moved to {tag}{suffix} ({e.strerror or e}: {ckpt_dir}); "
            "make that directory writable (the run saves there too), or name an earlier checkpoint with "
            "trainer.resume=PATH and another trainer.output_dir"
        ) from None
    return aside


def _explicit_checkpoint(resume: str) -> Tuple[str, str]:
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


def rng_state() -> Dict[str, Any]:
    """This process's generators as plain JSON (no pickle: a checkpoint must not be able to run code)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _payload_files(path: str) -> List[str]:
    """Every file of a checkpoint directory but the state file (paths relative to it, sorted)."""
    out = []
    for d, _, files in os.walk(path):
        for name in files:
            rel = os.path.relpath(os.path.join(d, name), path)
            if not rel.startswith("trainer_state."):  # the state file and its temporary names
                out.append(rel)
    return sorted(out)


def manifest(path: str) -> Dict[str, List[Any]]:
    """{file: [size, sha256]} of a written checkpoint; the ranks hash disjoint shares (a collective)."""
    files = _payload_files(path)
    mine = {rel: [os.path.getsize(os.path.join(path, rel)), _sha256(os.path.join(path, rel))]
            for rel in files[dist.rank() :: dist.world_size()]}  # fmt: skip
    return {k: v for part in dist.all_gather_object(mine) for k, v in part.items()}


def damage(ckpt_dir: str, tag: str) -> Optional[str]:
    """Why the checkpoint cannot be trusted (a file missing, of another size or content, a state file
    that is not JSON), or None. A checkpoint from before manifests is only checked for its state."""
    path = os.path.join(ckpt_dir, tag)
    try:
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} unreadable ({str(e).splitlines()[0][:120]})"
    if not isinstance(state, dict) or "trainer" not in state:
        return f"{STATE_FILE} is not a trainer state"
    for rel, (size, sha) in (state.get("manifest") or {}).items():
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            return f"{rel} is missing"
        if os.path.getsize(file) != size:
            return f"{rel} has {os.path.getsize(file)} bytes, {size} were written"
        if _sha256(file) != sha:
            return f"{rel} differs from what was written (sha256)"
    return None


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
        with open(os.path.join(path, f"rng_rank{dist.rank()}.json"), "w") as f:
            json.dump(rng_state(), f)
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as a RuntimeError from its zip writer; say how much room is left.
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:160]
        free_mib = shutil.disk_usage(ckpt_dir).free / 2**20
        error = f"rank {dist.rank()}: write failed: {reason}; {free_mib:.1f} MiB free there"
    _agree_ok(error, step, ckpt_dir)  # also the barrier: every rank's files are on disk before the marker
    trainer_state = {**trainer_state, "manifest": manifest(path)}
    if dist.is_main():
        with io.atomic_path(os.path.join(path, STATE_FILE)) as tmp:
            with open(tmp, "w") as f:
                json.dump(trainer_state, f)
                f.flush()
                os.fsync(f.fileno())
            kill_point("before_marker_rename", step)
    dist.barrier()
    return path


def _size(num: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num < 1000 or unit == "GB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    raise AssertionError


def size_note(ckpt_dir: str, tag: str, keep: int, saves_left: int) -> List[str]:
    """After a run's first save: how big a checkpoint is, and a warning when the disk cannot hold the
    ones still to come: with `keep` (0: all), at most keep + 1 exist at once (a save is written before
    rotation deletes the oldest), or every one. Rank 0."""
    path = os.path.join(ckpt_dir, tag)
    size = sum(os.path.getsize(os.path.join(path, rel)) for rel in _payload_files(path) + [STATE_FILE])
    held = len(complete_tags(ckpt_dir))
    peak = held + saves_left if keep <= 0 else max(held, min(keep + 1, held + saves_left))
    more, free = (peak - held) * size, shutil.disk_usage(ckpt_dir).free
    kept = f"the newest {keep} kept" if keep > 0 else "every one kept"
    lines = [f"checkpoint {tag}: {_size(size)} ({kept}; {_size(free)} free in {ckpt_dir})"]
    if more > free:
        lines.append(
            f"warning: the {saves_left} checkpoint(s) still to save need about {_size(more)} more in {ckpt_dir} but "
            f"{_size(free)} is free: lower trainer.keep_last_checkpoints (now {keep or 'all'}), raise "
            "trainer.save_every_steps, or free space"
        )
    return lines


def set_aside_newer(ckpt_dir: str, tag: str) -> List[str]:
    """A run resumed from `tag` abandons the checkpoints after it (an earlier attempt's future): they
    are moved to `<tag>.abandoned` (kept, never picked by auto, never rotated). Rank 0 only."""
    step = int(TAG_RE.match(tag).group(1))
    moved = []
    for s, newer in complete_tags(ckpt_dir):
        if s > step:
            _move_aside(ckpt_dir, newer, ".abandoned", f"is newer than {tag}, the one resumed from,")
            moved.append(newer)
    return moved


# What a save writes into a checkpoint directory: DeepSpeed's model/optimizer partitions (.pt), its
# recovery script, our RNG states and the state file with its temporary names.
SAVED_FILE_RE = re.compile(r"^(.*\.pt|zero_to_fp32\.py|rng_rank\d+\.json|trainer_state\.json.*)$")


class Rotation(NamedTuple):
    deleted: List[str]  # tags deleted
    foreign: List[str]  # step directories left alone: they hold files no save writes


def _foreign_files(path: str) -> List[str]:
    return sorted(rel for rel in _payload_files(path) if not SAVED_FILE_RE.match(os.path.basename(rel)))


def rotate(output_dir: str, keep_last: int, protect: Iterable[Optional[str]] = ()) -> Rotation:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all), never those in
    `protect` (the checkpoint this run resumed from, the ends of curriculum stages). Incomplete
    directories older than the newest complete checkpoint are interrupted saves and go too, but only
    when every file in them is one a save writes: a `step<N>/` holding anything else (a symlinked
    `checkpoints/` shared with other work) was not written by us and is left, named. Rank 0 only."""
    ckpt_dir = checkpoints_dir(output_dir)
    complete = complete_tags(ckpt_dir)
    if keep_last <= 0 or not complete:
        return Rotation([], [])
    keep = {tag for _, tag in complete[-keep_last:]} | {t for t in protect if t}
    newest = complete[-1][0]
    doomed = [tag for _, tag in complete if tag not in keep]
    foreign = []
    for name in os.listdir(ckpt_dir):
        m = TAG_RE.match(name)
        if (
            m
            and int(m.group(1)) < newest
            and name not in keep
            and not os.path.isfile(os.path.join(ckpt_dir, name, STATE_FILE))
        ):
            (foreign if _foreign_files(os.path.join(ckpt_dir, name)) else doomed).append(name)
    for tag in doomed:
        # The marker goes first: a deletion interrupted half-way leaves an incomplete checkpoint.
        marker = os.path.join(ckpt_dir, tag, STATE_FILE)
        if os.path.exists(marker):
            os.remove(marker)
        shutil.rmtree(os.path.join(ckpt_dir, tag), ignore_errors=True)
    return Rotation(sorted(doomed), sorted(foreign))


def content_key(ckpt_dir: str, tag: str) -> str:
    """A short key naming exactly this checkpoint: its real path and the bytes of its trainer_state.json,
    whose manifest holds the sha256 of every other file. Another checkpoint with the same tag (another
    run's, or step N rewritten after resuming an older one) gets another key."""
    path = os.path.realpath(os.path.join(ckpt_dir, tag))
    digest = hashlib.sha256(path.encode())
    with open(os.path.join(path, STATE_FILE), "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()[:16]


def saved_world_size(ckpt_dir: str, tag: str) -> int:
    """How many ranks wrote the checkpoint (its ZeRO partitions are per rank)."""
    with open(os.path.join(ckpt_dir, tag, STATE_FILE)) as f:
        return int(json.load(f).get("world_size", 0))


def load(engine: Any, ckpt_dir: str, tag: str, weights_dir: Optional[str] = None) -> Dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; return the trainer state (checked by
    `pick_resume` first).

    `weights_dir`: where DeepSpeed's files for `tag` are, when not beside the trainer state (a
    universal checkpoint converted for another world size).
    """
    path = os.path.join(ckpt_dir, tag)
    with open(os.path.join(path, STATE_FILE)) as f:
        state = json.load(f)
    try:
        engine.load(weights_dir or ckpt_dir, tag)
    except (OSError, RuntimeError, KeyError, ValueError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}") from None
    rng_file = os.path.join(path, f"rng_rank{dist.rank()}.json")
    if os.path.isfile(rng_file):  # absent when resuming on more ranks than saved (or an old .pt: not read)
        with open(rng_file) as f:
            set_rng_state(json.load(f))
    return state
