"""The SLURM batch script of a training or evaluation job: signals deferred and logged, ranks
started safely, every end through one teardown (docs/requeue.md).

    #SBATCH --signal=B:USR2@<delay>     time limit and preemption signal this shell, which exists from
                                        the first instant (the ranks' step may not exist yet)
    # setup
    traps                               log each SIGUSR2 / SIGTERM with its time (RSP_SIGNAL_LOG, created
                                        once they are set); bash survives them, so the teardown still runs
    # command
    srun ... $RSP_SIGNAL_GUARD python -u -m launch.start FOLDER & rsp_wait_for_ranks $!
                                        the ranks start with the stop signals blocked (launch.start);
                                        after a SIGUSR2 this shell forwards it to the ranks' step
                                        every 2 s until srun ends: the first may come before the
                                        step exists, and a repeat is harmless (a flag is set again)
    # teardown
    python -m launch.requeue ...        record how the attempt ended, then requeue or end the run
                                        (an evaluation job: python -m launch.evaluations.teardown)

SIGTERM is not forwarded: the scheduler sends it to every process of the job itself.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import submitit

SIGNAL_DIR = "signals"  # in the submitit folder: <job>-<restart>.log per attempt
FORWARD_EVERY_S = 2


def setup_lines(folder: Path) -> list[str]:
    """Bash that runs first in the script (before the snapshot's setup and srun)."""
    signals = shlex.quote(str(folder / SIGNAL_DIR))  # created at submit time (SlurmBackend.submit)
    return [
        "rsp_job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}",
        f'export RSP_SIGNAL_LOG={signals}/"${{rsp_job:-$SLURM_JOB_ID}}-${{SLURM_RESTART_COUNT:-0}}.log"',
        "rsp_stop=",
        'rsp_signal() { echo "$1 $EPOCHREALTIME" >> "$RSP_SIGNAL_LOG"; if [ "$1" = USR2 ]; then rsp_stop=1; fi; }',
        "trap 'rsp_signal USR2' USR2",
        "trap 'rsp_signal TERM' TERM",
        ': >> "$RSP_SIGNAL_LOG"  # exists from here on: the traps are set',
        "RSP_SIGNAL_GUARD=",
        'if env --block-signal=USR2 true 2>/dev/null; then RSP_SIGNAL_GUARD="env --block-signal=USR2 --block-signal=TERM"; fi',
        "rsp_wait_for_ranks() {  # $1: srun's pid; sets rsp_rc to its exit status",
        "    while :; do",
        '        if [ -n "$rsp_stop" ] && kill -0 "$1" 2>/dev/null; then',
        f'            scancel --signal=USR2 "$SLURM_JOB_ID" 2>/dev/null; sleep {FORWARD_EVERY_S} & wait $!; continue',
        "        fi",
        '        wait "$1"; rsp_rc=$?  # returns early when a trapped signal arrives',
        '        kill -0 "$1" 2>/dev/null || return 0',
        "    done",
        "}",
    ]


def teardown_lines(python: str, module: str, folder: Path) -> list[str]:
    return [f'{python} -m {module} --folder {shlex.quote(str(folder))} --exit-code "$rsp_rc"']


class LifecycleExecutor(submitit.SlurmExecutor):
    """submitit's SLURM executor with the lifecycle above: the srun command runs launch.start
    in the background and the shell waits for it (a trapped signal can only run while bash waits
    on a background job), and the time-limit signal goes to the batch shell."""

    @property
    def _submitit_command_str(self) -> str:
        # submitit prefixes "srun <flags> "; "& rsp_wait_for_ranks $!" makes that line background srun and wait on it
        folder = shlex.quote(str(self.folder))
        return f"$RSP_SIGNAL_GUARD {self.python} -u -m launch.start {folder} & rsp_wait_for_ranks $!"
