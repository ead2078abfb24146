#!/usr/bin/env bash
# Install the Debian packages of the local SLURM cluster (root; Debian/Ubuntu), plus any packages
# named as arguments (./bootstrap.sh test adds what the test suite needs). Idempotent: does nothing
# when everything is installed. About 35 s from nothing (docs/local-slurm.md#install).
set -euo pipefail
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server "$@")

say() { printf '[local-slurm] %s\n' "$*" >&2; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "error: missing Debian packages: ${missing[*]}"
        say "install them as root: apt-get install -y --no-install-recommends ${missing[*]}"
        exit 1
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    # The maintainer scripts try to start the daemons; without an init system they print
    # "policy-rc.d denied execution of start", which is expected: start.sh runs them itself.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The munge package normally creates the key; recreate it if it was lost.
if [ ! -s /etc/munge/munge.key ]; then
    [ "$(id -u)" -eq 0 ] || { say "error: /etc/munge/munge.key is missing; rerun as root"; exit 1; }
    say "creating /etc/munge/munge.key"
    /usr/sbin/mungekey -c -f -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
say "installed: ${PACKAGES[*]}"
