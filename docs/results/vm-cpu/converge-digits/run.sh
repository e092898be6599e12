#!/bin/bash
# The convergence study of docs/results/vm-cpu/converge-digits: small_bn_cnn on digits (16 px),
# SGD with momentum at 0.05 for batch 16, target 0.95 validation accuracy, 20 epochs, 3 seeds.
set -e
cd "$(dirname "$0")"
common=(--dataset digits --model small_bn_cnn --image-size 16 --device cpu --optimizer sgd
        --base-lr 0.05 --base-batch 16 --target-accuracy 0.95 --max-epochs 20 --seeds 3
        --resume)  # each command goes on from its saved runs
b3 converge "${common[@]}" --batch-sizes 16,64,256 --lr-rule none --out no-rule
b3 converge "${common[@]}" --batch-sizes 16,32,64,128,256,512 --lr-rule linear --out linear
b3 converge "${common[@]}" --batch-sizes 16,64,256 --lr-rule linear --ghost-batch 16 --out linear-ghost
b3 converge "${common[@]}" --batch-sizes 16,64,256 --lr-rule linear --ghost-batch 16 \
    --regime-adaptation --out linear-ghost-regime
b3 converge "${common[@]}" --batch-sizes 16,32,64,128,256,512 --lr-rule linear \
    --accumulation-steps 2 --out linear-noise-scale
