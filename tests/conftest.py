"""Shared fixtures. No test reaches the network: hubs are offline and W&B runs offline."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# The Triton kernel's own code runs on CPU through Triton's interpreter where there is no GPU; the flag
# must be set before triton is first imported, which is why it is here.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The venv's bin first on PATH for this process and every one it starts: DeepSpeed JIT-builds its CPU
# shm all-reduce op with whichever `ninja` is on PATH, and a different ninja (pip's in the venv vs
# /usr/bin's) rebuilds it from scratch, ~50 s each time the two alternate.
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repo (the real public instruction files); skipped where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout (it is on the team's machines only)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    # One skill-suite cache per test session, so tests do not write into the user's ~/.cache/ct_train.
    cache = tmp_path_factory.getbasetemp() / "ct_train_cache"
    monkeypatch.setenv("CT_TRAIN_CACHE", str(cache))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(threads: int = 1, extra: dict = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    env.update(OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


def run_cli(args, *, launcher=None, nproc=1, timeout=600, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the real entry point: `python -m ct_train`, or under the deepspeed launcher / torchrun."""
    bindir = Path(sys.executable).parent
    port = str(free_port())
    if launcher is None:
        cmd = [sys.executable, "-m", "ct_train"]
    elif launcher == "deepspeed":
        cmd = [str(bindir / "deepspeed"), "--num_gpus", str(nproc), "--master_port", port, "--module", "ct_train"]
    elif launcher == "torchrun":
        cmd = [str(bindir / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", port, "-m", "ct_train"]
    else:
        raise ValueError(launcher)
    return subprocess.run(
        cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=cli_env(extra=env)
    )


def run_launcher_script(
    script: str, args, *, stand_ins: dict, tmp_path: Path, env: dict
) -> subprocess.CompletedProcess:
    """Run launchers/<script> with `stand_ins` (name -> bash text: srun, pdsh, ...) first on PATH, for
    the cluster tools this machine lacks; the launcher script, DeepSpeed and the ranks are real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.run(
        ["bash", str(REPO / "launchers" / script), *args],
        cwd=REPO,
        env=cli_env(extra={**env, "PATH": path}),
        capture_output=True,
        text=True,
        timeout=600,
    )


# Small, fast settings shared by the CLI tests: the tiny model on a reduced skill suite.
FAST_DATA = [
    "data.skills.clusters=[add,reverse,brackets,cjk_reverse]",
    "data.skills.levels=2",
    "data.skills.train_per_level=40",
    "data.skills.eval_per_level=4",
    "logger.progress_bar=false",
]
FAST = FAST_DATA + [
    "model.architecture.num_hidden_layers=2",
    "model.architecture.hidden_size=64",
    "model.architecture.intermediate_size=128",
]
