"""All process-group plumbing in one place (nanochat's `common.py` shape).

Nothing else in ct_train calls `torch.distributed` directly. The group is created here, before
DeepSpeed sees it, from the variables every launcher we support sets (the deepspeed launcher,
torchrun, our SLURM script): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. A plain
`python -m ct_train` with none of them becomes a world of one on a free local port, because ZeRO
needs a process group even then.
"""

from __future__ import annotations

import ctypes
import datetime
import math
import os
import pickle
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, List

import numpy as np
import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only."""
    if is_main():
        print(*args, **kwargs, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when CUDA is usable, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init(timeout_s: int = 600) -> None:
    """Create the default process group (idempotent).

    `timeout_s` bounds every collective: a rank that dies makes the others fail after at most this
    long instead of hanging forever.
    """
    if is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(
        backend=backend(),
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device() if torch.cuda.is_available() else None,
    )


def shutdown(wait_for_all: bool = True) -> None:
    """Destroy the process group; after a barrier unless a rank may be gone (error paths).

    Without the barrier a rank that finishes first tears its connections down while a peer on
    another node is still closing its own, which gloo answers with an abort on that peer.
    """
    if is_initialized():
        if wait_for_all:
            barrier()
        _release_shm_buffer()
        dist.destroy_process_group()


def _release_shm_buffer() -> None:
    """Remove this rank's DeepSpeed CPU all-reduce buffer from /dev/shm.

    DeepSpeed's shared-memory all-reduce on CPU (its shm comm op) creates
    /dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank> (66 MB) per rank and
    never removes it: /dev/shm is RAM, and on a machine that runs many jobs they add up (we found 18 GB
    after a day of test runs). Every peer has long mapped it by now and a mapping outlives the name.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr and port:
        try:
            os.unlink(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank()}")
        except OSError:
            pass  # not created (a GPU run, a single process without the op) or already gone


_COMM_FAILURES = (
    "connection closed by peer",
    "connection reset",
    "timed out",
    "timeout",
    "broken pipe",
    "nccl error",
    "socket",
    "remote worker",
)


def is_comm_failure(exc: BaseException) -> bool:
    """Whether an exception from a collective means a peer rank died or the network failed.

    gloo raises a plain RuntimeError ("Connection closed by peer"), NCCL a DistBackendError, a
    collective past its timeout a DistError: recognised by type where torch has one, else by text.
    """
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(k in str(exc).lower() for k in _COMM_FAILURES)


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place SUM over ranks; returns the tensor. NCCL needs it on this rank's GPU, gloo on CPU."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (pickled; for small things like paths and decisions)."""
    if not (is_initialized() and world_size() > 1):
        return obj
    box: List[Any] = [obj]
    dist.broadcast_object_list(box, src=src, device=device() if backend() == "nccl" else None)
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    if not (is_initialized() and world_size() > 1):
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def same_on_all_ranks(obj: Any) -> bool:
    """True when every rank holds an equal (pickle-identical) object; used by tests and checks."""
    blobs = all_gather_object(pickle.dumps(obj))
    return all(b == blobs[0] for b in blobs)


WAIT_NOTE_S = 60.0  # how often a rank waiting on rank 0's start-up work says so
_main_waits = [0]


def _wait_for_main(what: str) -> None:
    """Rank 0 has finished its start-up work (call on every rank, after it). The other ranks poll the
    process group's store instead of waiting in a collective, whose timeout (trainer.dist_timeout_s)
    would crash a job whose data take rank 0 longer than that to prepare: no cliff, and a line every
    WAIT_NOTE_S says what is waited on. A rank 0 that dies still ends the wait: the launcher stops the
    job, and the store, which rank 0 hosts, fails."""
    if not (is_initialized() and world_size() > 1):
        return
    _main_waits[0] += 1
    key = f"ct_train/main_done/{_main_waits[0]}"
    store = dist.distributed_c10d._get_default_store()
    if is_main():
        store.set(key, b"1")
        return
    start, note, poll = time.monotonic(), WAIT_NOTE_S, 0.005
    while not store.check([key]):
        time.sleep(poll)
        poll = min(2 * poll, 0.5)  # (short work answers in milliseconds; long work costs few checks)
        if time.monotonic() - start >= note:
            print(
                f"ct-train: rank {rank()}: waiting for rank 0 to {what} ({note:.0f} s so far)",
                file=sys.stderr,
                flush=True,
            )
            note += WAIT_NOTE_S


def main_first(fn: Callable[[], Any], what: str = "finish its start-up work") -> Any:
    """Run `fn` on rank 0, then on the other ranks (which then hit rank 0's caches).

    If rank 0 raises a user error, every rank raises it (instead of the others waiting at a barrier
    until the collective timeout).
    """
    from ct_train.errors import UserError

    result, error = None, None
    if is_main():
        try:
            result = fn()
        except UserError as e:
            error = e
        finally:
            _wait_for_main(what)  # (rank 0: marks it done, also when fn raised)
    else:
        _wait_for_main(what)
    error = broadcast_object(error)  # also the barrier: rank 0 has finished
    if error is not None:
        raise error
    if not is_main():
        result = fn()
    return result


def on_main(fn: Callable[[], Any], what: str = "finish its start-up work") -> Any:
    """Run `fn` on rank 0 only and give its result (or its user error) to every rank."""
    from ct_train.errors import UserError

    result, error = None, None
    if is_main():
        try:
            result = fn()
        except UserError as e:
            error = e
        finally:
            _wait_for_main(what)
    else:
        _wait_for_main(what)
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def rank_micro_batches(
    indices: np.ndarray, rank: int, world_size: int, micro_batch_size: int, interleave: bool = False
) -> List[np.ndarray]:
    """The one way samples are dealt to ranks: this rank's share of `indices`, in micro-batches.

    Training (`interleave=False`): rank r takes the r-th contiguous slice of the global batch (whose
    size the ranks x micro-batch split divides), in order: the sampler's contract, and what the
    split-invariance of the objective is tested on. No-grad passes over a held-out or scored set
    (`interleave=True`): rank r takes every world_size-th sample from r, so a length-sorted order
    gives every rank similar lengths; the list is padded with empty micro-batches so that every
    rank runs the same number of forwards (ZeRO-3 gathers parameters collectively and hangs
    otherwise): a caller runs a stand-in batch for an empty one and discards it.
    """
    if not interleave:
        per_rank = len(indices) // world_size
        mine = indices[rank * per_rank : (rank + 1) * per_rank]
        return [mine[i : i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]
    mine = indices[rank::world_size]
    n_batches = math.ceil(math.ceil(len(indices) / world_size) / micro_batch_size)
    return [mine[b * micro_batch_size : (b + 1) * micro_batch_size] for b in range(n_batches)]


# --- preemption: a signal asks the run to save and stop at the next step boundary -------------------
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # SIGTERM: what SLURM/k8s send; SIGUSR1: sbatch --signal
_stop_signal = [0]
_training = [False]  # set by training_started(): the first step is under way


def install_stop_handlers() -> None:
    """SIGTERM/SIGUSR1 (and a first Ctrl-C) set a flag instead of killing the process; the trainer reads it at the step
    boundary (ranks agree on it inside the step's signal all-reduce), saves and exits. A rank also
    gets SIGTERM when the launcher that started it dies (Linux PR_SET_PDEATHSIG), so no rank runs on
    orphaned. Main thread only (Python's rule for signal handlers); idempotent."""
    if threading.current_thread() is not threading.main_thread():
        return
    _training[0] = False
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop)
    signal.signal(signal.SIGINT, _on_ctrl_c)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
        # The `deepspeed` command a user signals or closes starts a per-node launcher that starts the
        # ranks; it forwards no signal on one node, so its death is watched here too.
        runner = _deepspeed_runner()
        if runner is not None:
            watch_pids([runner])


def training_started() -> None:
    """From here a stop signal waits for the step boundary (and saves); before, it stops at once."""
    _training[0] = True


def _stop_now_if_not_training(signum: int) -> None:
    """Before training starts there is nothing to save: stop at once (a start can wait minutes on
    data, a build lock or a download, and a flag read at step boundaries would not be read)."""
    if not _training[0]:
        from ct_train.errors import Preempted

        raise Preempted(
            f"{signal.Signals(signum).name} before training started: nothing to save; run the same command to start"
        )


def _on_stop(signum: int, frame: Any) -> None:
    _stop_signal[0] = signum
    _stop_now_if_not_training(signum)


def _on_ctrl_c(signum: int, frame: Any) -> None:
    """Ctrl-C (SIGINT) saves and stops at the next step boundary, as SIGTERM does; a second Ctrl-C
    aborts at once without saving (Python's KeyboardInterrupt), for a step that will not end. Before
    training starts it stops at once."""
    _stop_now_if_not_training(signum)
    if _stop_signal[0] == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    _stop_signal[0] = int(signal.SIGINT)
    if is_main():
        print(
            "\nct-train: Ctrl-C: saving a checkpoint at the end of this step, then stopping "
            "(Ctrl-C again aborts without saving)",
            file=sys.stderr,
            flush=True,
        )


def _proc(pid: int, what: str) -> str:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _deepspeed_runner() -> Any:
    """The pid of the `deepspeed` runner above this rank's launcher (deepspeed.launcher.launch), or None."""
    parent = os.getppid()
    if "deepspeed.launcher.launch" not in _proc(parent, "cmdline").replace("\0", " "):
        return None
    stat = _proc(parent, "stat")
    fields = stat.rsplit(")", 1)[-1].split()  # (the command name may hold spaces: cut after it)
    grandparent = int(fields[1]) if len(fields) > 1 else 0
    return grandparent if grandparent > 1 and "deepspeed" in _proc(grandparent, "cmdline") else None


def watch_pids(pids: List[int], interval_s: float = 1.0) -> threading.Thread:
    """A daemon thread that raises the stop flag (as SIGTERM) once any of `pids` is gone: the run
    then saves at the next step boundary and exits, instead of training on with nobody to report to."""

    def watch() -> None:
        while not _stop_signal[0]:
            if any(not os.path.exists(f"/proc/{pid}") or _proc(pid, "stat").split(") ")[-1][:1] == "Z" for pid in pids):
                _stop_signal[0] = int(signal.SIGTERM)
                return
            time.sleep(interval_s)

    thread = threading.Thread(target=watch, name="ct_train-launcher-watch", daemon=True)
    thread.start()
    return thread


def stop_requested() -> int:
    """The stop signal this rank received (0: none)."""
    return _stop_signal[0]


def restore_default_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own: KeyboardInterrupt
    _stop_signal[0] = 0
    _training[0] = False
