# Shared by the launch scripts (sourced, not run): checks that fail with a clear message,
# printing the command before running it, and stopping training with a checkpoint.

die() {
    echo "error: $*" >&2
    exit 2
}

# require_var NAME [HINT]: NAME must be set and non-empty.
require_var() {
    if [[ -z "${!1:-}" ]]; then
        die "$1 is not set${2:+ ($2)}"
    fi
}

require_file() {
    [[ -f "$1" ]] || die "$2 $1 does not exist (or is not a file)"
}

require_dir() {
    [[ -d "$1" ]] || die "$2 $1 does not exist (or is not a directory)"
}

# The package must be importable (pip install -e . or PYTHONPATH); checked without
# importing it, which would take seconds.
require_package() {
    "${PYTHON:-python}" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('bing_bert_pld') is None)" \
        || die "the bing_bert_pld package is not importable by ${PYTHON:-python}: run 'bash launch/setup.sh' (or set PYTHONPATH to the repository root)"
}

# A shard set as data_prep writes it: DIR/train with *.hdf5 files, and DIR/validation
# when the set has a validation split (data_prep --validation-fraction 0 writes none).
require_shards() {
    local split
    for split in train validation; do
        [[ "$split" == validation && ! -e "$1/$split" ]] && continue
        require_dir "$1/$split" "$2 split"
        compgen -G "$1/$split/*.hdf5" > /dev/null || die "$2 split $1/$split has no *.hdf5 shards"
    done
}

# shard_set_args DIR: the trainer's data flags for a shard set checked by require_shards,
# into the array SHARD_SET_ARGS (--val_dir only when the set has a validation split).
shard_set_args() {
    SHARD_SET_ARGS=(--train_dir "$1/train")
    if [[ -d "$1/validation" ]]; then
        SHARD_SET_ARGS+=(--val_dir "$1/validation")
    fi
}

print_cmd() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
}

# Number of GPUs on this machine (0 without nvidia-smi).
count_gpus() {
    if command -v nvidia-smi > /dev/null 2>&1; then
        nvidia-smi --list-gpus 2> /dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

# run_forwarding_stop FORWARDER CMD...: run CMD in the background; on SIGUSR1 or SIGTERM
# to this script, call FORWARDER with CMD's pid (it asks the training ranks to save a
# checkpoint at the next step boundary and exit 0), then keep waiting. Returns CMD's
# exit status. STOP_SIGNAL holds the signal received, if any.
# shellcheck disable=SC2034  # read by the scripts that source this file
STOP_SIGNAL=""
run_forwarding_stop() {
    local forwarder="$1"
    shift
    "$@" &
    local pid=$!
    trap 'STOP_SIGNAL=USR1; "$forwarder" "$pid" USR1' USR1
    trap 'STOP_SIGNAL=TERM; "$forwarder" "$pid" TERM' TERM
    local status=0
    while true; do
        status=0
        wait "$pid" || status=$?
        # wait returns early (status > 128) when a trapped signal arrives.
        if kill -0 "$pid" 2> /dev/null; then
            continue
        fi
        break
    done
    trap - USR1 TERM
    return "$status"
}

# Forwarder for the deepspeed launcher on this node: runner -> deepspeed.launcher.launch
# -> one process per rank. SIGUSR1 goes to the ranks only: the launcher itself kills
# its ranks on SIGTERM without letting them save.
signal_local_ranks() {
    local runner="$1" launch
    echo "received SIG$2: asking the ranks to save a checkpoint and stop" >&2
    for launch in $(pgrep -P "$runner" || true); do
        pkill -USR1 -P "$launch" || true
    done
}

# Forwarder for a child launch script: it forwards to its own ranks.
signal_child_script() {
    echo "received SIG$2: passing it on" >&2
    kill -USR1 "$1" 2> /dev/null || true
}
