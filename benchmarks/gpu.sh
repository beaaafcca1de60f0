#!/usr/bin/env bash
# `make bench-gpu` on the GPU machine (no network there): install the carried wheels, then every issue-33
# figure in one table (benchmarks/gpu.py). Here, once, before the reservation:
#   ../shared/gpu/wheels.sh constraints.txt        # deepspeed, hydra, datasets, trl, liger-kernel -> .whl/
#   run(command="OUT=$OUT make bench-gpu", carry=[".whl"])   # the table comes back in $OUT/bench_gpu.md
# GPU_ARGS passes arguments to benchmarks/gpu.py (e.g. "--steps 8 --variants zero3,reference").
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
# shellcheck disable=SC2086
exec python3 benchmarks/gpu.py --out "${OUT:-outputs/bench-gpu}" ${GPU_ARGS:-}
