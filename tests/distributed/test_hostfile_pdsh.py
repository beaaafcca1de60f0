"""launchers/multi_node_hostfile.sh: the DeepSpeed launcher reads the hostfile, checks ssh to the first
host and starts `deepspeed.launcher.launch` on every host through pdsh with `--node_rank=%n`.

There is no sshd or pdsh here, so both are stand-ins on PATH: `ssh HOST hostname` answers the launcher's
reachability check, and `pdsh -w node0,node1 CMD` runs CMD once per host on this machine with `%n`
replaced by the host's index (what pdsh does on each node). Everything else is real: DeepSpeed's
multi-node runner builds the command, each "node" runs its launcher and one gloo rank, ZeRO-3 trains."""

import pytest

from tests.conftest import FAST, free_port, run_launcher_script
from tests.helpers import samples, train_rows

pytestmark = pytest.mark.distributed

FAKE_PDSH = """#!/usr/bin/env bash
# pdsh -S -f FANOUT -w host1,host2 CMD...: CMD per host, %n = the host's index, exit = the worst status.
hosts=""
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in -w) hosts="$2"; shift 2 ;; -f) shift 2 ;; *) shift ;; esac
done
echo "pdsh hosts=$hosts" >> "$PDSH_LOG"
IFS=, read -ra list <<< "$hosts"
pids=()
for i in "${!list[@]}"; do cmd="$*"; bash -c "${cmd//%n/$i}" & pids+=($!); done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
"""
FAKE_SSH = """#!/usr/bin/env bash
echo "ssh $*" >> "$PDSH_LOG"; [ "${@: -1}" = hostname ] && echo "${@: -2:1}"; exit 0
"""


# make test-slow (marker `extended`): kept out of make test's 20-minute budget
@pytest.mark.extended
def test_hostfile_launcher_starts_every_node_through_pdsh(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes, one slot each\nnode0 slots=1\nnode1 slots=1\n")
    log = tmp_path / "pdsh.log"
    out = tmp_path / "run"
    args = FAST + [
        "trainer.max_steps=2",
        "trainer.global_batch_size=8",
        "trainer.micro_batch_size=4",
        "trainer.eval_every_steps=0",
        "trainer.export_final=false",
        "trainer.log_samples=true",
        f"trainer.output_dir={out}",
    ]
    env = {
        "HOSTFILE": str(hostfile),
        "MASTER_ADDR": "127.0.0.1",  # node0's address (the names are pdsh targets only)
        "MASTER_PORT": str(free_port()),
        "PDSH_LOG": str(log),
    }
    proc = run_launcher_script(
        "multi_node_hostfile.sh", args, stand_ins={"pdsh": FAKE_PDSH, "ssh": FAKE_SSH}, tmp_path=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = log.read_text().splitlines()
    assert "ssh -o PasswordAuthentication=no node0 hostname" in calls  # DeepSpeed's reachability check
    assert "pdsh hosts=node0,node1" in calls
    assert "2 rank(s)" in proc.stdout + proc.stderr
    assert sorted(train_rows(out)) == [1, 2]
    ranks = [samples(out, r) for r in (0, 1)]
    assert [len(s) for s in ranks] == [2, 2]
    ids = [set(rec["ids"]) for s in ranks for rec in s if rec["step"] == 1]
    assert len(ids[0]) == len(ids[1]) == 4 and not ids[0] & ids[1]  # each node trained its own half
