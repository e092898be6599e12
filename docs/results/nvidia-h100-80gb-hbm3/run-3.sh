#!/bin/bash
# Third GPU call: issue 13's telemetry and finder on the H100.
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
b3() { python3 -m b3core.cli "$@"; }
log() { echo "### $(date +%T) $*"; }
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3
log tests; timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_telemetry.py tests/test_training.py -k "cuda or gpu or nvml or throttl or machine" 2>&1 | tail -3
log step128; timeout 150 b3 step --model mobilenet_v3_large --precision fp16 --batch-size 128 --device cuda --repeats 100 --json $R/step-128.json 2>&1 | tail -14
log step512; timeout 150 b3 step --model mobilenet_v3_large --precision fp16 --batch-size 512 --device cuda --repeats 30 --discard-throttled --json $R/step-512.json 2>&1 | tail -14
for alloc in default expandable; do
  if [ $alloc = expandable ]; then export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; fi
  log findmax-$alloc; timeout 120 b3 find-max-batch --model mobilenet_v3_large --precision fp16 --device cuda --memory-budget 10GiB --no-cudnn-benchmark --json $R/find-max-$alloc.json 2>&1 | tail -16
done
unset PYTORCH_CUDA_ALLOC_CONF
log findmax-bisect; timeout 150 b3 find-max-batch --model mobilenet_v3_large --precision fp16 --device cuda --memory-budget 10GiB --no-cudnn-benchmark --search bisect --json $R/find-max-bisect.json 2>&1 | tail -5
log done; tar czf $OUT/results.tar.gz -C $OUT r
