#!/usr/bin/env bash
# Pretrain on one machine through the deepspeed launcher: one rank per GPU, or CPU
# ranks over gloo where there is no GPU.
#
#   DATA_DIR=data/wiki_books_128 OUTPUT_DIR=runs/bert_base_pld \
#       bash launch/train_one_node.sh --max_steps 200000
#
# Environment (defaults in brackets):
#   DATA_DIR      shard set from data_prep: DATA_DIR/train, DATA_DIR/validation if any (required)
#   OUTPUT_DIR    checkpoints, metrics.jsonl, tensorboard/ (required); a run that
#                 finds OUTPUT_DIR/checkpoints/latest continues from it
#   DS_CONFIG     DeepSpeed JSON [ds_configs/bert_base_seq128_pld_bf16.json with GPUs,
#                 ds_configs/cpu_small_pld.json without]
#   MODEL_CONFIG  model JSON or packaged name [bert-base with GPUs, bert-small without]
#   NUM_GPUS      ranks on this machine [all GPUs; 2 CPU ranks without GPUs]
#   MASTER_PORT   rendezvous port [29500]
#   PYTHON        interpreter that checks the package [python]
#   DRY_RUN=1     print the command and exit
# Every argument is passed to bing_bert_pld.train (see `python -m bing_bert_pld.train
# --help`). The sequence length and masked positions come from the shards; without
# --max_steps, --max_samples or --max_time_minutes the run stops where its LR schedule ends.
#
# SIGUSR1, SIGTERM or SIGINT to this script (or to its process group; or
# `bash launch/stop.sh OUTPUT_DIR`): every rank saves a checkpoint at the next step
# boundary and exits 0, and so does the script; running the same command again resumes
# from it. A stop before the first step ends the launch without a checkpoint (none needed).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"
install_stop_traps

GPUS_HERE="$(count_gpus)"
if [[ "$GPUS_HERE" -gt 0 ]]; then
    NUM_GPUS="${NUM_GPUS:-$GPUS_HERE}"
    DS_CONFIG="${DS_CONFIG:-$REPO_DIR/ds_configs/bert_base_seq128_pld_bf16.json}"
    MODEL_CONFIG="${MODEL_CONFIG:-bert-base}"
else
    export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
    NUM_GPUS="${NUM_GPUS:-2}"
    DS_CONFIG="${DS_CONFIG:-$REPO_DIR/ds_configs/cpu_small_pld.json}"
    MODEL_CONFIG="${MODEL_CONFIG:-bert-small}"
fi
MASTER_PORT="${MASTER_PORT:-29500}"

require_var DATA_DIR "the shard set from data_prep, holding train/ (and validation/)"
require_var OUTPUT_DIR "where checkpoints and logs go, e.g. runs/NAME"
require_shards "$DATA_DIR" "DATA_DIR"
shard_set_args "$DATA_DIR"
require_file "$DS_CONFIG" "DS_CONFIG"
[[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS must be a positive integer, got '$NUM_GPUS'"

cmd=(deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT"
     --module bing_bert_pld.train
     --deepspeed_config "$DS_CONFIG" --model_config "$MODEL_CONFIG"
     "${SHARD_SET_ARGS[@]}"
     --output_dir "$OUTPUT_DIR" "$@")
prepare_launch "$OUTPUT_DIR" "${cmd[@]}"
NUM_RANKS_HERE="$NUM_GPUS"
SHM_RUN=(127.0.0.1 "$MASTER_PORT")  # the deepspeed launcher's address without a hostfile
run_forwarding_stop signal_registered_ranks "${cmd[@]}"
