#!/usr/bin/env bash
# torchrun instead of the DeepSpeed launcher (same program; torchrun sets RANK/LOCAL_RANK/WORLD_SIZE).
#
# Usage: launchers/torchrun.sh [HYDRA_OVERRIDES...]
#   NPROC=8          processes on this node
#   NNODES=1         nodes; on multi-node runs start this on every node with its NODE_RANK
#   NODE_RANK=0
#   MASTER_ADDR=127.0.0.1 MASTER_PORT=29500   the c10d rendezvous endpoint (first node)
set -euo pipefail
exec torchrun --nnodes "${NNODES:-1}" --nproc_per_node "${NPROC:-8}" --node_rank "${NODE_RANK:-0}" \
  --rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" -m ct_train "$@"
