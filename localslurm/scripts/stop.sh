#!/usr/bin/env bash
# Stop the local SLURM cluster of STATE_DIR and leave no process of it behind (root only).
#
#   stop.sh STATE_DIR
#
# 1. cancel every job and wait for them to end (their slurmstepd would outlive slurmd otherwise),
# 2. stop the daemons by recorded PID, nodes first, after checking /proc/PID/comm and the tag,
# 3. kill whatever is still left of this cluster, and its descendants (e.g. jobs after a crash).
# State, database and logs stay in STATE_DIR; a later start.sh carries on from them.
# Idempotent: stopping a stopped cluster exits 0.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
[ $# -eq 1 ] || die "usage: stop.sh STATE_DIR"
[ "$(id -u)" -eq 0 ] || die "must run as root, like start.sh"
# A deleted state dir is fine: its processes are still found by their tag (step 3).
set_layout "$1"
export PATH=$PATH:/usr/sbin

cancel_all_jobs() {
    local ids
    mapfile -t ids < <(slurm_client squeue -h -o %F | sort -u)
    [ ${#ids[@]} -gt 0 ] || return 0
    say "cancelling jobs: ${ids[*]}"
    slurm_client scancel "${ids[@]}" || true
    # KillWait=2 in slurm.conf: jobs end within seconds; COMPLETING ones still show in squeue.
    for _ in $(seq 150); do
        [ -z "$(slurm_client squeue -h -o %i 2>/dev/null)" ] && return 0
        sleep 0.2
    done
    say "jobs still listed after 30 s: $(slurm_client squeue -h -o '%i %T' | tr '\n' ' ')"
}

# stop_pid PID: SIGTERM, then SIGKILL if it is still there after 20 s (MariaDB flushes on TERM).
stop_pid() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 200); do
        is_running "$1" || return 0
        sleep 0.1
    done
    say "PID $1 ignored SIGTERM for 20 s; sending SIGKILL"
    kill -KILL "$1" 2>/dev/null || true
}

if pid_of slurmctld >/dev/null; then cancel_all_jobs; fi
for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[i]}
    if pid=$(pid_of "$name"); then
        say "stopping $name (PID $pid)"
        stop_pid "$pid"
    fi
    rm -f "$PIDS/$name.pid"
done

mapfile -t leftovers < <(cluster_pids "$STATE")
if [ ${#leftovers[@]} -gt 0 ]; then
    mapfile -t leftovers < <(descendants "${leftovers[@]}")
    say "killing leftover processes of this cluster: ${leftovers[*]}"
    kill -KILL "${leftovers[@]}" 2>/dev/null || true
fi
rm -f "$RUN"/*.pid "$RUN"/*.sock
say "stopped the cluster of $STATE"
