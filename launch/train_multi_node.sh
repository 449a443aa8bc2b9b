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
#   DS_CONFIG     [ds_configs/bert_base_seq128_pld_bf16.json]
#   MODEL_CONFIG  [bert-base]
#   MASTER_ADDR   address of rank 0 [the first host of HOSTFILE]
#   MASTER_PORT   [29500]
#   NUM_NODES     use only the first NUM_NODES hosts [all]
#   NUM_GPUS      ranks per host [the host's slots]
#   LAUNCHER      deepspeed multi-node backend: pdsh, openmpi, mvapich, impi, mpich [pdsh]
#   DRY_RUN=1     print the command and exit
# Every argument is passed to bing_bert_pld.train.
#
# SIGUSR1, SIGTERM or SIGINT to this script (or to its process group; or
# `bash launch/stop.sh OUTPUT_DIR` on this host): it sends SIGUSR1 to this run's ranks on
# every host (through pdsh, or ssh for the other launchers); they save a checkpoint at
# the next step boundary and exit 0, and the same command resumes from it.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"
install_stop_traps

DS_CONFIG="${DS_CONFIG:-$REPO_DIR/ds_configs/bert_base_seq128_pld_bf16.json}"
MODEL_CONFIG="${MODEL_CONFIG:-bert-base}"
MASTER_PORT="${MASTER_PORT:-29500}"
LAUNCHER="${LAUNCHER:-pdsh}"

require_var HOSTFILE "a file of 'hostname slots=N' lines"
require_var DATA_DIR "the shard set from data_prep, holding train/ (and validation/)"
require_var OUTPUT_DIR "where checkpoints and logs go, on a file system every host sees"
require_file "$HOSTFILE" "HOSTFILE"

HOSTS=()
SLOTS=()
line_no=0
while IFS= read -r line || [[ -n "$line" ]]; do
    line_no=$((line_no + 1))
    line="${line%%#*}"
    [[ -z "${line//[[:space:]]/}" ]] && continue
    if [[ ! "$line" =~ ^[[:space:]]*([^[:space:]]+)[[:space:]]+slots=([1-9][0-9]*)[[:space:]]*$ ]]; then
        die "HOSTFILE $HOSTFILE line $line_no: expected 'hostname slots=N', got '$line'"
    fi
    HOSTS+=("${BASH_REMATCH[1]}")
    SLOTS+=("${BASH_REMATCH[2]}")
done < "$HOSTFILE"
[[ "${#HOSTS[@]}" -gt 0 ]] || die "HOSTFILE $HOSTFILE lists no hosts"
if [[ -n "${NUM_NODES:-}" ]]; then
    [[ "$NUM_NODES" =~ ^[1-9][0-9]*$ && "$NUM_NODES" -le "${#HOSTS[@]}" ]] \
        || die "NUM_NODES must be 1..${#HOSTS[@]} (the hosts in $HOSTFILE), got '$NUM_NODES'"
    HOSTS=("${HOSTS[@]:0:$NUM_NODES}")
    SLOTS=("${SLOTS[@]:0:$NUM_NODES}")
fi
if [[ -n "${NUM_GPUS:-}" ]]; then
    [[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS must be a positive integer, got '$NUM_GPUS'"
fi
TOTAL_RANKS=0  # what the launcher starts: NUM_GPUS (at most the slots) on every host
for slots in "${SLOTS[@]}"; do
    TOTAL_RANKS=$((TOTAL_RANKS + (${NUM_GPUS:-$slots} < slots ? ${NUM_GPUS:-$slots} : slots)))
done
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
prepare_launch "$OUTPUT_DIR" "${cmd[@]}"

# Each host signals the ranks of this run that registered there (bing_bert_pld.stop_signal
# reads the registry in OUTPUT_DIR, on the shared file system): called again whenever
# more ranks have registered, until all TOTAL_RANKS have.
REMOTE_STOP=""
LAST_REGISTERED=0
signal_all_hosts() {
    local registered
    registered="$(rank_registry count)" || registered=0
    if [[ "${2:-}" != now && "$registered" -le "$LAST_REGISTERED" ]]; then
        return 1  # nobody new to ask
    fi
    LAST_REGISTERED="$registered"
    if [[ "${#HOSTS[@]}" -eq 1 ]]; then
        signal_registered_ranks "$1"
    else
        if [[ -z "$REMOTE_STOP" ]]; then
            local python
            python="$("${PYTHON:-python}" -c 'import sys; print(sys.executable)')"
            REMOTE_STOP="$(printf 'cd %q && PYTHONPATH=%q %q -m bing_bert_pld.stop_signal signal %q' \
                "$PWD" "$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" "$python" "$OUTPUT_DIR")"
        fi
        echo "asking the $registered registered ranks (of $TOTAL_RANKS) on ${HOSTS[*]} to save a checkpoint and stop" >&2
        if [[ "$LAUNCHER" == pdsh ]]; then
            # Never the local children instead: they are ssh clients, which SIGUSR1
            # would end, cutting the ranks off mid-save.
            local hosts
            hosts="$(IFS=,; echo "${HOSTS[*]}")"
            pdsh -S -w "$hosts" "$REMOTE_STOP" >&2 || true
        else
            local host pids=()
            for host in "${HOSTS[@]}"; do
                ssh -o BatchMode=yes "$host" "$REMOTE_STOP" >&2 &
                pids+=($!)
            done
            wait "${pids[@]}" || true
        fi
    fi
    [[ "$registered" -ge "$TOTAL_RANKS" ]]
}
NUM_RANKS_HERE="$TOTAL_RANKS"  # one host: signal_registered_ranks counts against it
run_forwarding_stop signal_all_hosts "${cmd[@]}"
