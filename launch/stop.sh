#!/usr/bin/env bash
# Stop one training run: its ranks save a checkpoint at the next step boundary and exit
# 0; running the same launch command again resumes from the checkpoint.
#
#   bash launch/stop.sh OUTPUT_DIR
#
# Run it on the host where the run was launched. It sends SIGTERM to the launch script
# named in OUTPUT_DIR/launch.pid, which passes the stop on to this run's ranks only (on
# every host) and exits 0 once they have saved. Other runs, of this user or another, are
# not touched. A run started without a launch script (deepspeed ... -m bing_bert_pld.train)
# has no launch.pid: then the run's ranks registered on this host are signalled directly
# (SIGUSR1); run it on every host of such a run. Under SLURM use scancel (docs/LAUNCH.md).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/launch/lib.sh"

[[ $# -eq 1 ]] || die "usage: bash launch/stop.sh OUTPUT_DIR"
require_dir "$1" "OUTPUT_DIR"
CLAIMED_DIR="$1"  # rank_registry reads this run's registry

if read_launch_pid "$1"; then
    if launch_script_alive; then
        kill -TERM "$LAUNCH_PID"
        echo "asked the launch script (pid $LAUNCH_PID) to stop the run in $1: its ranks save a checkpoint at the next step boundary and exit"
        exit 0
    fi
    if [[ "$LAUNCH_HOST" != "$(uname -n)" ]]; then
        die "the run in $1 was launched on $LAUNCH_HOST (pid $LAUNCH_PID): run this there"
    fi
fi
signalled="$(rank_registry signal)"
[[ -n "$signalled" ]] || die "no launch script or rank of the run in $1 is running on this host"
while read -r line; do
    echo "asked $line to save a checkpoint and stop"
done <<< "$signalled"
