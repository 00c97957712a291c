#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent machine: GPU-marked tests, then the GPU benchmark.
# Results land in $OUT (default ./gpu_out). Wheels for packages the machine lacks may sit in .whl/.
#   bash bench/gpu_check.sh [tests|bench|all]
set -u
what=${1:-all}
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
python3 - > "$OUT/versions.txt" 2>&1 <<'PY'
import importlib
for name in ("torch", "lightning", "transformers", "datasets", "deepspeed", "torchmetrics", "jsonargparse"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as err:  # a missing package is a finding, not a stop
        print(name, "unavailable:", type(err).__name__, err)
PY
cat "$OUT/gpu.txt" "$OUT/versions.txt"
if [ "$what" != bench ]; then
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu tests/test_gpu.py -rA 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
fi
if [ "$what" != tests ]; then
  timeout "${BENCH_TIMEOUT:-330}" python3 bench/throughput.py --preset gpu --repeat "${REPEAT:-1}" \
    --runners raw,transformers,hf_lightning,hf_lightning-native,hf_lightning-fsdp,hf_lightning-deepspeed \
    --output "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
fi
