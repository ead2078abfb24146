"""Why an attempt ended: what a stop signal meant, and how an attempt ended that could not say so.

The job records its own end when it can (rank 0: finished, a cooperative stop, a Python error).
A stop signal's meaning comes from where it arrived and when (`stop_reason`):

    batch shell got SIGUSR2         the time limit (near the deadline) or a preemption (earlier);
                                    SLURM sends both to the batch shell (--signal=B:USR2@delay)
    only the ranks got SIGUSR2      someone's `scancel --signal=USR2 JOBID`: stopped
    SIGTERM                         the scheduler ends the job: requeued when its restart count
                                    went up (scontrol requeue, preemption), else cancelled

When the attempt could not record its end (SIGKILL, node failure, the batch script killed before
its teardown), the teardown of the same attempt or the start of the next one writes the record
(`infer_end`) from the evidence left behind, best first: the scheduler's accounting of that
attempt (`sacct -D`: PREEMPTED, TIMEOUT, NODE_FAIL, REQUEUED, ...), the signals the batch shell
logged, srun's exit status (128 + the signal that killed the ranks), and always the attempt's
step log for the last step it completed. `Attempt.inferred` names the evidence used.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.backends import backend_class
from launch.config import ClusterConfig
from launch.rundir import Attempt, RunDirectory
from launch.steplog import read_trace
from rsp.lifecycle import blocked_stop_signals

log = logging.getLogger(__name__)

SIGNAL_TICK_S = 30  # SLURM checks time limits on a 30 s tick: the time-limit signal can come that much early
TIMEOUT_MARGIN_S = 90  # a SIGUSR2 later than deadline - signal delay - this is the time limit's
ACCOUNTING = {  # sacct state of an ended attempt -> end reason
    "PREEMPTED": "preempted",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "NODE_FAIL": "interrupted",
    "REQUEUED": "requeued",
    "CANCELLED": "cancelled",
    "OUT_OF_MEMORY": "crashed",
    "FAILED": "crashed",
    "BOOT_FAIL": "interrupted",
}


@dataclass(frozen=True)
class Ending:
    """An attempt's end as inferred: what Attempt.end_* and friends should say."""

    reason: str
    step: int
    when: float
    evidence: str
    stop_signal: str | None = None
    stop_time: float | None = None


# --- evidence -----------------------------------------------------------------------------------


def read_signal_log(path: str | Path | None) -> list[tuple[str, float]]:
    """(signal name, time) lines the batch script appended (`USR2 1764432338.123456`)."""
    if not path:
        return []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        name, _, when = line.partition(" ")
        try:
            out.append((name.strip(), float(when.strip().replace(",", "."))))  # EPOCHREALTIME follows the locale
        except ValueError:
            continue
    return out


def first(signals: Sequence[tuple[str, float]], name: str) -> float | None:
    return next((when for n, when in signals if n == name), None)


def scheduler_query(args: list[str]) -> str:
    """stdout of a SLURM client command, "" when it fails. The stop signals are held meanwhile: a
    job-wide signal must not kill the query (it waits for the handler instead)."""
    try:
        with blocked_stop_signals():
            proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s failed: %s", " ".join(args), exc)
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def live_job(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` of a job as key -> value ({} when unknown)."""
    out = scheduler_query(["scontrol", "show", "job", "-o", job_id])
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


@dataclass(frozen=True)
class Instance:
    """One run of a (possibly requeued) job in the scheduler's accounting."""

    state: str
    start: float | None
    end: float | None


def _stamp(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text).timestamp()  # sacct prints local time
    except ValueError:
        return None  # Unknown, None


def accounting(job_id: str) -> list[Instance]:
    """Every run of `job_id` (requeues included: sacct -D), oldest first."""
    out = scheduler_query(["sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-o", "State,Start,End"])
    instances = []
    for line in out.splitlines():
        state, _, rest = line.partition("|")
        start, _, end = rest.partition("|")
        instances.append(Instance(state.split()[0] if state else "UNKNOWN", _stamp(start), _stamp(end)))
    return sorted(instances, key=lambda i: i.start or 0.0)


def instance_of(attempt: Attempt, instances: Sequence[Instance]) -> Instance | None:
    """The ended run of the job that was `attempt`: the last one that started before it recorded
    its start (the ranks record it seconds after SLURM starts the job)."""
    ended = [i for i in instances if i.start is not None and i.start <= attempt.start_time + 1 and i.state in ACCOUNTING]
    return ended[-1] if ended else None


# --- reasons ------------------------------------------------------------------------------------


def usr2_reason(when: float, deadline: float | None, cluster: ClusterConfig) -> str:
    """SIGUSR2 from SLURM is the time limit's when it came near the deadline, else a preemption's."""
    if deadline is None:
        return "preempted"
    return "timeout" if when >= deadline - cluster.signal_delay_s - TIMEOUT_MARGIN_S else "preempted"


def ended_from_outside(
    job_id: str, restart_count: int, deadline: float | None, usr2: float | None, cluster: ClusterConfig
) -> str:
    """The job got SIGTERM from the scheduler: requeued (its restart count went up: scontrol
    requeue, or a preemption), or ended for good (scancel, the time limit)."""
    restarts = live_job(job_id).get("Restarts")
    if restarts is not None and int(restarts) > restart_count:
        return usr2_reason(usr2, deadline, cluster) if usr2 is not None else "requeued"
    if deadline is not None and time.time() >= deadline - SIGNAL_TICK_S:
        return "timeout"
    return "cancelled"


def stop_reason(attempt: Attempt, cluster: ClusterConfig, backend: str, stop_signal: str | None, stop_time: float) -> str:
    """The end reason of an attempt that stopped cooperatively on `stop_signal` (a signal name,
    or another reason such as runtime.stop_after_steps)."""
    if stop_signal not in ("SIGUSR2", "SIGTERM"):
        return "stopped"
    if not backend_class(backend).logs_stop_signals:  # submitit's local controller sends SIGUSR2 at the time limit
        return usr2_reason(stop_time, attempt.deadline, cluster) if stop_signal == "SIGUSR2" else "stopped"
    batch = read_signal_log(attempt.signal_log)
    usr2 = first(batch, "USR2")
    if first(batch, "TERM") is not None:  # the scheduler signalled every process of the job
        restart = int(attempt.key.rsplit("/", 1)[1]) if "/" in attempt.key else 0
        return ended_from_outside(os.environ.get("SLURM_JOB_ID", attempt.job_id), restart, attempt.deadline, usr2, cluster)
    if usr2 is not None:
        return usr2_reason(usr2, attempt.deadline, cluster)
    return "stopped"  # a signal sent to the ranks only (scancel --signal=USR2 JOBID)


def infer_end(
    run: RunDirectory,
    attempt: Attempt,
    cluster: ClusterConfig,
    exit_code: int | None = None,
    instance: Instance | None = None,
    outside: str | None = None,
) -> Ending:
    """How `attempt` ended, from the evidence it left. `exit_code`: srun's status (the teardown);
    `instance`: its run in the scheduler's accounting (the next attempt); `outside`: the
    reason the scheduler ended it, when the teardown saw SIGTERM (ended_from_outside)."""
    trace = read_trace(run.step_log_path(attempt))
    step, when = trace.last if trace else (attempt.start_step, attempt.start_time)
    batch = read_signal_log(attempt.signal_log)
    usr2, term = first(batch, "USR2"), first(batch, "TERM")
    evidence = [f"step log: last completed step {step}" if trace else "no step completed"]
    reason = None
    if instance is not None:
        evidence.append(f"sacct: {instance.state}")
        reason = ACCOUNTING.get(instance.state)
        when = instance.end or when
        if reason in ("requeued", "preempted") and usr2 is not None:
            reason = usr2_reason(usr2, attempt.deadline, cluster)
    if usr2 is not None:
        evidence.append(f"batch shell got SIGUSR2 {usr2 - attempt.start_time:+.1f} s after the attempt began")
        reason = reason or usr2_reason(usr2, attempt.deadline, cluster)
    if term is not None:
        evidence.append(f"batch shell got SIGTERM {term - attempt.start_time:+.1f} s after the attempt began")
        reason = reason or outside
    if exit_code is not None:
        evidence.append(f"srun exit status {exit_code}")
        reason = reason or exit_reason(exit_code)
    reason = reason or "interrupted"
    stop_signal, stop_time = ("SIGUSR2", usr2) if usr2 is not None else ("SIGTERM", term) if term is not None else (None, None)
    return Ending(reason, step, when, "; ".join(evidence), stop_signal, stop_time)


def exit_reason(exit_code: int) -> str | None:
    """srun's status alone: 128 + N is a death by signal N."""
    if exit_code == 128 + signal.SIGUSR2:  # died of a stop signal before its handler: a user's step signal
        return "stopped"
    if exit_code in (128 + signal.SIGTERM, 128 + signal.SIGKILL, 128 + signal.SIGINT):
        return "interrupted"
    return "crashed" if exit_code != 0 else None


def close_unrecorded(run: RunDirectory, attempts: list[Attempt], cluster: ClusterConfig, current_key: str) -> None:
    """The next attempt's duty: an earlier attempt without an end record gets one, inferred from
    the scheduler's accounting of it and what it left (closed in place)."""
    if not attempts or attempts[-1].end_reason is not None or attempts[-1].key == current_key:
        return
    stale = attempts[-1]
    instance = instance_of(stale, accounting(stale.job_id)) if stale.signal_log else None
    ending = infer_end(run, stale, cluster, instance=instance)
    run.end_attempt(
        stale,
        ending.reason,
        ending.step,
        when=ending.when,
        inferred=f"by the next attempt: {ending.evidence}",
        stop_signal=ending.stop_signal,
        stop_time=ending.stop_time,
    )
    log.info("attempt %d had no end record: %s (%s)", stale.number, ending.reason, ending.evidence)
