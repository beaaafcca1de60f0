#!/usr/bin/env bash
# Several machines from one command: the DeepSpeed launcher reaches every host of HOSTFILE over
# pdsh/ssh (passwordless ssh between nodes, same path to this repo and its .venv on each).
#
# Usage: launchers/multi_node_hostfile.sh [HYDRA_OVERRIDES...]
#   HOSTFILE     lines "hostname slots=GPUS" (default ./hostfile)
#   MASTER_ADDR  address of the first host, reachable from all (default: first host in HOSTFILE)
#   MASTER_PORT  rendezvous port (default 29500)
#   NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME  the network interface to use (see README, "Cluster runs")
# trainer.output_dir must be on a filesystem every node sees (checkpoints are written by all ranks).
# Without ssh between nodes, use launchers/multi_node_no_ssh.sh on each node instead.
set -euo pipefail
HOSTFILE=${HOSTFILE:-hostfile}
MASTER_ADDR=${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  --no_local_rank --module ct_train "$@"
