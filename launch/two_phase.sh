#!/usr/bin/env bash
# Two-phase pretraining in one command: phase 1 at a short sequence length, then phase 2
# at a longer one, starting from phase 1's final checkpoint.
#
#   PHASE1_DATA_DIR=data/wiki_books_128 PHASE2_DATA_DIR=data/wiki_books_512 \
#   PHASE1_MAX_STEPS=200000 PHASE2_MAX_STEPS=12500 OUTPUT_DIR=runs/bert_base_pld \
#       bash launch/two_phase.sh
#
# Phase 1 writes OUTPUT_DIR/phase1, phase 2 OUTPUT_DIR/phase2. Phase 2 loads phase 1's
# latest checkpoint (--init_from): the weights always; the optimizer state, LR schedule
# and step counter only with PHASE2_KEEP_OPTIMIZER=1 (then the step counter, and with it
# the PLD theta, continue from phase 1 and phase 2 ends at step
# PHASE1_MAX_STEPS + PHASE2_MAX_STEPS). Otherwise phase 2 starts a fresh optimizer and
# schedule from its own DeepSpeed config.
#
# Running it again continues where it stopped: a finished phase 1 is skipped, an
# interrupted phase resumes from its own checkpoint.
#
# Environment (defaults in brackets; "GPU / CPU" where they differ):
#   PHASE1_DATA_DIR, PHASE2_DATA_DIR  shard sets made at each phase's sequence length (required)
#   OUTPUT_DIR                        (required)
#   PHASE1_MAX_STEPS, PHASE2_MAX_STEPS  optimizer steps of each phase (required)
#   PHASE1_DS_CONFIG  [ds_configs/bert_base_seq128_pld_bf16.json / ds_configs/cpu_small_pld.json]
#   PHASE2_DS_CONFIG  [ds_configs/bert_base_seq512_pld_bf16.json / ds_configs/cpu_small_pld.json]
#   MODEL_CONFIG      [bert-base / bert-small]
#   PHASE2_KEEP_OPTIMIZER  0 or 1 [0]
#   LAUNCH_SCRIPT     runs each phase [launch/train_one_node.sh]; launch/train_multi_node.sh
#                     takes the same variables (plus HOSTFILE)
# Every argument is passed to bing_bert_pld.train in both phases. Each phase's sequence
# length and masked positions per sequence are its shards' (their manifest, else their
# shapes): nothing here repeats them.
#
# SIGUSR1, SIGTERM or SIGINT to this script (or to its process group; or
# `bash launch/stop.sh OUTPUT_DIR`): the running phase saves a checkpoint and stops, the
# next phase does not start, and the script exits 0; run the same command again to continue.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"
install_stop_traps

if [[ "$(count_gpus)" -gt 0 ]]; then
    PHASE1_DS_CONFIG="${PHASE1_DS_CONFIG:-$REPO_DIR/ds_configs/bert_base_seq128_pld_bf16.json}"
    PHASE2_DS_CONFIG="${PHASE2_DS_CONFIG:-$REPO_DIR/ds_configs/bert_base_seq512_pld_bf16.json}"
    MODEL_CONFIG="${MODEL_CONFIG:-bert-base}"
else
    PHASE1_DS_CONFIG="${PHASE1_DS_CONFIG:-$REPO_DIR/ds_configs/cpu_small_pld.json}"
    PHASE2_DS_CONFIG="${PHASE2_DS_CONFIG:-$REPO_DIR/ds_configs/cpu_small_pld.json}"
    MODEL_CONFIG="${MODEL_CONFIG:-bert-small}"
fi
PHASE2_KEEP_OPTIMIZER="${PHASE2_KEEP_OPTIMIZER:-0}"
LAUNCH_SCRIPT="${LAUNCH_SCRIPT:-$REPO_DIR/launch/train_one_node.sh}"

require_var PHASE1_DATA_DIR "phase 1 shards (e.g. seq 128)"
require_var PHASE2_DATA_DIR "phase 2 shards (e.g. seq 512)"
require_var OUTPUT_DIR "phase 1 goes to OUTPUT_DIR/phase1, phase 2 to OUTPUT_DIR/phase2"
require_var PHASE1_MAX_STEPS "optimizer steps of phase 1"
require_var PHASE2_MAX_STEPS "optimizer steps of phase 2"
for name in PHASE1_MAX_STEPS PHASE2_MAX_STEPS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, got '${!name}'"
done
[[ "$PHASE2_KEEP_OPTIMIZER" == 0 || "$PHASE2_KEEP_OPTIMIZER" == 1 ]] \
    || die "PHASE2_KEEP_OPTIMIZER must be 0 or 1, got '$PHASE2_KEEP_OPTIMIZER'"
require_shards "$PHASE1_DATA_DIR" "PHASE1_DATA_DIR"
require_shards "$PHASE2_DATA_DIR" "PHASE2_DATA_DIR"
require_file "$PHASE1_DS_CONFIG" "PHASE1_DS_CONFIG"
require_file "$PHASE2_DS_CONFIG" "PHASE2_DS_CONFIG"
require_file "$LAUNCH_SCRIPT" "LAUNCH_SCRIPT"

PHASE1_DIR="$OUTPUT_DIR/phase1"
PHASE2_DIR="$OUTPUT_DIR/phase2"
claim_output_dir "$OUTPUT_DIR"

# The optimizer step of a run's latest checkpoint, 0 without one (bing_bert_pld.run reads
# the run directory; nothing here knows its layout).
checkpoint_step() {
    if [[ ! -d "$1" ]]; then
        echo 0
        return
    fi
    "${PYTHON:-python}" -m bing_bert_pld.run info "$1" --get step
}

# run_phase N DATA_DIR OUTPUT_DIR DS_CONFIG TRAINER_ARGS...
run_phase() {
    local phase="$1" data_dir="$2" out_dir="$3" ds_config="$4"
    shift 4
    echo "=== phase $phase: $out_dir"
    CHILD_OUTPUT_DIR="$out_dir"
    run_forwarding_stop signal_child_script \
        env DATA_DIR="$data_dir" OUTPUT_DIR="$out_dir" DS_CONFIG="$ds_config" \
        MODEL_CONFIG="$MODEL_CONFIG" bash "$LAUNCH_SCRIPT" "$@"
}

phase1_step="$(checkpoint_step "$PHASE1_DIR")"
if [[ "$phase1_step" -ge "$PHASE1_MAX_STEPS" ]]; then
    echo "=== phase 1: done at step $phase1_step ($PHASE1_DIR), skipped"
else
    status=0
    run_phase 1 "$PHASE1_DATA_DIR" "$PHASE1_DIR" "$PHASE1_DS_CONFIG" \
        --max_steps "$PHASE1_MAX_STEPS" "$@" || status=$?
    phase1_step="$(checkpoint_step "$PHASE1_DIR")"
    if [[ "$phase1_step" -lt "$PHASE1_MAX_STEPS" ]]; then
        echo "phase 1 stopped at step $phase1_step of $PHASE1_MAX_STEPS (status $status);" \
             "phase 2 not started. Run the same command again to continue."
        [[ "$status" -ne 0 ]] && exit "$status"
        [[ -n "$STOP_SIGNAL" ]] && exit 0
        exit 3
    fi
    # Whether phase 1 is done is what its final checkpoint says: the deepspeed launcher
    # occasionally exits non-zero (250) after every rank has finished and saved.
    if [[ "$status" -ne 0 ]]; then
        echo "warning: phase 1 exited with status $status after saving its final checkpoint" \
             "(step $phase1_step); continuing with phase 2" >&2
    fi
fi

phase2_args=(--init_from "$PHASE1_DIR/checkpoints")
if [[ "$PHASE2_KEEP_OPTIMIZER" == 1 ]]; then
    phase2_args+=(--init_keep_optimizer --max_steps "$((phase1_step + PHASE2_MAX_STEPS))")
else
    phase2_args+=(--max_steps "$PHASE2_MAX_STEPS")
fi
run_phase 2 "$PHASE2_DATA_DIR" "$PHASE2_DIR" "$PHASE2_DS_CONFIG" "${phase2_args[@]}" "$@"
if [[ -n "$STOP_SIGNAL" ]]; then
    echo "stopped (SIG$STOP_SIGNAL): phase 2 at step $(checkpoint_step "$PHASE2_DIR") in $PHASE2_DIR." \
         "Run the same command again to continue."
    exit 0
fi
echo "=== done: phase 1 in $PHASE1_DIR (step $phase1_step), phase 2 in $PHASE2_DIR (step $(checkpoint_step "$PHASE2_DIR"))"
