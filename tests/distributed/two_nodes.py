"""Two simulated nodes on one machine: network namespaces joined by a veth pair, each with its own
address, each running one rank through the DeepSpeed launcher's `--no_ssh` mode. Where namespaces
cannot be made (no root, no iproute2), or CT_TRAIN_TEST_LOOPBACK=1 asks for it, the two launches
share loopback with distinct node ranks; `mode` says which ran."""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import List, Optional

from tests.conftest import REPO, cli_env, free_port

SUBNET = "10.231.{}.{}"  # the test's own hosts, inside namespaces this test makes and removes


def _sh(*cmd) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True)


class TwoNodes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tag = uuid.uuid4().hex[:6]
        self.ns = [f"ctA{self.tag}", f"ctB{self.tag}"]
        self.veth = [f"va{self.tag}", f"vb{self.tag}"]
        self.mode = "loopback"
        self.addr = ["127.0.0.1", "127.0.0.1"]

    def __enter__(self) -> "TwoNodes":
        if (
            os.geteuid() == 0
            and shutil.which("ip")
            and not os.environ.get("CT_TRAIN_TEST_LOOPBACK")
            and self._make_namespaces()
        ):
            self.mode = "netns"
        self.port = free_port() if self.mode == "loopback" else 29531
        self.hostfile = self.tmp / "hostfile"
        self.hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
        return self

    def _make_namespaces(self) -> bool:
        net = (sum(map(ord, self.tag)) % 200) + 20
        steps = [
            ("ip", "netns", "add", self.ns[0]),
            ("ip", "netns", "add", self.ns[1]),
            ("ip", "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1]),
        ]
        for i in range(2):
            addr = SUBNET.format(net, i + 1)
            steps += [
                ("ip", "link", "set", self.veth[i], "netns", self.ns[i]),
                ("ip", "-n", self.ns[i], "addr", "add", f"{addr}/24", "dev", self.veth[i]),
                ("ip", "-n", self.ns[i], "link", "set", self.veth[i], "up"),
                ("ip", "-n", self.ns[i], "link", "set", "lo", "up"),
            ]
            self.addr[i] = addr
        for step in steps:
            if _sh(*step).returncode != 0:
                self.__exit__()
                self.addr = ["127.0.0.1", "127.0.0.1"]
                return False
        return True

    def command(self, node: int, args: List[str], launcher: str = "deepspeed") -> List[str]:
        """A shipped per-node launcher inside the node's namespace: launchers/multi_node_no_ssh.sh
        (deepspeed --no_ssh) or launchers/torchrun.sh (c10d rendezvous at node 0)."""
        env = [
            f"NODE_RANK={node}",
            f"MASTER_ADDR={self.addr[0]}",
            f"MASTER_PORT={self.port}",
            f"HOSTFILE={self.hostfile}",
            f"PATH={Path(sys.executable).parent}:{os.environ['PATH']}",
            "NNODES=2",
            "NPROC=1",
            f"LOCAL_ADDR={self.addr[node]}",
        ]
        if self.mode == "netns":
            env.append(f"GLOO_SOCKET_IFNAME={self.veth[node]}")
        script = "multi_node_no_ssh.sh" if launcher == "deepspeed" else "torchrun.sh"
        cmd = ["env", *env, "bash", str(REPO / "launchers" / script), *args]
        return ["ip", "netns", "exec", self.ns[node], *cmd] if self.mode == "netns" else cmd

    def start(
        self, node: int, args: List[str], log: Optional[Path] = None, launcher: str = "deepspeed"
    ) -> subprocess.Popen:
        out = open(log or self.tmp / f"node{node}.log", "w")
        return subprocess.Popen(
            self.command(node, args, launcher),
            cwd=REPO,
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __exit__(self, *exc) -> None:
        for ns in self.ns:
            _sh("ip", "netns", "delete", ns)
        _sh("ip", "link", "delete", self.veth[0])
