#!/usr/bin/env bash
# Start a two-node SLURM cluster with accounting on this machine (root only).
#
#   start.sh STATE_DIR [--max-array-size N] [--timeout SECONDS]
#
# Everything the cluster writes lives in STATE_DIR: config (etc/), MariaDB data (mysql/), SLURM
# state and spool, PID files (pids/, run/), daemon logs (log/), and env.sh, which exports the
# SLURM_CONF that clients need. Idempotent: when the cluster of STATE_DIR is already up it says so
# and exits 0, after applying a changed MaxArraySize (N, else $RSP_SLURM_MAX_ARRAY_SIZE, else 1001).
# A half-up cluster is stopped and started again. Exits 1 on failure with the tail of the failing
# daemon's log on stderr, after stopping what it started.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"

MAX_ARRAY_SIZE=${RSP_SLURM_MAX_ARRAY_SIZE:-1001}  # SLURM's default; launch.slurm_queries.DEFAULT_MAX_ARRAY_SIZE in Python
TIMEOUT_S=90
STATE_ARG=
while [ $# -gt 0 ]; do
    case $1 in
    --max-array-size) MAX_ARRAY_SIZE=${2:?}; shift 2 ;;
    --timeout) TIMEOUT_S=${2:?}; shift 2 ;;
    -*) die "unknown option $1 (usage: start.sh STATE_DIR [--max-array-size N] [--timeout SECONDS])" ;;
    *) STATE_ARG=$1; shift ;;
    esac
done
# SLURM caps MaxArraySize at 4000001; 0 would disable arrays, which no caller wants.
if ! [[ $MAX_ARRAY_SIZE =~ ^[0-9]+$ ]] || [ "$MAX_ARRAY_SIZE" -lt 1 ] || [ "$MAX_ARRAY_SIZE" -gt 4000001 ]; then
    die "--max-array-size '$MAX_ARRAY_SIZE' must be an integer in 1..4000001; pass one in that range"
fi
[[ $TIMEOUT_S =~ ^[0-9]+$ ]] || die "--timeout '$TIMEOUT_S' must be a whole number of seconds"
DEADLINE=$((SECONDS + TIMEOUT_S))

[ "$(id -u)" -eq 0 ] || die "must run as root: the daemons run jobs as root and munged as the munge user"
missing=()
for program in munged munge mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sbatch sinfo; do
    command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("$program")
done
[ ${#missing[@]} -eq 0 ] || die "missing programs: ${missing[*]}; install the packages with $HERE/install.sh"
[ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing; create it with $HERE/install.sh"
export PATH=$PATH:/usr/sbin

set_layout "$STATE_ARG"
# MariaDB and slurmstepd put unix sockets in the state dir (run/mysql.sock,
# spool/n1/n1_JOBID.STEPID: up to 32 more characters), and a socket path has at most 107 bytes.
[ ${#STATE} -le 70 ] ||
    die "the state dir $STATE has ${#STATE} characters; unix socket paths in it would exceed" \
        "107 bytes: use one of at most 70 (e.g. /tmp/slurm)"
mkdir -p "$ETC" "$RUN" "$LOG" "$PIDS" "$STATE/state" || die "cannot create the state dir $STATE"
for node in "${NODES[@]}"; do mkdir -p "$STATE/spool/$node"; done
# A state dir is never source: keep it out of git wherever it is created.
[ -f "$STATE/.gitignore" ] || echo '*' >"$STATE/.gitignore"

# fail NAME MESSAGE: report with the daemon's log and exit 1; during a fresh start, first stop
# what was started (a running cluster that only failed to take a new config is left running).
STOP_ON_FAIL=false
fail() {
    say "error: $2"
    log_tail "$1"
    if $STOP_ON_FAIL; then "$HERE/stop.sh" "$STATE" >/dev/null 2>&1 || true; fi
    exit 1
}

# wait_until NAME DESCRIPTION CMD...: poll CMD until it succeeds, failing early if NAME died.
wait_until() {
    local name=$1 what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$name" = - ] || pid_of "$name" >/dev/null || fail "$name" "$name exited while waiting for $what"
        [ $SECONDS -lt $DEADLINE ] || fail "$name" "timed out after ${TIMEOUT_S}s waiting for $what"
        sleep 0.1
    done
}

# launch NAME CMD...: start a daemon in the foreground of its own session, tagged, PID recorded.
launch() {
    local name=$1 pid comm
    shift
    setsid env "$TAG_VAR=$STATE" "$@" </dev/null >>"$LOG/$name.out" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDS/$name.pid"
    # setsid and env exec in place (the child is no process-group leader), so $! becomes the daemon
    # once the exec chain is done.
    for _ in $(seq 50); do
        read -r comm <"/proc/$pid/comm" 2>/dev/null || break
        [ "$comm" = "$(program_of "$name")" ] && return 0
        sleep 0.05
    done
    fail "$name" "$name did not start (PID $pid)"
}

render_configs() {
    local password text
    [ -s "$ETC/db-password" ] || (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/db-password")
    password=$(<"$ETC/db-password")
    text=$(<"$HERE/slurm.conf.in")
    text=${text//@STATE_DIR@/$STATE}
    printf '%s\n' "${text//@MAX_ARRAY_SIZE@/$MAX_ARRAY_SIZE}" >"$SLURM_CONF_PATH.new"
    cp "$HERE/gres.conf.in" "$ETC/gres.conf.new"
    text=$(<"$HERE/slurmdbd.conf.in")
    text=${text//@STATE_DIR@/$STATE}
    (umask 077 && printf '%s\n' "${text//@DB_PASSWORD@/$password}" >"$ETC/slurmdbd.conf")
    chmod 600 "$ETC/slurmdbd.conf"
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_PATH" >"$STATE/env.sh"
}

# node_up NODE: the node responds (idle on a fresh cluster; mixed or allocated while jobs run).
node_up() {
    slurm_client sinfo -h -n "$1" -o %T | grep -qxE 'idle|mixed|allocated|completing'
}

wait_nodes_up() {
    local node
    for node in "${NODES[@]}"; do
        wait_until "slurmd-$node" "node $node to respond" node_up "$node"
    done
}

configured_max_array_size() {
    slurm_client scontrol show config | sed -n 's/^MaxArraySize *= *//p'
}

restart_slurmctld() {
    local pid
    pid=$(pid_of slurmctld) && kill -TERM "$pid"
    wait_until - "the old slurmctld to exit" has_ended "${pid:-0}"
    wait_until - "port 6817 to be free" port_free 6817
    launch slurmctld slurmctld -D -i -f "$SLURM_CONF_PATH"
    wait_until slurmctld "slurmctld to answer" slurm_client scontrol ping
}

stop_slurmds() {
    local node pid
    for node in "${NODES[@]}"; do
        pid=$(pid_of "slurmd-$node") && kill -TERM "$pid"
        wait_until - "the old slurmd of $node to exit" has_ended "${pid:-0}"
    done
}

start_slurmds() {
    local node
    for node in "${NODES[@]}"; do
        launch "slurmd-$node" slurmd -D -N "$node" -f "$SLURM_CONF_PATH"
    done
}

# An already running cluster keeps its jobs; a changed config (slurm.conf or gres.conf) is applied by
# restarting the daemons: the slurmds stop, slurmctld restarts, the slurmds start and register under
# the new config (running jobs survive: their slurmstepd outlive slurmd). `scontrol reconfigure` is not
# enough: on 22.05 it updates MaxArraySize in `scontrol show config` while sbatch still accepts
# arrays up to the old limit, and a slurmd keeps its GRES until it restarts (the nodes turn INVAL).
apply_config_change() {
    if cmp -s "$SLURM_CONF_PATH.new" "$SLURM_CONF_PATH" && cmp -s "$ETC/gres.conf.new" "$ETC/gres.conf"; then
        rm "$SLURM_CONF_PATH.new" "$ETC/gres.conf.new"
        return 0
    fi
    mv "$SLURM_CONF_PATH.new" "$SLURM_CONF_PATH"
    mv "$ETC/gres.conf.new" "$ETC/gres.conf"
    stop_slurmds
    restart_slurmctld
    start_slurmds
    wait_nodes_up
    [ "$(configured_max_array_size)" = "$MAX_ARRAY_SIZE" ] ||
        fail slurmctld "MaxArraySize is $(configured_max_array_size) after a restart, wanted $MAX_ARRAY_SIZE"
    say "applied the new configuration, MaxArraySize=$MAX_ARRAY_SIZE (daemons restarted)"
}

up=() down=()
for name in "${DAEMONS[@]}"; do
    if pid_of "$name" >/dev/null; then up+=("$name"); else down+=("$name"); fi
done
# munged is shared: one not recorded under pids/ may still be serving us.
if [ ${#down[@]} -eq 1 ] && [ "${down[0]}" = munged ] && munge -n >/dev/null 2>&1; then down=(); fi

render_configs
if [ ${#down[@]} -eq 0 ]; then
    apply_config_change
    say "the cluster of $STATE is already up; clients need: source $STATE/env.sh"
    exit 0
fi
if [ ${#up[@]} -gt 0 ]; then
    say "the cluster of $STATE is half up (down: ${down[*]}); restarting it"
    "$HERE/stop.sh" "$STATE"
fi
while read -r other; do
    [ -z "$other" ] || [ "$other" = "$STATE" ] ||
        die "a local SLURM cluster from $other is running, and its ports are global (one cluster" \
            "per machine); stop it first: $HERE/stop.sh $other"
done <<<"$(running_state_dirs)"
for name in mariadbd slurmdbd slurmctld slurmd-n1 slurmd-n2; do
    port=${DAEMON_PORT[$name]}
    if port_busy "$port"; then
        owner=$(port_owner "$port")
        die "port $port (for $name) is in use by ${owner:-another program}, which these scripts" \
            "did not start (a system MariaDB or SLURM service?); stop it first"
    fi
done
rm -f "$PIDS"/*.pid "$RUN"/*.pid "$RUN"/*.sock
mv "$SLURM_CONF_PATH.new" "$SLURM_CONF_PATH"
mv "$ETC/gres.conf.new" "$ETC/gres.conf"
STOP_ON_FAIL=true

# 1. munge: machine-wide socket /run/munge; reuse a working munged, else start one as user munge.
if ! munge -n >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- env "$TAG_VAR=$STATE" munged || fail munged "munged failed to start"
    wait_until - "munged to answer" munge -n
    cp /run/munge/munged.pid "$PIDS/munged.pid"
fi

# 2. MariaDB in the state dir, created on first start with socket auth for root; the slurm user's
# password (etc/db-password, in slurmdbd.conf) is set on every start, so the two always agree.
DB=(mariadb --no-defaults --socket="$RUN/mysql.sock" -u root)
if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" \
        --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadbd.out" 2>&1 ||
        fail mariadbd "mariadb-install-db failed"
fi
launch mariadbd mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$RUN/mysql.sock" \
    --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" --bind-address=127.0.0.1 \
    --port=3306 --skip-log-bin --innodb-buffer-pool-size=64M
wait_until mariadbd "MariaDB to answer" "${DB[@]}" -e 'SELECT 1'
password=$(<"$ETC/db-password")
"${DB[@]}" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$password';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$password';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || fail mariadbd "creating the slurm database failed"

# 3. slurmdbd finds slurmdbd.conf next to $SLURM_CONF.
launch slurmdbd env SLURM_CONF="$SLURM_CONF_PATH" slurmdbd -D
wait_until slurmdbd "slurmdbd on port 6819" port_busy 6819

# 4. slurmctld, then one slurmd per fake node.
launch slurmctld slurmctld -D -i -f "$SLURM_CONF_PATH"
wait_until slurmctld "slurmctld to answer" slurm_client scontrol ping
start_slurmds
wait_nodes_up
say "up in ${SECONDS}s: nodes n1 n2 (8 CPUs and 2 counted GPUs each), partitions debug (default, preemptible) and high"
say "clients need: source $STATE/env.sh"
