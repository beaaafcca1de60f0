#!/usr/bin/env bash
# Several machines without ssh between them: run this on every node, each with its own NODE_RANK.
# The DeepSpeed launcher (--no_ssh) starts this node's ranks; all nodes meet at MASTER_ADDR:MASTER_PORT.
#
# Usage: NODE_RANK=I MASTER_ADDR=ADDR launchers/multi_node_no_ssh.sh [HYDRA_OVERRIDES...]
#   NODE_RANK    0 on the first node (the one at MASTER_ADDR), 1, 2, ... on the others (required)
#   MASTER_ADDR  address of node 0, reachable from every node (required)
#   MASTER_PORT  rendezvous port (default 29500)
#   HOSTFILE     the same file on every node: one line "hostname slots=N" per node (default ./hostfile)
#   NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME  the interface that reaches the other nodes (see README)
# trainer.output_dir must be on a filesystem every node sees.
set -euo pipefail
: "${NODE_RANK:?set NODE_RANK (0 on the first node)}"
: "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"
exec deepspeed --hostfile "${HOSTFILE:-hostfile}" --no_ssh --node_rank="$NODE_RANK" \
  --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" --no_local_rank --module ct_train "$@"
