#!/bin/bash
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
b3() { python3 -m b3core.cli "$@"; }
log() { echo "### $(date +%T) $*"; }
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3
log issue10; for cl in "" --channels-last; do
  timeout 120 b3 step --model timm/mobilenetv3_large_100 --precision fp16 --batch-size 512 --image-size 224 --device cuda $cl --json $R/timm-mnv3l-512$cl.json 2>&1 | tail -12; done
log issue11; for i in 1 2; do
  timeout 60 b3 step --model mobilenet_v3_large --precision fp16 --batch-size 128 --device cuda --json $R/plain-$i.json 2>&1 | grep -i "throughput\|step time\|first step\|samples/s"
  timeout 90 b3 step --model mobilenet_v3_large --precision fp16 --batch-size 128 --device cuda --nproc-per-node 1 --json $R/ddp-$i.json 2>&1 | grep -i "throughput\|step time\|first step\|samples/s"; done
log issue12; C=$R/c; mkdir -p $C
timeout 90 b3 sweep --model small_bn_cnn --image-size 32 --device cuda --optimizer sgd --batch-sizes 16,32,64,128,256,512 --out $C/sweep 2>&1 | tail -10
cp -r docs/results/gpu-scratch/linear $C/linear
b3 advise --sweep $C/sweep --converge $C/linear --json $C/advice.json 2>&1 | tee $C/advice.txt | tail -15
log findmax; timeout 150 b3 find-max-batch --model mobilenet_v3_large --precision fp16 --device cuda --memory-budget 10GiB --json $R/find-max-before.json 2>&1 | tail -8
log done; tar czf $OUT/results.tar.gz -C $OUT r
