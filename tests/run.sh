#!/usr/bin/env bash
# Set up (launch/setup.sh: torch 2.13.0 first, then this package) and run every test.
#
#   bash tests/run.sh                 # the whole suite, as CI runs it
#   bash tests/run.sh -m "not slow"   # skip the multi-process launcher runs
#
# Extra arguments go to pytest. No GPU is needed; GPU-only tests are skipped without one.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
bash launch/setup.sh
if ! python -c "import pytest" 2> /dev/null; then
    echo "+ python -m pip install -e .[dev]   (pytest)"
    python -m pip install -e ".[dev]"
fi
export DS_ACCELERATOR="${DS_ACCELERATOR:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
echo "+ python -m pytest -q $*"
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
