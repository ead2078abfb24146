"""Lost evaluations: found with one batched scheduler query, resubmitted within a budget.

An evaluation is claimed (submitted.json) before its job runs. Its job then writes a record, or
fails (failed.json), or is stopped and requeued by its teardown (launch/evaluations/teardown.py).
When the job vanishes without a word (scancel, a time limit or a node failure that killed its
teardown too), the claim stays with neither: the evaluation is *lost*. `evaluation_states` gives
every expected evaluation of many runs its state with one scheduler call per backend; `recover`
submits a new job for each lost one, at most evaluation.max_resubmissions times, then gives it up
(failed.json naming the lost jobs; its checkpoint's pin released).

Called through launch/advance.py, the one owner of state transitions: before every scheduling of
evaluations (the training job's milestones, each attempt's start, backfill), by status (unless
--no-advance), by follow and by the SLURM watcher job. A record that is invalid (unreadable,
truncated, out of range, of other weights: claims.record_problem) is `invalid`, not recorded and not
lost: a backfill moves it aside and evaluates again.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.backends import BACKENDS, backend_class
from launch.evaluations.claims import (
    FAILED,
    SUBMITTED,
    failure,
    is_failed,
    is_recorded,
    is_stopped,
    mark_failed,
    record_problem,
    release,
    submission,
)
from launch.evaluations.expected import expected
from launch.rundir import RunDirectory
from launch.slurm_queries import ACTIVE_STATES

log = logging.getLogger(__name__)

SUBMIT_GRACE_S = 600  # a claim whose submission never recorded a job id is lost after this long


@dataclass
class EvaluationState:
    run: RunDirectory
    step: int
    task: str
    directory: Path
    state: str  # recorded | invalid | failed | unclaimed | submitting | pending | running | lost
    job_id: str | None = None
    backend: str | None = None
    detail: str = ""


def evaluation_states(runs: Sequence[RunDirectory]) -> list[EvaluationState]:
    """Every expected evaluation of `runs` with its state: one scheduler query per backend for all
    the jobs still claimed, however many runs and checkpoints."""
    states, claimed = [], defaultdict(set)
    for run in runs:
        manifests, run_id = run.manifests(), run.info().run_id
        by_step = {m.step: m for m in manifests}
        for step, task, directory in expected(run, manifests=manifests):
            state = EvaluationState(run, step, task, directory, "unclaimed")
            if is_recorded(directory):
                problem = record_problem(directory, run_id, by_step.get(step))
                state.state, state.detail = ("invalid", problem) if problem else ("recorded", "")
            elif is_failed(directory):
                state.state, state.detail = "failed", _first_line(directory / FAILED)
            elif (directory / SUBMITTED).is_file():
                sub = submission(directory)
                state.job_id, state.backend = sub.job_id, sub.backend
                if state.job_id and backend_class(state.backend).tracks_jobs:
                    claimed[state.backend].add(state.job_id)
                state.state = "claimed"
            states.append(state)
    scheduler: dict[str, str] = {}
    for backend, ids in claimed.items():
        scheduler.update(BACKENDS[backend](Path(".")).states(sorted(ids)))
    for state in states:
        if state.state == "claimed":
            _resolve(state, scheduler)
    return states


def _resolve(state: EvaluationState, scheduler: dict[str, str]) -> None:
    sub = submission(state.directory)
    resubmitted = f", a resubmission after lost job(s) {', '.join(sub.lost)}" if sub.lost else ""
    if state.job_id is None:
        age = time.time() - (state.directory / SUBMITTED).stat().st_mtime
        state.state = "lost" if age > SUBMIT_GRACE_S else "submitting"
        state.detail = f"claimed {age:.0f} s ago, no job recorded"
        return
    if backend_class(state.backend).in_process:  # it ended with the process that ran it
        state.state, state.detail = "lost", "its in-process (debug) job ended without a record"
        return
    sched = scheduler.get(state.job_id, "UNKNOWN")
    if is_recorded(state.directory):  # its job wrote the record and ended after the first look
        state.state = "recorded"
        return
    if sched in ACTIVE_STATES:
        waiting = sched in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING")
        state.state = "pending" if waiting else "running"
        state.detail = (
            f"job {state.job_id} is {sched}" + (" (stopped, requeued)" if is_stopped(state.directory) else "") + resubmitted
        )
    else:
        state.state, state.detail = "lost", f"job {state.job_id} ended ({sched}) without a record{resubmitted}"


def _first_line(path: Path) -> str:
    try:
        found = failure(path.parent)
        lines = [line for line in found.error.strip().splitlines() if line.strip()] if found else []
    except ValueError:  # rsp.schema.ConfigError: unreadable or of another format
        return "see failed.json"
    return lines[-1] if lines else "see failed.json"


@dataclass(frozen=True)
class Resubmission:
    """A lost evaluation submitted again; prints as "<run> step <step> <task> as job <job>"."""

    run: str  # run directory name
    step: int
    task: str
    job: str

    def __str__(self) -> str:
        return f"{self.run} step {self.step} {self.task} as job {self.job}"


def recover(states: Sequence[EvaluationState]) -> tuple[list[Resubmission], list[str]]:
    """Resubmit the lost evaluations among `states` (evaluation_states) within their run's budget,
    give up on the others. Returns (the resubmissions, descriptions of the given up)."""
    todo: dict[RunDirectory, dict[int, list[tuple[str, Path]]]] = defaultdict(dict)
    lost_jobs: dict[Path, list[str]] = {}
    backend_of: dict[RunDirectory, str] = {}
    resubmitted, given_up = [], []
    for state in states:
        if state.state != "lost" or backend_class(state.backend).in_process:
            continue
        run, directory = state.run, state.directory
        lost = [*submission(directory).lost, state.job_id or "no job"]
        if not _take_over(directory, state.job_id):
            continue  # another recovery (a second status, a backfill) has it
        budget = run.config().evaluation.max_resubmissions
        if len(lost) > budget:
            mark_failed(
                directory,
                f"lost {len(lost)} times: its jobs ({', '.join(lost)}) ended without a record or an error, more than "
                f"evaluation.max_resubmissions ({budget}); see their logs in {run.path / 'evals' / '.jobs'}; "
                "`python -m launch.evaluations backfill --retry-failed` submits it again",
            )
            release(run, state.step, directory)
            given_up.append(f"{run.path.name} step {state.step} {state.task}")
            continue
        todo[run].setdefault(state.step, []).append((state.task, directory))
        lost_jobs[directory] = lost
        backend_of[run] = state.backend or run.backend()
    for run, items in todo.items():
        # submitting imports the evaluation job, hence torch: only when something was lost
        from launch.evaluations.dispatch import submit_evaluations

        submit_evaluations(run, run.config(), items, backend_of[run], lost_jobs)
        for step, pairs in sorted(items.items()):
            for task, directory in pairs:
                resubmitted.append(Resubmission(run.path.name, step, task, submission(directory).job_id))
    for line in resubmitted:
        log.info("resubmitted lost evaluation: %s", line)
    for line in given_up:
        log.warning("gave up on lost evaluation: %s", line)
    return resubmitted, given_up


def _take_over(directory: Path, job_id: str | None) -> bool:
    """Claim the recovery of the lost job `job_id` of this evaluation exclusively."""
    try:
        os.close(os.open(directory / f"recovering-{job_id}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True
