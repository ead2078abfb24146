"""What state a run is in, from its directory plus one batched scheduler query for all runs.

    missing     no run directory yet
    pending     its job waits in the queue          (scheduler says so)
    running     its job runs                        (scheduler says so)
    finished    status.json says finished           (the run directory says so)
    failed      status.json says failed             (budget exhausted or breaker tripped)
    pruned      a sweep's successive halving pruned it (pruned.json) and no job of it is alive:
                never resubmitted, except by `--unprune` (launch/sweeps/rungs.py)
    paused      status.json says paused: it waits at a rung of an asynchronous sweep with no job
                alive; resubmitted by the sweep when promoted (launch/sweeps/async_rungs.py), never
                by a submit
    incomplete  started, not finished, no job alive (killed from outside, or a requeue was lost):
                submitting it again resumes from its newest valid checkpoint

Never duplicating a run rests on this: submit only `missing` and `incomplete` runs (and `failed`
ones when asked), never `pending`, `running` or `finished` ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.backends import BACKENDS, backend_class
from launch.rundir import RunDirectory, prune_reason
from launch.slurm_queries import ACTIVE_STATES

SUBMITTABLE = ("missing", "incomplete")


@dataclass
class RunState:
    run: RunDirectory
    state: str
    job_id: str | None = None
    detail: str = ""


def last_job(run: RunDirectory) -> tuple[str | None, str | None]:
    last = run.last_submission()
    return (last.backend, last.job_id) if last else (None, None)


def reconcile(runs: Sequence[RunDirectory], folder: Path | None = None) -> list[RunState]:
    """States of many runs: one scheduler call per backend, however many runs. Runs whose
    status.json is final are not asked about: their directory already says how they ended."""
    jobs_by_backend: dict[str, list[str]] = defaultdict(list)
    known = []
    for run in runs:
        status = run.status() if run.exists else None
        backend, job_id = last_job(run) if run.exists else (None, None)
        known.append((run, status, job_id))
        if status is None and job_id and backend_class(backend).tracks_jobs:
            jobs_by_backend[backend].append(job_id)
    scheduler = {}
    for backend, ids in jobs_by_backend.items():
        scheduler.update(BACKENDS[backend](folder or Path(".")).states(ids))
    return [_state_of(run, status, job_id, scheduler) for run, status, job_id in known]


def _state_of(run: RunDirectory, status: dict | None, job_id: str | None, scheduler: dict) -> RunState:
    if not run.exists:
        return RunState(run, "missing", detail="not submitted yet")
    if status is not None:
        return RunState(run, status.state, job_id, status.reason)
    sched = scheduler.get(job_id)
    marker = run.prune_marker()
    if sched in ACTIVE_STATES:
        state = "pending" if sched in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING") else "running"
        stopping = f"; pruned at step {marker.rung}, stopping" if marker else ""
        return RunState(run, state, job_id, f"job {job_id} is {sched}{stopping}")
    if marker is not None:  # its job ended (or was killed) before it could record the status
        return RunState(run, "pruned", job_id, prune_reason(marker))
    detail = f"job {job_id} ended ({sched})" if job_id else "no job recorded"
    return RunState(run, "incomplete", job_id, f"{detail} before the run finished; resubmit to resume")
