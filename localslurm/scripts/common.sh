# shellcheck shell=bash
# Shared by start.sh, stop.sh and status.sh (sourced, never run): the layout of a state dir and
# how a daemon started by these scripts is recognised.
#
# Identity (docs/local-slurm.md#processes-and-identity: stop by recorded PID, never by name): every daemon
# is started with RSP_LOCAL_SLURM_DAEMON_OF=<state dir> in its environment and its PID is recorded
# under <state dir>/pids. A PID counts as ours only when /proc/PID/comm is the expected program
# AND its environment carries that tag, so a recycled PID is never signalled. The tag also finds a
# cluster whose state dir was deleted, and tells one cluster from another: ports are global, so
# only one can run on a machine.
# shellcheck disable=SC2034  # the variables below are used by the scripts that source this file

TAG_VAR=RSP_LOCAL_SLURM_DAEMON_OF
NODES=(n1 n2)
# Start order; stop.sh walks it backwards. munged is shared machine-wide and only ours (recorded
# under pids/) when start.sh had to start it.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd-n1 slurmd-n2)
# Global TCP ports (slurm.conf.in, slurmdbd.conf.in, mariadbd flags in start.sh).
declare -A DAEMON_PORT=([mariadbd]=3306 [slurmdbd]=6819 [slurmctld]=6817 [slurmd-n1]=17001 [slurmd-n2]=17002)

say() { printf '[local-slurm] %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# set_layout STATE_DIR: absolute paths of everything inside a state dir.
set_layout() {
    [ -n "${1:-}" ] || die "missing STATE_DIR argument"
    STATE=$(realpath -m -- "$1")  # absolute, symlinks resolved, need not exist yet
    ETC=$STATE/etc
    RUN=$STATE/run
    LOG=$STATE/log
    PIDS=$STATE/pids
    SLURM_CONF_PATH=$ETC/slurm.conf
}

# The executable's name as the kernel reports it in /proc/PID/comm.
program_of() {
    case $1 in
    slurmd-*) echo slurmd ;;
    *) echo "$1" ;;
    esac
}

log_of() {
    case $1 in
    munged) echo /var/log/munge/munged.log ;;
    *) echo "$LOG/$1.log" ;;
    esac
}

# has_tag PID DIR: the process was started by these scripts for the cluster in DIR.
has_tag() {
    grep -qzxF "$TAG_VAR=$2" "/proc/$1/environ" 2>/dev/null
}

# pid_of NAME: the recorded PID of daemon NAME if that process is still ours, else nothing.
pid_of() {
    local file=$PIDS/$1.pid pid comm
    [ -f "$file" ] || return 1
    read -r pid <"$file" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    read -r comm <"/proc/$pid/comm" 2>/dev/null || return 1
    [ "$comm" = "$(program_of "$1")" ] && has_tag "$pid" "$STATE" && echo "$pid"
}

# running_state_dirs: state dirs of every cluster (any state dir) with a live process on this machine.
# grep exits 2 because some environ files are unreadable (PID 1, vanished processes): not an error.
running_state_dirs() {
    { grep -ahoz "^$TAG_VAR=.*" /proc/[0-9]*/environ 2>/dev/null || true; } | tr '\0' '\n' |
        sed "s/^$TAG_VAR=//" | sort -u
}

# cluster_pids DIR: every live process of the cluster in DIR: the tagged daemons, and the job
# step daemons, which slurmd starts with a clean environment (so untagged) and which hold the
# node's log in DIR/log open.
cluster_pids() {
    { grep -lzxF "$TAG_VAR=$1" /proc/[0-9]*/environ 2>/dev/null || true; } | cut -d/ -f3
    local pid comm
    for pid in $(find /proc/[0-9]*/fd -maxdepth 1 -lname "$1/log/*" 2>/dev/null | cut -d/ -f3 | sort -u); do
        read -r comm <"/proc/$pid/comm" 2>/dev/null && [ "$comm" = slurmstepd ] && echo "$pid"
    done
}

# descendants PID...: the given PIDs and all their descendants (from the ppid field of /proc/*/stat).
descendants() {
    local -A children=()
    local stat pid rest ppid
    for stat in /proc/[0-9]*/stat; do
        read -r rest <"$stat" 2>/dev/null || continue
        pid=${rest%% *}
        rest=${rest##*) }  # comm may hold spaces and parentheses: cut after the last ") "
        rest=${rest#* }     # drop the state field; the parent PID comes next
        ppid=${rest%% *}
        children[$ppid]+=" $pid"
    done
    local queue=("$@") seen=" " kids
    while [ ${#queue[@]} -gt 0 ]; do
        pid=${queue[0]}
        queue=("${queue[@]:1}")
        [[ $seen == *" $pid "* ]] && continue
        seen+="$pid "
        echo "$pid"
        read -ra kids <<<"${children[$pid]:-}"
        queue+=("${kids[@]}")
    done
}

# port_busy PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_busy() {
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

port_free() {
    ! port_busy "$1"
}

# is_running PID: the process exists and is no zombie (an ended daemon waits there for its parent,
# often init, to reap it).
is_running() {
    [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

has_ended() {
    ! is_running "$1"
}

# port_owner PORT: "program (PID n)" listening on PORT, when ss (iproute2) can tell.
port_owner() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null |
        sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (PID \2)/p' | head -n 1
}

# log_tail NAME: the last lines of a daemon's log and captured output, for error messages.
log_tail() {
    local file
    for file in "$(log_of "$1")" "$LOG/$1.out"; do
        [ -s "$file" ] || continue
        printf -- '--- last lines of %s ---\n' "$file" >&2
        tail -n 25 "$file" >&2
    done
}

# slurm_client CMD ARGS...: a SLURM client command talking to this state dir's cluster.
slurm_client() {
    SLURM_CONF=$SLURM_CONF_PATH timeout 20 "$@"
}
