#!/usr/bin/env bash
# Fine-tune one pretrained model on the GLUE tasks over several seeds through the
# deepspeed launcher, then print the summary table (mean, std and every seed).
#
#   INIT=runs/bert_base_pld GLUE_DIR=data/glue OUT=runs/glue_pld bash launch/glue_all.sh
#   INIT=exports/pld TASKS="RTE MRPC STS-B" SEEDS="1 2 3 4 5" bash launch/glue_all.sh
#
# Environment (defaults in brackets):
#   INIT         pretraining output dir, checkpoint root or tag dir, or a directory
#                written by bing_bert_pld.hf_export (required)
#   GLUE_DIR     GLUE root in the download script's layout: GLUE_DIR/<TASK>/train.tsv [data/glue]
#   OUT          OUT/<TASK>/seed<S>/ per run, OUT/summary.md at the end [runs/glue]
#   DS_CONFIG    fine-tuning DeepSpeed JSON [ds_configs/glue_finetune.json]
#   TASKS        [CoLA SST-2 MRPC STS-B QQP MNLI QNLI RTE WNLI]
#   SEEDS        [1 2 3]
#   NUM_GPUS     ranks [1; on a machine without GPUs, 1 CPU rank]
#   MASTER_PORT  rendezvous port [29500]
# A run whose results.json exists is skipped, so an interrupted sweep continues where
# it stopped. Every argument is passed to each run of bing_bert_pld.glue.finetune
# (e.g. --vocab path/vocab.txt, --cased).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"

if [[ "$(count_gpus)" -eq 0 ]]; then
    export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
fi
GLUE_DIR="${GLUE_DIR:-data/glue}"
OUT="${OUT:-runs/glue}"
DS_CONFIG="${DS_CONFIG:-$REPO_DIR/ds_configs/glue_finetune.json}"
TASKS="${TASKS:-CoLA SST-2 MRPC STS-B QQP MNLI QNLI RTE WNLI}"
SEEDS="${SEEDS:-1 2 3}"
NUM_GPUS="${NUM_GPUS:-1}"
MASTER_PORT="${MASTER_PORT:-29500}"

require_var INIT "a pretraining checkpoint or an exported directory"
[[ -e "$INIT" ]] || die "INIT $INIT does not exist"
require_dir "$GLUE_DIR" "GLUE_DIR"
require_file "$DS_CONFIG" "DS_CONFIG"
[[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS must be a positive integer, got '$NUM_GPUS'"
command -v deepspeed > /dev/null || die "the deepspeed launcher is not on PATH: run 'bash launch/setup.sh'"
require_package

for task in $TASKS; do
    for seed in $SEEDS; do
        run_dir="$OUT/$task/seed$seed"
        if [[ -f "$run_dir/results.json" ]]; then
            echo "skip $task seed $seed: $run_dir/results.json exists"
            continue
        fi
        cmd=(deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT"
             --module bing_bert_pld.glue.finetune
             --deepspeed_config "$DS_CONFIG" --task "$task" --data_dir "$GLUE_DIR"
             --init "$INIT" --output_dir "$run_dir" --seed "$seed" "$@")
        print_cmd "${cmd[@]}"
        status=0
        "${cmd[@]}" || status=$?
        if [[ "$status" -ne 0 ]]; then
            # DeepSpeed's CPU ranks rarely abort at exit after all work is done: the run
            # counts when its results are written.
            [[ -f "$run_dir/results.json" ]] || die "$task seed $seed failed (exit $status)"
            echo "warning: $task seed $seed exited with $status after writing its results" >&2
        fi
    done
done

"${PYTHON:-python}" -m bing_bert_pld.glue.summary "$OUT"
