#!/usr/bin/env bash
# Pretrain on several machines through the deepspeed launcher and a hostfile.
#
#   HOSTFILE=hostfile DATA_DIR=/shared/data/wiki_books_128 OUTPUT_DIR=/shared/runs/bert_base_pld \
#       bash launch/train_multi_node.sh --max_steps 200000
#
# HOSTFILE lists one machine per line as `hostname slots=GPUS` (DeepSpeed's format;
# blank lines and # comments are ignored). The launcher reaches every host over
# passwordless ssh (pdsh by default) and starts one rank per slot; the repository, the
# Python environment, DATA_DIR and OUTPUT_DIR must be at the same paths on every host
# (a shared file system). Run it on the first host.
#
# Environment (defaults in brackets):
#   HOSTFILE, DATA_DIR, OUTPUT_DIR    (required)
#   DS_CONFIG     [ds_configs/bert_base_seq128_pld_fp16.json]
#   MODEL_CONFIG  [bert-base]
#   MASTER_ADDR   address of rank 0 [the first host of HOSTFILE]
#   MASTER_PORT   [29500]
#   NUM_NODES     use only the first NUM_NODES hosts [all]
#   NUM_GPUS      ranks per host [the host's slots]
#   LAUNCHER      deepspeed multi-node backend: pdsh, openmpi, mvapich, impi, mpich [pdsh]
#   DRY_RUN=1     print the command and exit
# Every argument is passed to bing_bert_pld.train.
#
# SIGUSR1 or SIGTERM to this script: it sends SIGUSR1 to the ranks on every host
# (through pdsh); they save a checkpoint at the next step boundary and exit 0, and the
# same command resumes from it.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"

DS_CONFIG="${DS_CONFIG:-$REPO_DIR/ds_configs/bert_base_seq128_pld_fp16.json}"
MODEL_CONFIG="${MODEL_CONFIG:-bert-base}"
MASTER_PORT="${MASTER_PORT:-29500}"
LAUNCHER="${LAUNCHER:-pdsh}"

require_var HOSTFILE "a file of 'hostname slots=N' lines"
require_var DATA_DIR "the shard set from data_prep, holding train/ (and validation/)"
require_var OUTPUT_DIR "where checkpoints and logs go, on a file system every host sees"
require_file "$HOSTFILE" "HOSTFILE"

HOSTS=()
line_no=0
while IFS= read -r line || [[ -n "$line" ]]; do
    line_no=$((line_no + 1))
    line="${line%%#*}"
    [[ -z "${line//[[:space:]]/}" ]] && continue
    if [[ ! "$line" =~ ^[[:space:]]*([^[:space:]]+)[[:space:]]+slots=([1-9][0-9]*)[[:space:]]*$ ]]; then
        die "HOSTFILE $HOSTFILE line $line_no: expected 'hostname slots=N', got '$line'"
    fi
    HOSTS+=("${BASH_REMATCH[1]}")
done < "$HOSTFILE"
[[ "${#HOSTS[@]}" -gt 0 ]] || die "HOSTFILE $HOSTFILE lists no hosts"
if [[ -n "${NUM_NODES:-}" ]]; then
    [[ "$NUM_NODES" =~ ^[1-9][0-9]*$ && "$NUM_NODES" -le "${#HOSTS[@]}" ]] \
        || die "NUM_NODES must be 1..${#HOSTS[@]} (the hosts in $HOSTFILE), got '$NUM_NODES'"
    HOSTS=("${HOSTS[@]:0:$NUM_NODES}")
fi
MASTER_ADDR="${MASTER_ADDR:-${HOSTS[0]}}"

require_shards "$DATA_DIR" "DATA_DIR"
shard_set_args "$DATA_DIR"
require_file "$DS_CONFIG" "DS_CONFIG"

cmd=(deepspeed --hostfile "$HOSTFILE" --launcher "$LAUNCHER"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
[[ -n "${NUM_NODES:-}" ]] && cmd+=(--num_nodes "$NUM_NODES")
[[ -n "${NUM_GPUS:-}" ]] && cmd+=(--num_gpus "$NUM_GPUS")
cmd+=(--module bing_bert_pld.train
      --deepspeed_config "$DS_CONFIG" --model_config "$MODEL_CONFIG"
      "${SHARD_SET_ARGS[@]}"
      --output_dir "$OUTPUT_DIR" "$@")
echo "hosts: ${HOSTS[*]}; master ${MASTER_ADDR}:${MASTER_PORT}"
print_cmd "${cmd[@]}"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    exit 0
fi
command -v deepspeed > /dev/null || die "the deepspeed launcher is not on PATH: run 'bash launch/setup.sh'"
require_package

# The ranks are `python -u -m bing_bert_pld.train --local_rank=R ...` on every host; the
# [.] keeps the pattern from matching the remote shell that runs pkill.
signal_all_hosts() {
    if [[ "$LAUNCHER" == pdsh && "${#HOSTS[@]}" -gt 1 ]]; then
        # runner -> pdsh -> ssh here: the local children are ssh clients, which SIGUSR1
        # would end (cutting the ranks off mid-save), so every host, this one included,
        # gets the signal through pdsh.
        echo "received SIG$2: asking the ranks on ${HOSTS[*]} to save a checkpoint and stop" >&2
        local hosts
        hosts="$(IFS=,; echo "${HOSTS[*]}")"
        pdsh -S -w "$hosts" "pkill -USR1 -f 'bing_bert_pld[.]train --local_rank='" || true
    else
        signal_local_ranks "$@"
    fi
}
run_forwarding_stop signal_all_hosts "${cmd[@]}"
