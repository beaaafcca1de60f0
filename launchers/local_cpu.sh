#!/usr/bin/env bash
# Local CPU run through the DeepSpeed launcher: NPROC ranks on this machine, gloo, ZeRO-3.
#
# Usage: launchers/local_cpu.sh [HYDRA_OVERRIDES...]
#   NPROC=2            ranks to start
#   MASTER_PORT=29500  rendezvous port (pick another if two runs share a machine)
#   THREADS            torch threads per rank (default: cores / NPROC, at least 1)
#   MODULE=ct_train    the module to run (ct_train.bench: the curriculum benchmark)
# Example: NPROC=2 launchers/local_cpu.sh trainer.max_steps=50 trainer.output_dir=outputs/demo
set -euo pipefail
NPROC=${NPROC:-2}
CORES=$(nproc 2>/dev/null || echo 2)
THREADS=${THREADS:-$(( CORES / NPROC > 0 ? CORES / NPROC : 1 ))}
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=$THREADS CUDA_VISIBLE_DEVICES=""
exec deepspeed --num_gpus "$NPROC" --master_port "${MASTER_PORT:-29500}" --no_local_rank --module "${MODULE:-ct_train}" "$@"
