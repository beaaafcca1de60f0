#!/usr/bin/env bash
# torchrun instead of the DeepSpeed launcher (same program; torchrun sets RANK/LOCAL_RANK/WORLD_SIZE).
#
# Usage: launchers/torchrun.sh [HYDRA_OVERRIDES...]
#   NPROC=8          processes on this node
#   NNODES=1         nodes; on multi-node runs start this on every node with its NODE_RANK
#   NODE_RANK=0
#   MASTER_ADDR=127.0.0.1 MASTER_PORT=29500   the c10d rendezvous endpoint (the first node)
#   LOCAL_ADDR       this node's address as the others reach it (default: what its hostname resolves
#                    to); set it when the hostname resolves to a loopback or unreachable address
set -euo pipefail
extra=()
if [ -n "${LOCAL_ADDR:-}" ]; then extra+=(--local-addr "$LOCAL_ADDR"); fi
# Node 0 hosts the rendezvous store. torchrun guesses that from the hostname, which fails where the
# endpoint address is not what the hostname resolves to; say it explicitly.
is_host=0
if [ "${NODE_RANK:-0}" = 0 ]; then is_host=1; fi
exec torchrun --nnodes "${NNODES:-1}" --nproc_per_node "${NPROC:-8}" --node_rank "${NODE_RANK:-0}" \
  --rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" \
  --rdzv_conf "is_host=$is_host" "${extra[@]}" -m ct_train "$@"
