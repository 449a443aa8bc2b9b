#!/usr/bin/env bash
# Submit launch/slurm_train.sbatch for NODES x GPUS_PER_NODE GPUs (one rank per GPU).
#
#   bash launch/slurm_submit.sh --nodes 4 --gpus-per-node 8 --data-dir /shared/data/wiki_books_128 \
#       --output-dir /shared/runs/bert_base_pld --time 24:00:00 -- --max_steps 200000
#
# Options (each also read from the environment variable in brackets; an option wins;
# defaults after the variable):
#   --nodes N              [NODES 2]
#   --gpus-per-node G      [GPUS_PER_NODE 8; 0 for CPU-only nodes]
#   --tasks-per-node T     [TASKS_PER_NODE = G; give it for CPU-only nodes]
#   --cpus-per-task C      [CPUS_PER_TASK; the script's #SBATCH line: 8]
#   --mem-per-cpu M        [MEM_PER_CPU; the script's #SBATCH line: 4G]
#   --time D-HH:MM:SS      [TIME_LIMIT 24:00:00]
#   --signal-lead SECONDS  [SIGNAL_LEAD; the script's #SBATCH line: 300] SIGUSR1 (checkpoint
#                          and requeue) this long before the time limit (docs/LAUNCH.md)
#   --data-dir DIR         [DATA_DIR]   required; made absolute
#   --output-dir DIR       [OUTPUT_DIR] required; made absolute
#   --ds-config FILE       [DS_CONFIG ds_configs/bert_base_seq128_pld_bf16.json]
#   --model-config NAME    [MODEL_CONFIG bert-base]
#   --python PATH          [PYTHON; default: the interpreter `python` runs here] made absolute
#   --log-root DIR         [LOG_ROOT logs] the job's output LOG_ROOT/<job name>-<job id>.out and rank logs
#   --master-port PORT     the ranks' rendezvous port [20000 + job id mod 20000]
#   --job-name NAME        [JOB_NAME bert-pld]
#   --partition P, --account A  [PARTITION, ACCOUNT; the cluster's defaults]
#   --dry-run              [DRY_RUN=1] print the sbatch command and exit
# Every argument after -- is passed to bing_bert_pld.train.
#
# The resolved settings go to the job as arguments of slurm_train.sbatch, not through
# the environment: the job runs the same under sbatch --export=NONE (SBATCH_EXPORT=NONE),
# and a requeued job gets them again.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

TRAINER_ARGS=()
while [[ $# -gt 0 ]]; do
    arg="$1"
    shift
    case "$arg" in
        --) TRAINER_ARGS=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1; continue ;;
    esac
    name="${arg%%=*}"
    if [[ "$arg" == *=* ]]; then
        value="${arg#*=}"
    else
        [[ $# -gt 0 ]] || die "$name needs a value"
        value="$1"
        shift
    fi
    case "$name" in
        --nodes) NODES="$value" ;;
        --gpus-per-node) GPUS_PER_NODE="$value" ;;
        --tasks-per-node) TASKS_PER_NODE="$value" ;;
        --cpus-per-task) CPUS_PER_TASK="$value" ;;
        --mem-per-cpu) MEM_PER_CPU="$value" ;;
        --time) TIME_LIMIT="$value" ;;
        --signal-lead) SIGNAL_LEAD="$value" ;;
        --data-dir) DATA_DIR="$value" ;;
        --output-dir) OUTPUT_DIR="$value" ;;
        --ds-config) DS_CONFIG="$value" ;;
        --model-config) MODEL_CONFIG="$value" ;;
        --python) PYTHON="$value" ;;
        --log-root) LOG_ROOT="$value" ;;
        --master-port) SUBMIT_MASTER_PORT="$value" ;;
        --job-name) JOB_NAME="$value" ;;
        --partition) PARTITION="$value" ;;
        --account) ACCOUNT="$value" ;;
        *) die "unknown option '$name' (bash launch/slurm_submit.sh --help lists them; the trainer's arguments go after --, e.g. -- --max_steps 200000)" ;;
    esac
done

NODES="${NODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
TASKS_PER_NODE="${TASKS_PER_NODE:-$GPUS_PER_NODE}"
TIME_LIMIT="${TIME_LIMIT:-24:00:00}"
JOB_NAME="${JOB_NAME:-bert-pld}"
DS_CONFIG="${DS_CONFIG:-$REPO_DIR/ds_configs/bert_base_seq128_pld_bf16.json}"
MODEL_CONFIG="${MODEL_CONFIG:-bert-base}"
LOG_ROOT="$(realpath -m "${LOG_ROOT:-$REPO_DIR/logs}")"

require_var DATA_DIR "--data-dir: the shard set from data_prep, holding train/ (and validation/)"
require_var OUTPUT_DIR "--output-dir: where checkpoints go, on a file system every node sees"
require_shards "$DATA_DIR" "DATA_DIR"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes (NODES) must be a positive integer, got '$NODES'"
[[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || die "--gpus-per-node (GPUS_PER_NODE) must be an integer, got '$GPUS_PER_NODE'"
[[ "$TASKS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "--tasks-per-node (TASKS_PER_NODE) must be a positive integer (set it for CPU-only nodes), got '$TASKS_PER_NODE'"
[[ -z "${CPUS_PER_TASK:-}" || "$CPUS_PER_TASK" =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task (CPUS_PER_TASK) must be a positive integer, got '$CPUS_PER_TASK'"
[[ -z "${MEM_PER_CPU:-}" || "$MEM_PER_CPU" =~ ^[1-9][0-9]*[KMGT]?$ ]] || die "--mem-per-cpu (MEM_PER_CPU) must be a size such as 4G or 4000M, got '$MEM_PER_CPU'"
[[ -z "${SIGNAL_LEAD:-}" || "$SIGNAL_LEAD" =~ ^[1-9][0-9]*$ ]] || die "--signal-lead (SIGNAL_LEAD) must be a number of seconds, got '$SIGNAL_LEAD'"
require_file "$DS_CONFIG" "DS_CONFIG"
# The job may not see this shell's PATH (sbatch --export=NONE), so the interpreter goes by
# an absolute path: the one given, as found on PATH; by default the interpreter `python`
# runs (its sys.executable: a virtualenv's bin/python stays that virtualenv's, a pyenv
# shim becomes the interpreter behind it).
if [[ -n "${PYTHON:-}" ]]; then
    given="$PYTHON"
    PYTHON="$(command -v "$given")" || die "--python (PYTHON) '$given' is not a program on this PATH"
    [[ "$PYTHON" == /* ]] || PYTHON="$(realpath -s "$PYTHON")"
else
    PYTHON="$(python -c 'import sys; print(sys.executable)' 2> /dev/null)" \
        || die "no python on this PATH: give --python, the interpreter the nodes should use"
fi
[[ -z "${SUBMIT_MASTER_PORT:-}" || "$SUBMIT_MASTER_PORT" =~ ^[1-9][0-9]*$ ]] || die "--master-port must be a port number, got '$SUBMIT_MASTER_PORT'"

DATA_DIR="$(realpath -m "$DATA_DIR")"
OUTPUT_DIR="$(realpath -m "$OUTPUT_DIR")"
DS_CONFIG="$(realpath "$DS_CONFIG")"
if [[ -f "$MODEL_CONFIG" ]]; then
    MODEL_CONFIG="$(realpath "$MODEL_CONFIG")"  # a file; a packaged name stays a name
fi

cd "$REPO_DIR"  # the job finds the repository through SLURM_SUBMIT_DIR
mkdir -p "$LOG_ROOT"  # sbatch opens --output there; it cannot create the directory
cmd=(sbatch --job-name "$JOB_NAME" --nodes "$NODES" --ntasks-per-node "$TASKS_PER_NODE"
     --time "$TIME_LIMIT" --output "$LOG_ROOT/%x-%j.out")
cmd+=(--gpus-per-node "$GPUS_PER_NODE")  # 0 overrides the script's GPU default on CPU-only nodes
[[ -n "${CPUS_PER_TASK:-}" ]] && cmd+=(--cpus-per-task "$CPUS_PER_TASK")
[[ -n "${MEM_PER_CPU:-}" ]] && cmd+=(--mem-per-cpu "$MEM_PER_CPU")
[[ -n "${SIGNAL_LEAD:-}" ]] && cmd+=("--signal=B:USR1@$SIGNAL_LEAD")
[[ -n "${PARTITION:-}" ]] && cmd+=(--partition "$PARTITION")
[[ -n "${ACCOUNT:-}" ]] && cmd+=(--account "$ACCOUNT")
cmd+=(launch/slurm_train.sbatch --data-dir "$DATA_DIR" --output-dir "$OUTPUT_DIR"
      --ds-config "$DS_CONFIG" --model-config "$MODEL_CONFIG" --python "$PYTHON"
      --log-root "$LOG_ROOT")
[[ -n "${SUBMIT_MASTER_PORT:-}" ]] && cmd+=(--master-port "$SUBMIT_MASTER_PORT")
cmd+=(-- "${TRAINER_ARGS[@]}")
print_cmd "${cmd[@]}"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    exit 0
fi
command -v sbatch > /dev/null || die "sbatch is not on PATH: this is not a SLURM login node"
"${cmd[@]}"
