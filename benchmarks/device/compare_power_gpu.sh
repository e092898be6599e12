#!/usr/bin/env bash
# Issue 23's GPU check, run through the device tool on a lent GPU:
# b3 compare's power with mobilenet_v3_large at batch 128 in fp16, a device-work slowdown.
# Usage (from the repository root): bash benchmarks/device/compare_power_gpu.sh OUTDIR [SLOWDOWN]
set -uo pipefail
out=${1:?output folder}
slowdown=${2:-0.03}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src"  # the image's torch runs b3 from the tree, nothing installed
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
    | tee "$out/nvidia-smi.csv"
python3 -c "import torch, b3core; print('torch', torch.__version__, 'b3', b3core.__version__)"
command -v git >/dev/null || { echo "no git here"; exit 1; }
python3 -m b3core.cli machine | tee "$out/machine.txt"
python3 benchmarks/compare_power.py --model mobilenet_v3_large --batch-size 128 --image-size 224 \
    --precision fp16 --device cuda --ballast 2048 --slowdown "$slowdown" --runs "${RUNS:-8}" \
    --compare-args "--max-time ${MAX_TIME:-20}" --out "$out/compare-power-mobilenet_v3_large-fp16" \
    2>&1 | tee "$out/compare-power.log"
