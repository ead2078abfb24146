"""What happens after an attempt ends: requeue it or declare the run over, by end reason.

Budgets are separate per reason (cluster.max_timeouts / max_preemptions / max_failures) and a
breaker stops a run whose last two attempts both failed the same way at the same step (a crash
that resuming cannot fix, e.g. a corrupt input or a deterministic NaN). Only genuine failures (crashed,
interrupted) count as failures: a stop signal at any moment is a timeout, a preemption or a stop.

On SLURM this runs as the batch script's teardown (launch.batch), after `srun` returns, whatever
happened to the ranks (cooperative stop, Python exception, kill -9, a signal before the handlers,
watchdog exit):

    python -m launch.requeue --folder <submitit folder> --exit-code $rsp_rc

It closes the attempt record if the job could not (launch.postmortem infers how it ended), decides,
and calls `scontrol requeue` on its own job (same job id, same run directory; the next attempt
resumes from the newest valid checkpoint). A job the scheduler itself ended (SIGTERM reached the
batch shell: scontrol requeue, scancel, a preemption's grace time) is only recorded: the scheduler
already requeues or cancels it. The local backend applies the same `decide()` in-process
(launch/job.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.config import ClusterConfig
from launch.postmortem import close_unrecorded, ended_from_outside, first, infer_end, read_signal_log
from launch.rundir import RUNS_FILE, Attempt, PruneMarker, RunDirectory, prune_reason

log = logging.getLogger(__name__)

CATEGORY = {
    "timeout": "timeout",
    "preempted": "preemption",
    "stopped": "preemption",  # a stop signal from outside (e.g. scancel --signal=USR2): checkpoint and requeue
    "requeued": "preemption",  # the scheduler requeued it (scontrol requeue): not the run's fault
    "cancelled": None,  # scancel: the user's decision; nothing is requeued and the run is not failed
    "crashed": "failure",
    "interrupted": "failure",  # killed without a word: SIGKILL, OOM killer, node failure
    "pruned": None,  # a cooperative stop for the sweep's successive halving (docs/sweeps.md): no budget, no failure
    "paused": None,  # stopped at a rung of an asynchronous sweep: resubmitted when promoted (launch/sweeps/async_rungs.py)
}


# Crashes a requeue would repeat: exception type -> why it is not requeued (docs/requeue.md#cooperative-stop).
HOPELESS = {
    "NonFiniteLossError": "resuming from the last checkpoint repeats the same steps exactly (docs/requeue.md), "
    "so it would fail the same way",
    "DiskFullError": "a retry would meet the same full disk; once space is made, submit the same command with --retry-failed",
    # checkpoints of another configuration, none valid, another parameter layout: a retry reads the same files
    "ResumeError": "a retry would read the same checkpoints",
}


@dataclass(frozen=True)
class Decision:
    requeue: bool
    reason: str
    final_state: str | None = None  # finished | failed when the run is over


def budget(cluster: ClusterConfig, category: str) -> int:
    return {"timeout": cluster.max_timeouts, "preemption": cluster.max_preemptions, "failure": cluster.max_failures}[category]


def failure_signature(attempt: Attempt) -> tuple[str | None, str | None]:
    """What a failure looks like: its end reason and, for a crash, the exception's type (the last
    traceback line up to its colon). Two failures at the same step trip the breaker only when they
    look alike: a deterministic error repeats itself; a rank killed once and a worker that crashed
    once at the same step by chance do not."""
    lines = (attempt.error or "").strip().splitlines()
    kind = lines[-1].split(":", 1)[0].strip() if attempt.end_reason == "crashed" and lines else None
    return attempt.end_reason, kind


def decide(attempts: Sequence[Attempt], cluster: ClusterConfig, pruned: PruneMarker | None = None) -> Decision:
    """Requeue after the last (ended) attempt, or finish/fail/prune the run. `pruned`: the run's
    prune marker (RunDirectory.prune_marker): a pruned run is never requeued, however its last
    attempt ended (a stop signal or a crash may have beaten the prune request to it). An attempt
    that ended "pruned" whose marker --unprune removed since is requeued outside every budget."""
    last = attempts[-1]
    if last.end_reason == "finished":
        return Decision(False, f"finished at step {last.end_step}", "finished")
    if pruned is not None:
        return Decision(False, f"{prune_reason(pruned)}; stopped at step {last.end_step}, not requeued", "pruned")
    if last.end_reason == "pruned":
        return Decision(True, f"pruned at step {last.end_step}, unpruned since: requeue (no budget used)")
    if last.end_reason == "paused":  # its status says paused (the job wrote it); the sweep resubmits it when promoted
        return Decision(False, f"paused at rung {last.end_step}: not requeued, holds nothing until promoted")
    if last.end_reason not in CATEGORY:  # an open attempt (another job may be running this run) or an unknown reason
        return Decision(
            False,
            f"attempt {last.number} has no known end reason ({last.end_reason!r}): another job may be running this run, "
            "so it is not requeued and its status is left as is (submit it again to resume once no job of it runs)",
        )
    category = CATEGORY[last.end_reason]
    if category is None:
        return Decision(False, f"{last.end_reason} at step {last.end_step} from outside: nothing is requeued")
    lines = (last.error or "").strip().splitlines()
    cause = lines[-1].split(":", 1)[-1].strip().rstrip(".") if lines else ""  # the exception's own line
    if last.end_reason == "crashed" and (hopeless := HOPELESS.get((failure_signature(last)[1] or "").rsplit(".", 1)[-1])):
        return Decision(False, f"{cause}. Not requeued: {hopeless}", "failed")
    if category == "failure" and len(attempts) >= 2:
        before = attempts[-2]
        if before.end_step == last.end_step and failure_signature(before) == failure_signature(last):
            return Decision(
                False,
                f"breaker: attempts {before.number} and {last.number} both failed at step {last.end_step} the same way "
                f"({' '.join(filter(None, failure_signature(last)))}); resuming does not help (see their logs and errors)"
                + (f". The error: {cause}" if cause else ""),  # the cause on the terminal, not only in the logs
                "failed",
            )
    used = Counter(CATEGORY.get(a.end_reason) for a in attempts)[category]
    allowed = budget(cluster, category)
    if used > allowed:
        return Decision(False, f"{category} budget exhausted: {used} {category}s, cluster.max_{category}s={allowed}", "failed")
    return Decision(True, f"{last.end_reason} at step {last.end_step}: requeue ({category} {used} of {allowed})")


def slurm_job_id() -> str:
    """The id that `scontrol requeue` takes: <array job>_<task> inside an array, else the job id."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def attempt_key(job_id: str) -> str:
    return f"{job_id}/{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def finalize_attempt(
    run: RunDirectory, job_id: str, exit_code: int, cluster: ClusterConfig, signal_log: str | None, outside: str | None
) -> list[Attempt]:
    """Make sure the attempt that just ran has an end record: the job writes one unless it died
    (kill -9, a signal before its handlers, watchdog exit, segfault) or never got as far as
    recording its start; then it is inferred (launch.postmortem). `outside`: the reason the
    scheduler ended the job, when the batch shell got SIGTERM. Returns all of the run's attempts
    as now recorded (read once; updated in place)."""
    key = attempt_key(job_id)
    attempts = run.attempts()
    if not attempts or attempts[-1].key != key:  # the ranks died before rank 0 recorded the attempt
        close_unrecorded(run, attempts, cluster, key)
        end = os.environ.get("SLURM_JOB_END_TIME")
        start = run.last_checkpoint_step() or 0
        attempts.append(
            run.begin_attempt(
                job_id, key, [], start, previous=attempts, signal_log=signal_log, deadline=float(end) if end else None
            )
        )
    last = attempts[-1]
    if last.end_reason is None:
        ending = infer_end(run, last, cluster, exit_code=exit_code, outside=outside)
        run.end_attempt(
            last,
            ending.reason,
            ending.step,
            when=time.time(),  # srun just returned
            exit_code=exit_code,
            error=f"ranks exited with status {exit_code} before recording an end",
            inferred=f"by the teardown: {ending.evidence}",
            stop_signal=ending.stop_signal,
            stop_time=ending.stop_time,
        )
    return attempts


def apply(run: RunDirectory, decision: Decision, requeue_command: list[str] | None) -> None:
    log.info("run %s: %s", run.path.name, decision.reason)
    if decision.requeue:
        if requeue_command:
            subprocess.run(requeue_command, check=True, timeout=60)
        return
    if decision.final_state is not None:
        marker = run.prune_marker() if decision.final_state == "pruned" else None
        run.set_status(decision.final_state, decision.reason, pruned=marker)


def run_of_this_job(folder: Path) -> RunDirectory:
    """The run directory of this (array task of a) job, from the folder's runs.json."""
    runs = json.loads((folder / RUNS_FILE).read_text())
    return RunDirectory(runs[int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))])


@dataclass
class Teardown:
    """What the teardown of a SLURM batch script (launch.batch: `python -m MODULE --folder F
    --exit-code N` after srun) starts from."""

    folder: Path  # the job's submitit folder
    exit_code: int  # srun's exit status
    job_id: str  # the id `scontrol requeue` takes (slurm_job_id)
    run: RunDirectory  # the run this job (array task) belongs to
    signal_log: str | None  # the stop signals the batch shell received, one per line (RSP_SIGNAL_LOG)
    signals: list[tuple[str, float]]  # that log, read
    restarts: int  # how often SLURM has restarted the job (SLURM_RESTART_COUNT)


def begin_teardown(argv: Sequence[str] | None, description: str, name: str) -> Teardown:
    """The common start of both teardowns (a training job's, below; an evaluation job's,
    launch/evaluations/teardown.py): arguments, logging (lines tagged `name`), and what they read."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--folder", required=True, help="submitit folder of the job")
    parser.add_argument("--exit-code", type=int, required=True, help="srun's exit status")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s: %(message)s")
    folder, signal_log = Path(args.folder), os.environ.get("RSP_SIGNAL_LOG")
    return Teardown(
        folder=folder,
        exit_code=args.exit_code,
        job_id=slurm_job_id(),
        run=run_of_this_job(folder),
        signal_log=signal_log,
        signals=read_signal_log(signal_log),
        restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
    )


def main(argv: Sequence[str] | None = None) -> int:
    job = begin_teardown(argv, "SLURM teardown: record the attempt's end and requeue or finish the run", "requeue")
    run = job.run
    cluster = run.config().cluster
    outside = None
    if first(job.signals, "TERM") is not None:  # the scheduler ends this job itself: it requeues or cancels it
        deadline = float(os.environ["SLURM_JOB_END_TIME"]) if "SLURM_JOB_END_TIME" in os.environ else None
        outside = ended_from_outside(os.environ["SLURM_JOB_ID"], job.restarts, deadline, first(job.signals, "USR2"), cluster)
    attempts = finalize_attempt(run, job.job_id, job.exit_code, cluster, job.signal_log, outside)
    if outside is not None:
        log.info(
            "run %s: ended from outside (%s at step %s); the scheduler decides", run.path.name, outside, attempts[-1].end_step
        )
        return 0
    apply(run, decide(run.policy_attempts(attempts), cluster, run.prune_marker()), ["scontrol", "requeue", job.job_id])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
