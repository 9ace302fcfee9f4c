#!/usr/bin/env bash
# Every CUDA/Triton check plus the GPU timings, in one go (about 8 minutes at most on one GPU).
# Writes $OUT_DIR/gpu-check.{json,md} and pytest's gpu-tests.xml; docs/gpu.md is written from them.
# Without a GPU the CUDA tests skip and the Triton-interpreter tests run wherever Triton is installed.
#   scripts/gpu-check.sh [OUT_DIR]   (default $OUT, else /tmp/tokeff-gpu-check; PYTHON overrides the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp/tokeff-gpu-check}}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 360 "$PYTHON" -m pytest -m gpu tests/test_gpu.py tests/test_kvquant_kernels.py -v -p no:cacheprovider \
    --junitxml="$OUT_DIR/gpu-tests.xml"
tests_rc=$?
timeout 150 "$PYTHON" benchmarks/gpu/timings.py --out "$OUT_DIR" --junit "$OUT_DIR/gpu-tests.xml"
timings_rc=$?
echo "gpu-check: tests exit $tests_rc, timings exit $timings_rc; results in $OUT_DIR" >&2
[ "$tests_rc" -eq 0 ] && [ "$timings_rc" -eq 0 ]
