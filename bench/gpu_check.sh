#!/usr/bin/env bash
# Every check that needs CUDA, in one call on a GPU machine (bench/gpu_wheels.sh first, here):
# the gpu-marked tests, then the CUDA table of bench_pipeline (batch 1/8/32/64, fp32/bf16,
# compile) and bench_model. About 6 minutes on an H100; output under $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
status=0
timeout 180 python3 -m pytest -q -p no:cacheprovider -m gpu tests/deeplab/test_models.py \
  tests/deeplab/test_predictor.py 2>&1 | tee "$out/tests.txt" || status=1
timeout 240 python3 bench/bench_pipeline.py --device cuda --images 64 --rounds 2 2>&1 \
  | tee "$out/bench_pipeline.txt" || status=1
timeout 90 python3 bench/bench_model.py --device cuda 2>&1 | tee "$out/bench_model.txt" || status=1
exit "$status"
