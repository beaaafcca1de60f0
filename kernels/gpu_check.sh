#!/usr/bin/env bash
# Issue 4's GPU measurements in one command, for the `device` tool's H100/H200 (no network there):
#   ../shared/gpu/wheels.sh                  # here, once: deepspeed/hydra/datasets/wandb wheels -> .whl/
#   run(command="bash kernels/gpu_check.sh", carry=[".whl"])   # there; results come back from $OUT
# Writes $OUT/gpu.txt (device), $OUT/pytest_gpu.txt (`-m gpu` kernel tests: bf16 at V=128256, both
# grad modes, with the error ratios), $OUT/ce_table.md (kernels/bench_cross_entropy.py: the issue's
# shapes, bf16, ours in both modes vs eager, torch.compile and Liger when importable).
# BENCH_ARGS overrides the benchmark's arguments (e.g. "--shapes 2048,512,32000 --iters 3").
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/gpu-check}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"; python3 -c \
    "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } | tee "$out/gpu.txt"
python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/kernels 2>&1 | tee "$out/pytest_gpu.txt" || true
# shellcheck disable=SC2086
python3 -m ct_train.kernels.bench_cross_entropy ${BENCH_ARGS:-} --out "$out/ce_table.md" 2>&1 | tee "$out/bench.txt"
