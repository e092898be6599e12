#!/bin/bash
# Fourth GPU call: the guided finder fitted on the tensors' peak, both allocators.
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
b3() { python3 -m b3core.cli "$@"; }
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -3
for alloc in default expandable; do
  if [ $alloc = expandable ]; then export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; fi
  echo "### $(date +%T) $alloc"; timeout 130 b3 find-max-batch --model mobilenet_v3_large --precision fp16 --device cuda --memory-budget 10GiB --no-cudnn-benchmark --json $R/find-max-$alloc.json 2>&1 | grep -v "^  probe" | tail -9
done
