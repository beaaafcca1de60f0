"""Preemption: SIGTERM (what SLURM and Kubernetes send) makes the run save at the next step boundary
and exit 4; the same command resumes with no step lost. On 2 ranks the signal reaches ONE rank: the
ranks agree on it inside the step's signal all-reduce, so both save the same step."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, REPO, cli_env, free_port, run_cli
from tests.helpers import train_rows

pytestmark = pytest.mark.distributed

ARGS = FAST + [
    "trainer.max_steps=20",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=4",
    "trainer.eval_every_steps=0",
    "trainer.save_every_steps=0",  # only the preemption saves
    "trainer.export_final=false",
    "trainer.log_samples=true",
]


def _start(args, nproc):
    bindir = Path(sys.executable).parent
    if nproc == 1:
        cmd = [sys.executable, "-m", "ct_train"]
    else:
        cmd = [str(bindir / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port())]
        cmd += ["--module", "ct_train"]
    return subprocess.Popen(
        cmd + args, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rank_pid(out: Path, rank: int) -> int:
    """The pid of the training process of `rank` (its environment says RANK=<rank>) for this run."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        launcher = any(b"deepspeed" in part and b"launch" in part for part in cmdline)
        if f"trainer.output_dir={out}".encode() in cmdline and not launcher and f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no rank {rank} process for {out}")


def _wait_for_step(out: Path, step: int, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(s >= step for s in train_rows(out)) if (out / "metrics.jsonl").exists() else False:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {step}")


def _stop_at_step_3(args, nproc, sig, target):
    """Start the run, send `sig` to the process `target(proc)` names once step 3 is logged, wait."""
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("trainer.output_dir=")))
    proc = _start(args, nproc)
    try:
        _wait_for_step(out, 3, proc)
        os.kill(target(proc), sig)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, stdout, stderr


# 1 rank in make test-slow (marker `extended`): the 2-rank case covers the same save-and-resume path
# and the agreement between ranks, within make test's 20-minute budget.
@pytest.mark.parametrize("nproc", [pytest.param(1, marks=pytest.mark.extended), 2])
def test_sigterm_saves_at_the_step_boundary_and_the_same_command_resumes_with_no_lost_step(tmp_path, nproc):
    out = tmp_path / "run"
    args = ARGS + [f"trainer.output_dir={out}"]
    target = (lambda p: p.pid) if nproc == 1 else (lambda p: _rank_pid(out, 1))  # 2 ranks: only rank 1 is told
    proc, stdout, stderr = _stop_at_step_3(args, nproc, signal.SIGTERM, target)
    log = stdout + stderr
    assert proc.returncode == 4, log[-3000:]
    stopped = [line for line in stderr.splitlines() if line.startswith("ct-train: stopped: SIGTERM at step ")]
    assert len(stopped) == 1 and "saved in" in stopped[0] and "Traceback" not in log, log[-3000:]
    at = int(stopped[0].split("at step ")[1].split(":")[0])
    assert 3 <= at < 20
    assert (out / "checkpoints" / f"step{at:08d}" / "trainer_state.json").exists()
    assert sorted(train_rows(out)) == list(range(1, at + 1))  # every step up to the save, none after

    again = run_cli(args, launcher=None if nproc == 1 else "deepspeed", nproc=nproc)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {at}" in again.stdout + again.stderr and "resumed from" in again.stdout + again.stderr
    assert sorted(train_rows(out)) == list(range(1, 21))  # no step lost, none twice


def test_ctrl_c_saves_like_sigterm_on_one_rank_and_the_same_command_resumes(tmp_path):
    """Issue 34: a person at a terminal presses Ctrl-C (SIGINT to the process): one line, a checkpoint
    at the step boundary, exit 4, no KeyboardInterrupt traceback; the same command resumes."""
    out = tmp_path / "run"
    args = ARGS + [f"trainer.output_dir={out}"]
    proc, stdout, stderr = _stop_at_step_3(args, 1, signal.SIGINT, lambda p: p.pid)
    log = stdout + stderr
    assert proc.returncode == 4, log[-3000:]
    assert "ct-train: Ctrl-C: saving a checkpoint at the end of this step" in stderr and "Traceback" not in log
    stopped = [line for line in stderr.splitlines() if line.startswith("ct-train: stopped: SIGINT at step ")]
    assert len(stopped) == 1, log[-3000:]
    at = int(stopped[0].split("at step ")[1].split(":")[0])
    assert (out / "checkpoints" / f"step{at:08d}" / "trainer_state.json").exists()
    again = run_cli(args)
    assert again.returncode == 0 and "resumed from" in again.stdout + again.stderr, again.stderr[-3000:]
    assert sorted(train_rows(out)) == list(range(1, 21))


def test_ctrl_c_at_a_terminal_saves_a_two_rank_run_under_the_deepspeed_launcher(tmp_path):
    """Issue 34: Ctrl-C reaches the terminal's whole process group: the deepspeed runner (which dies
    of it), its launch.py (which SIGTERMs the ranks and SIGKILLs them 30 s later) and both ranks. The
    ranks save at the step boundary well inside those 30 s, one stop line; resuming is the SIGTERM
    test's path."""
    out = tmp_path / "run"
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "ct_train"]
    proc = subprocess.Popen(
        cmd + ARGS + [f"trainer.output_dir={out}"], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_step(out, 3, proc)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = stdout + stderr
    stopped = [line for line in log.splitlines() if line.startswith("ct-train: stopped: ")]
    assert len(stopped) == 1 and "saved in" in stopped[0], log[-3000:]
    at = int(stopped[0].split("at step ")[1].split(":")[0])
    assert 3 <= at < 20 and (out / "checkpoints" / f"step{at:08d}" / "trainer_state.json").exists()
    assert sorted(train_rows(out)) == list(range(1, at + 1))


def test_a_second_ctrl_c_aborts_without_waiting_for_the_step():
    from ct_train import distributed as dist
    from ct_train.errors import Preempted

    try:
        with pytest.raises(Preempted, match="SIGINT before training started: nothing to save"):
            dist._on_ctrl_c(signal.SIGINT, None)  # before training: nothing to save, stop at once
        dist.training_started()
        dist._on_ctrl_c(signal.SIGINT, None)  # in training, the first: a flag, no exception
        assert dist.stop_requested() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            dist._on_ctrl_c(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        dist.restore_default_signals()
    assert dist.stop_requested() == 0
