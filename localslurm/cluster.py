"""A real two-node SLURM cluster on this machine, for trying the tool without a cluster and for tests.

The shell scripts in ``localslurm/scripts/`` are the single source of truth (install, start, stop,
status); this module only runs them and reads what they write. The cluster: nodes n1 and n2 on
127.0.0.1 with 8 CPUs each, accounting through slurmdbd + MariaDB, a default preemptible
partition ``debug`` and a partition ``high`` that preempts it (requeue). Everything it writes lives
in one state dir; clients find it through ``SLURM_CONF`` (see :attr:`LocalSlurmCluster.env`).
Ports are machine-wide, so only one such cluster runs at a time.

Users::

    python -m localslurm install            # Debian packages, as root
    python -m localslurm start              # state in $RSP_SLURM_DIR or ./.slurm
    source .slurm/env.sh && sinfo
    python -m localslurm stop
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
from pathlib import Path

from launch.slurm_queries import DEFAULT_MAX_ARRAY_SIZE, parse_slurm_config

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
MAX_ARRAY_SIZE_LIMIT = 4_000_001  # SLURM refuses larger values; 0 would disable arrays
STOP_TIMEOUT_S = 120  # cancelling jobs (30 s) + stopping six daemons (20 s each at worst)

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The cluster could not be started, stopped or reconfigured.

    The message carries the script's report, which ends with the tail of the failing daemon's log.
    """


def default_state_dir() -> Path:
    """$RSP_SLURM_DIR, else ./.slurm in the current directory (gitignored)."""
    return Path(os.environ.get("RSP_SLURM_DIR") or Path.cwd() / ".slurm")


def check_max_array_size(n: int) -> None:
    if not 1 <= n <= MAX_ARRAY_SIZE_LIMIT:
        raise ValueError(
            f"max_array_size ({n}) must be in 1..{MAX_ARRAY_SIZE_LIMIT} (SLURM's MaxArraySize limit; "
            "0 would disable job arrays); pass a value in that range"
        )


def run_script(name: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run localslurm/scripts/NAME with ARGS, capturing its output (daemons never hold the pipes)."""
    command = ["bash", str(SCRIPTS_DIR / name), *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise ClusterError(f"{shlex.join(command)} did not finish within {timeout_s:.0f} s") from error


def _check(result: subprocess.CompletedProcess[str]) -> None:
    """Raise ClusterError with the command's report if it failed, else log the report."""
    report = (result.stderr + result.stdout).strip()
    if result.returncode != 0:
        raise ClusterError(f"{shlex.join(result.args)} failed (exit {result.returncode}):\n{report}")
    if report:
        log.info("%s", report)


def running_clusters() -> list[Path]:
    """State dirs of every cluster started by these scripts that has a live process on this machine."""
    result = run_script("status.sh", "--running", timeout_s=30)
    return [Path(line) for line in result.stdout.splitlines() if line.strip()]


class LocalSlurmCluster:
    """The cluster whose state (config, database, logs, PIDs) lives in ``state_dir``."""

    def __init__(self, state_dir: str | Path, max_array_size: int = DEFAULT_MAX_ARRAY_SIZE):
        check_max_array_size(max_array_size)
        # The scripts resolve symlinks (pwd -P); so do we, to compare with running_clusters().
        self.state_dir = Path(state_dir).resolve()
        self.max_array_size = max_array_size

    def start(self, timeout_s: float = 90) -> None:
        """Start the cluster, or apply a changed MaxArraySize to the running one (idempotent).

        Returns once both nodes respond (idle on a fresh cluster). Raises ClusterError, after
        stopping what it started, e.g. when a cluster from another state dir holds the ports.
        """
        result = run_script(
            "start.sh",
            str(self.state_dir),
            "--max-array-size",
            str(self.max_array_size),
            "--timeout",
            str(max(1, round(timeout_s))),
            timeout_s=timeout_s + STOP_TIMEOUT_S,  # start.sh stops what it started when it fails
        )
        _check(result)

    def stop(self) -> None:
        """Cancel every job, stop every daemon and leave no process behind; state and logs stay."""
        _check(run_script("stop.sh", str(self.state_dir), timeout_s=STOP_TIMEOUT_S))

    def is_up(self) -> bool:
        """All daemons of this state dir run."""
        return self.status().returncode == 0

    def status(self) -> subprocess.CompletedProcess[str]:
        """status.sh's answer: stdout has one line per daemon; exit 0 all up, 1 all down, 2 some."""
        return run_script("status.sh", str(self.state_dir), timeout_s=30)

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to os.environ for SLURM clients (sbatch, submitit): {"SLURM_CONF": ...}.

        Read from the env.sh that start.sh writes, so it exists once the cluster was started.
        """
        env_file = self.state_dir / "env.sh"
        if not env_file.is_file():
            raise ClusterError(f"{env_file} does not exist: start the cluster first")
        env = {}
        for line in env_file.read_text().splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                key, value = words[1].split("=", 1)
                env[key] = value
        return env

    def set_max_array_size(self, n: int) -> None:
        """Set MaxArraySize (arrays may then use indices 0..n-1) and check it in `scontrol show config`.

        Restarts slurmctld (jobs survive; `scontrol reconfigure` alone does not reach sbatch's check).
        """
        check_max_array_size(n)
        self.max_array_size = n
        self.start()
        shown = self.show_config().get("MaxArraySize")
        if shown != str(n):
            raise ClusterError(f"MaxArraySize is {shown} in `scontrol show config` after applying {n}")

    def show_config(self) -> dict[str, str]:
        """`scontrol show config` of the running cluster as key -> value."""
        result = subprocess.run(
            ["scontrol", "show", "config"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **self.env},
            check=False,
        )
        _check(result)
        return parse_slurm_config(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localslurm",
        description="A two-node SLURM cluster with accounting and a preemptible partition on this machine.",
    )
    parser.add_argument("command", choices=["install", "start", "stop", "status"])
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="config, database, logs and PIDs (default: $RSP_SLURM_DIR or ./.slurm)"
    )
    parser.add_argument("--max-array-size", type=int, default=DEFAULT_MAX_ARRAY_SIZE, help="SLURM's MaxArraySize (start only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "install":
        # Streams apt's output: installing takes a while.
        return subprocess.run(["bash", str(SCRIPTS_DIR / "install.sh")], check=False).returncode
    try:
        cluster = LocalSlurmCluster(args.state_dir or default_state_dir(), args.max_array_size)
    except ValueError as error:
        parser.error(str(error))
    if args.command == "status":
        status = cluster.status()
        print(status.stdout + status.stderr, end="")
        return status.returncode
    try:
        if args.command == "start":
            cluster.start()
        else:
            cluster.stop()
    except ClusterError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
