"""Pruned runs that no job of theirs will stop: launch/advance.py calls `end_pruned_without_jobs`
after deciding a sweep's rungs (synchronous or asynchronous). A prune marker is obeyed by the run's
training job (launch/job.py PruneWatch); two kinds of pruned run have no such job:

- a run paused at a rung of an asynchronous sweep (launch/sweeps/async_rungs.py): its status becomes
  `pruned` at once;
- a run whose job waits in the queue (pending, or requeued and pending again): the job is cancelled
  now (`scancel`), not left to start only to stop after one step, and the run is `pruned`.

One scheduler query per backend for all the sweep's pruned runs still without a final status."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from launch.backends import BACKENDS, backend_class
from launch.rundir import RunDirectory
from launch.sweeps.rungs import SweepDirectory

QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING")
PAUSED = "paused"  # the run status (status.json) of a run waiting at a rung, holding no allocation


def end_pruned_without_jobs(sweep: SweepDirectory) -> list[str]:
    """End the sweep's pruned runs that have no job to obey their marker; returns what was cancelled
    ("lr0.1 job 124")."""
    waiting: dict[str, list[tuple[RunDirectory, str]]] = defaultdict(list)
    for run in sweep.members().values():
        marker = run.prune_marker() if run.exists else None
        state = run.final_state() if marker is not None else None
        if marker is None or state not in (None, PAUSED):
            continue
        if state == PAUSED:
            run.set_status("pruned", f"{marker.reason()}; it was paused at the rung", pruned=marker)
            continue
        last = run.last_submission()
        if last is not None and backend_class(last.backend).tracks_jobs:  # only a scheduler's jobs can be queued
            waiting[last.backend].append((run, last.job_id))
    cancelled = []
    for backend_name, jobs in waiting.items():
        backend = BACKENDS[backend_name](Path(sweep.path))
        states = backend.states([job_id for _, job_id in jobs])
        queued = [(run, job_id) for run, job_id in jobs if states.get(job_id) in QUEUED]
        if queued:
            backend.cancel([job_id for _, job_id in queued])
        for run, job_id in queued:
            marker = run.prune_marker()
            run.set_status("pruned", f"{marker.reason()}; its queued job {job_id} was cancelled", pruned=marker)
            cancelled.append(f"{run.path.name} job {job_id}")
    return cancelled
