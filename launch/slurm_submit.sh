#!/usr/bin/env bash
# Submit launch/slurm_train.sbatch for NODES x GPUS_PER_NODE GPUs (one rank per GPU).
#
#   NODES=4 GPUS_PER_NODE=8 DATA_DIR=/shared/data/wiki_books_128 OUTPUT_DIR=/shared/runs/bert_base_pld \
#       bash launch/slurm_submit.sh --max_steps 200000
#
# Environment (defaults in brackets):
#   DATA_DIR, OUTPUT_DIR  (required; made absolute, since the job runs from the repository)
#   NODES [2], GPUS_PER_NODE [8; 0 for CPU-only nodes], TASKS_PER_NODE [GPUS_PER_NODE]
#   TIME_LIMIT [24:00:00], JOB_NAME [bert-pld], PARTITION, ACCOUNT [cluster defaults]
#   LOG_ROOT    the job's output LOG_ROOT/<job name>-<job id>.out and rank logs [logs]
#   DS_CONFIG, MODEL_CONFIG, ...  passed to the job (see launch/slurm_train.sbatch)
#   DRY_RUN=1   print the sbatch command and exit
# Every argument is passed to bing_bert_pld.train.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"

NODES="${NODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
TASKS_PER_NODE="${TASKS_PER_NODE:-$GPUS_PER_NODE}"
TIME_LIMIT="${TIME_LIMIT:-24:00:00}"
JOB_NAME="${JOB_NAME:-bert-pld}"
LOG_ROOT="$(realpath -m "${LOG_ROOT:-$REPO_DIR/logs}")"
export LOG_ROOT

require_var DATA_DIR "the shard set from data_prep, holding train/ (and validation/)"
require_var OUTPUT_DIR "where checkpoints go, on a file system every node sees"
require_shards "$DATA_DIR" "DATA_DIR"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "NODES must be a positive integer, got '$NODES'"
[[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || die "GPUS_PER_NODE must be an integer, got '$GPUS_PER_NODE'"
[[ "$TASKS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "TASKS_PER_NODE must be a positive integer (set it for CPU-only nodes), got '$TASKS_PER_NODE'"

DATA_DIR="$(realpath -m "$DATA_DIR")"
OUTPUT_DIR="$(realpath -m "$OUTPUT_DIR")"
export DATA_DIR OUTPUT_DIR
if [[ -n "${DS_CONFIG:-}" ]]; then
    require_file "$DS_CONFIG" "DS_CONFIG"
    DS_CONFIG="$(realpath "$DS_CONFIG")"
    export DS_CONFIG
fi

cd "$REPO_DIR"  # the job finds the repository through SLURM_SUBMIT_DIR
mkdir -p "$LOG_ROOT"
cmd=(sbatch --job-name "$JOB_NAME" --nodes "$NODES" --ntasks-per-node "$TASKS_PER_NODE"
     --time "$TIME_LIMIT" --output "$LOG_ROOT/%x-%j.out")
cmd+=(--gpus-per-node "$GPUS_PER_NODE")  # 0 overrides the script's GPU default on CPU-only nodes
[[ -n "${PARTITION:-}" ]] && cmd+=(--partition "$PARTITION")
[[ -n "${ACCOUNT:-}" ]] && cmd+=(--account "$ACCOUNT")
cmd+=(launch/slurm_train.sbatch "$@")
print_cmd "${cmd[@]}"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    exit 0
fi
command -v sbatch > /dev/null || die "sbatch is not on PATH: this is not a SLURM login node"
"${cmd[@]}"
