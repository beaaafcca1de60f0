#!/usr/bin/env bash
# One machine, all (or NGPUS) GPUs, through the DeepSpeed launcher (NCCL, bf16 where supported).
#
# Usage: launchers/single_node_gpu.sh [HYDRA_OVERRIDES...]
#   NGPUS        GPUs to use (default: every GPU nvidia-smi lists)
#   MASTER_PORT  rendezvous port (default 29500)
# Example: NGPUS=8 launchers/single_node_gpu.sh model=llama3_8b model.path=/models/Meta-Llama-3-8B \
#            data=jsonl data.path=/data/mix.jsonl deepspeed=zero3 logger=wandb
set -euo pipefail
NGPUS=${NGPUS:-$(nvidia-smi -L | wc -l)}
exec deepspeed --num_gpus "$NGPUS" --master_port "${MASTER_PORT:-29500}" --no_local_rank --module ct_train "$@"
