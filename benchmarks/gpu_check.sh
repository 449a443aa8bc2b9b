#!/usr/bin/env bash
# Everything that needs a GPU, in one run (for a session lent a GPU machine):
# the CUDA tests, then the benchmarks at BERT-base seq 128 in bf16 with compiled layers.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Prints each benchmark's numbers and keeps the logs under OUT_DIR [gpu_check/].
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-$REPO_DIR/gpu_check}"
mkdir -p "$OUT_DIR"
cd "$REPO_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
bash launch/setup.sh > "$OUT_DIR/setup.log" 2>&1 || { tail -20 "$OUT_DIR/setup.log"; exit 1; }

run() {
    local name="$1"; shift
    echo "+ $*"
    "$@" 2>&1 | tee "$OUT_DIR/$name.log"
}

run tests python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
run pld_speedup python -m benchmarks.pld_speedup --bf16 --compile-layers --batch-size 64
run vs_huggingface python -m benchmarks.vs_huggingface --bf16 --batch-size 64
run vs_huggingface_compiled python -m benchmarks.vs_huggingface --bf16 --batch-size 64 --compile-layers --compile-hf
run data_loader python -m benchmarks.data_loader --batch-size 64
