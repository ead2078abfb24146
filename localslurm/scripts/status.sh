#!/usr/bin/env bash
# Report on local SLURM clusters started by start.sh.
#
#   status.sh STATE_DIR   one line per daemon; exit 0 when all run, 1 when none, 2 when some
#   status.sh --running   the state dir of every cluster with a live process on this machine
#                         (one per line); exit 0 if there is one, 1 if none
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
[ $# -eq 1 ] || die "usage: status.sh STATE_DIR | status.sh --running"

if [ "$1" = --running ]; then
    dirs=$(running_state_dirs)
    [ -n "$dirs" ] || exit 1
    echo "$dirs"
    exit 0
fi

[ -d "$1" ] || { echo "no state dir $1: not started"; exit 1; }
set_layout "$1"
ours=0 down=0  # ours: running daemons that start.sh started for this state dir
for name in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$name"); then
        echo "$name: running (PID $pid)"
        ours=$((ours + 1))
    elif [ "$name" = munged ] && munge -n >/dev/null 2>&1; then
        echo "munged: running (shared, not started by start.sh)"
    else
        echo "$name: stopped"
        down=$((down + 1))
    fi
done
echo "logs: $LOG; clients need: source $STATE/env.sh"
[ $down -eq 0 ] && exit 0
[ $ours -eq 0 ] && exit 1
exit 2
