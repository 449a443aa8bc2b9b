#!/usr/bin/env bash
# The GPU check under its old name: benchmarks/gpu_check.py, which installs nothing (the
# GPU machine lent here is offline; `python -m benchmarks.gpu_prepare` makes the wheels
# and the corpus that travel with the call) and writes gpu_check.json and gpu_check.log.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py options: --dry-run, --only ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ $# -gt 0 && "$1" != -* ]]; then  # the old positional OUT_DIR
    out="$1"
    shift
    set -- --out "$out" "$@"
fi
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
