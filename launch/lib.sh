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

# ------------------------------------------------------------------------- stopping
# A stop (SIGUSR1, SIGTERM or SIGINT to a launch script) makes every rank save a
# checkpoint at its next step boundary and exit 0; then the script exits 0. The script
# - catches the signals from its first line (install_stop_traps): one that comes before
#   the ranks exist is remembered, and training is then not started at all;
# - runs the launcher in a session of its own (setsid), so that a signal to the script's
#   process group (SLURM, Ctrl-C, kill -- -PGID) reaches the script only: DeepSpeed's
#   launcher (deepspeed/launcher/launch.py) answers SIGTERM or SIGINT by terminating the
#   ranks and killing them 30 s later, whatever they are doing;
# - passes the stop on as SIGUSR1, to the ranks only once they are registered
#   (bing_bert_pld/stop_signal.py: a registered rank handles it), and waits for them;
# - ignores further signals meanwhile: a second one must not cut a checkpoint short.
# OUTPUT_DIR/launch.pid ("host pid start-time") names the script, for launch/stop.sh.

STOP_SIGNAL=""           # the first stop signal received: USR1, TERM or INT
STOPPED_BEFORE_START=""  # 1 when a stop came before run_forwarding_stop started anything
RUN_PID=""               # the launcher, while it runs
RUN_FORWARDER=""
CLAIMED_DIR=""           # the OUTPUT_DIR whose launch.pid this script wrote
LAUNCH_PID_LINE=""
STOP_POLL_SECONDS=0.5    # how often a pending stop looks for newly registered ranks

# Call first, before anything that takes time.
install_stop_traps() {
    trap 'note_stop_signal USR1' USR1
    trap 'note_stop_signal TERM' TERM
    trap 'note_stop_signal INT' INT
    trap 'on_launch_exit' EXIT
}

note_stop_signal() {
    if [[ -z "$STOP_SIGNAL" ]]; then
        STOP_SIGNAL="$1"
        echo "received SIG$1: asking the ranks to save a checkpoint and stop" >&2
    else
        echo "received SIG$1 while stopping (after SIG$STOP_SIGNAL): ignored, the ranks finish their checkpoint" >&2
    fi
}

# The start time of process PID (/proc/PID/stat field 22), "-" without /proc: with the
# pid it names one process, not a later one that reuses the pid.
process_start_time() {
    local stat
    stat="$(cat "/proc/$1/stat" 2> /dev/null)" || { echo -; return; }
    stat="${stat##*) }"  # the fields after "pid (comm) ", from field 3 on
    local -a fields
    read -r -a fields <<< "$stat"
    echo "${fields[19]}"
}

# read_launch_pid DIR: LAUNCH_HOST LAUNCH_PID LAUNCH_START from DIR/launch.pid; fails without one.
read_launch_pid() {
    LAUNCH_HOST="" LAUNCH_PID="" LAUNCH_START=""
    [[ -f "$1/launch.pid" ]] || return 1
    read -r LAUNCH_HOST LAUNCH_PID LAUNCH_START < "$1/launch.pid" || true
    [[ "$LAUNCH_PID" =~ ^[0-9]+$ ]]
}

# launch_script_alive: the script read_launch_pid found runs on this host.
launch_script_alive() {
    [[ "$LAUNCH_HOST" == "$(uname -n)" ]] && kill -0 "$LAUNCH_PID" 2> /dev/null \
        && [[ "$LAUNCH_START" == - || "$(process_start_time "$LAUNCH_PID")" == "$LAUNCH_START" ]]
}

# claim_output_dir DIR: this script is the run's launch script (DIR/launch.pid, for
# launch/stop.sh); rank registrations left by a killed launch are forgotten. A DIR that
# a live launch script on this host holds is refused: two runs would overwrite each other.
claim_output_dir() {
    local dir="$1"
    mkdir -p "$dir" || die "cannot create OUTPUT_DIR $dir"
    if read_launch_pid "$dir" && launch_script_alive; then
        die "OUTPUT_DIR $dir is in use by the launch script pid $LAUNCH_PID on this host: stop that run first (bash launch/stop.sh $dir)"
    fi
    LAUNCH_PID_LINE="$(uname -n) $$ $(process_start_time $$)"
    echo "$LAUNCH_PID_LINE" > "$dir/launch.pid.$$.tmp"
    mv -f "$dir/launch.pid.$$.tmp" "$dir/launch.pid"
    CLAIMED_DIR="$dir"
    rank_registry clear
}

# prepare_launch OUTPUT_DIR CMD...: print CMD (the deepspeed launcher's command line); with
# DRY_RUN=1 exit 0 there, else check that the launcher and the package are installed and
# claim OUTPUT_DIR (claim_output_dir) before the caller runs CMD.
prepare_launch() {
    local dir="$1"
    shift
    print_cmd "$@"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        exit 0
    fi
    command -v deepspeed > /dev/null || die "the deepspeed launcher is not on PATH: run 'bash launch/setup.sh'"
    require_package
    claim_output_dir "$dir"
}

# rank_registry ACTION [ARGS]: bing_bert_pld.stop_signal on CLAIMED_DIR (see its docstring).
rank_registry() {
    local action="$1"
    shift
    "${PYTHON:-python}" -m bing_bert_pld.stop_signal "$action" "$CLAIMED_DIR" "$@"
}

on_launch_exit() {
    if [[ -n "$RUN_PID" ]] && kill -0 "$RUN_PID" 2> /dev/null; then
        # Leaving while training runs (SIGHUP, a failed command here): the ranks would
        # go on untended in their own session, so they are asked to save and stop.
        echo "the launch script is exiting while training runs: asking the ranks to save a checkpoint and stop" >&2
        "$RUN_FORWARDER" "$RUN_PID" now > /dev/null 2>&1 || true
    elif [[ -n "$CLAIMED_DIR" ]]; then
        rank_registry clear > /dev/null 2>&1 || true  # left by ranks that were killed
    fi
    remove_run_shm_files
    if [[ -n "$CLAIMED_DIR" && "$(cat "$CLAIMED_DIR/launch.pid" 2> /dev/null)" == "$LAUNCH_PID_LINE" ]]; then
        rm -f "$CLAIMED_DIR/launch.pid"
    fi
}

# run_forwarding_stop FORWARDER CMD...: run CMD (the launcher) in its own session and
# wait for it; after a stop signal call `FORWARDER PID` every STOP_POLL_SECONDS until it
# succeeds (it has passed the stop to every rank) or CMD exits. Returns CMD's exit status,
# or 0 without running CMD when a stop came first (STOPPED_BEFORE_START=1).
run_forwarding_stop() {
    local forwarder="$1"
    shift
    if [[ -n "$STOP_SIGNAL" ]]; then
        STOPPED_BEFORE_START=1
        echo "stop requested (SIG$STOP_SIGNAL) before training started: not starting it, no step ran" >&2
        return 0
    fi
    if command -v setsid > /dev/null; then
        setsid "$@" &
    else
        echo "warning: no setsid here: a signal to this script's process group also reaches the deepspeed launcher" >&2
        "$@" &
    fi
    RUN_PID=$!
    RUN_FORWARDER="$forwarder"
    local forwarded=""
    while kill -0 "$RUN_PID" 2> /dev/null; do
        if [[ -n "$STOP_SIGNAL" && -z "$forwarded" ]]; then
            if "$forwarder" "$RUN_PID"; then
                forwarded=1
            else
                sleep "$STOP_POLL_SECONDS" || true  # a signal to our process group ends the sleep
            fi
        else
            wait "$RUN_PID" 2> /dev/null || true  # returns early when a signal is trapped
        fi
    done
    local status=0
    wait "$RUN_PID" || status=$?
    RUN_PID=""
    return "$status"
}

# Forwarders: FORWARDER PID [now]. Success means the stop has reached every rank; "now"
# (the script is exiting) asks them to pass it on at once, to whoever can take it.

# The ranks of this host, each once it is registered; done when NUM_RANKS_HERE have it.
SIGNALLED_RANK_PIDS=()
signal_registered_ranks() {
    local line pid
    while read -r line; do
        [[ -n "$line" ]] || continue
        echo "asked $line to save a checkpoint and stop" >&2
        pid="${line##* }"
        SIGNALLED_RANK_PIDS+=("$pid")
    done < <(rank_registry signal --skip "${SIGNALLED_RANK_PIDS[@]}")
    [[ "${#SIGNALLED_RANK_PIDS[@]}" -ge "$NUM_RANKS_HERE" ]]
}

# A child launch script (two_phase.sh, quickstart.sh), once its traps are installed (it
# has written CHILD_OUTPUT_DIR/launch.pid); it forwards to its ranks.
signal_child_script() {
    if [[ "${2:-}" != now ]] && ! { read_launch_pid "$CHILD_OUTPUT_DIR" && [[ "$LAUNCH_PID" == "$1" ]]; }; then
        return 1
    fi
    echo "passing the stop on to the launch script for $CHILD_OUTPUT_DIR" >&2
    kill -USR1 "$1" 2> /dev/null || true
}

# ------------------------------------------------------------------- shared memory
# DeepSpeed's CPU allreduce gives each rank of a one-host run a 66 MB file,
# /dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>, and never
# removes it. The ranks unlink theirs once all have mapped them (bing_bert_pld/shm_comm.py);
# a rank killed before that leaves its file, which the exit trap removes: this run's
# address and port only, never another run's.
SHM_RUN=()  # (MASTER_ADDR MASTER_PORT) of the run this script starts

remove_run_shm_files() {
    [[ "${#SHM_RUN[@]}" -eq 2 ]] || return 0
    if [[ -n "$RUN_PID" ]] && kill -0 "$RUN_PID" 2> /dev/null; then
        return 0  # ranks still starting would wait forever for a peer's removed file
    fi
    "${PYTHON:-python}" -m bing_bert_pld.shm_comm clean "${SHM_RUN[@]}" >&2 || true
}
