"""launchers/slurm.sbatch derives the rendezvous and each task's rank from SLURM's variables.

There is no SLURM here, so `srun` and `scontrol` are stand-ins on PATH that do what SLURM does for
the script: `scontrol show hostnames` lists the job's nodes, and `srun` starts SLURM_NTASKS tasks with
SLURM_PROCID / SLURM_LOCALID set. The training itself is real (2 gloo ranks, ZeRO-3)."""

import pytest

from tests.conftest import FAST, free_port, run_launcher_script
from tests.helpers import samples

pytestmark = pytest.mark.distributed

FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done  # srun's own options
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$i "$@" & pids+=($!); done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && echo 127.0.0.1
"""


def test_sbatch_script_runs_two_ranks_from_slurm_variables(tmp_path):
    out = tmp_path / "run"
    args = FAST + [
        "trainer.max_steps=2",
        "trainer.global_batch_size=8",
        "trainer.micro_batch_size=4",
        "trainer.eval_every_steps=0",
        "trainer.log_samples=true",
        f"trainer.output_dir={out}",
    ]
    proc = run_launcher_script(
        "slurm.sbatch",
        args,
        stand_ins={"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL},
        tmp_path=tmp_path,
        env={"SLURM_JOB_NODELIST": "node[1]", "SLURM_NTASKS": "2", "MASTER_PORT": str(free_port())},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ct_train: 2 rank(s)" in proc.stdout + proc.stderr
    assert [r["step"] for r in samples(out, 0)] == [r["step"] for r in samples(out, 1)] == [1, 2]
