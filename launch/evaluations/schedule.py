"""Submitting the evaluations that are due, for launch/advance.py (the one owner of state
transitions: the training job's milestone hook and a backfill reach this through it). Each
evaluation is claimed before it is submitted (launch/evaluations/claims.py), so concurrent
schedulers never submit one twice. An invalid record (claims.record_problem) is moved aside first,
so that its evaluation runs again."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from launch.evaluations.claims import claim_and_pin, is_recorded, record_problem, reopen_failed, set_aside
from launch.evaluations.dispatch import submit_evaluations
from launch.evaluations.expected import expected
from launch.rundir import RunDirectory

log = logging.getLogger(__name__)


def schedule(
    run: RunDirectory,
    steps: Sequence[int] | None,
    backend_name: str,
    retry_failed: bool = False,
    all_checkpoints: bool = False,
) -> tuple[list[str], list[str]]:
    """Submit the evaluations of `steps` (None: every checkpoint due) that were never submitted
    (and, with retry_failed, those that failed). Returns (the job ids, the invalid records moved aside)."""
    cfg = run.config()
    manifests, run_id = run.manifests(), run.info().run_id
    by_step = {m.step: m for m in manifests}
    todo: dict[int, list[tuple[str, Path]]] = {}
    set_aside_now = []
    for step, task, directory in expected(run, cfg, all_checkpoints, manifests):
        if steps is not None and step not in steps:
            continue
        if is_recorded(directory):
            problem = record_problem(directory, run_id, by_step.get(step))
            if problem is None:
                continue
            target = set_aside(directory)
            log.warning("moved an invalid record aside to %s: %s", target, problem)
            set_aside_now.append(f"{run.path.name} step {step} {task}: {problem} (now {target.name})")
        if retry_failed:
            reopen_failed(directory)
        if claim_and_pin(run, step, directory):
            todo.setdefault(step, []).append((task, directory))
    return (submit_evaluations(run, cfg, todo, backend_name) if todo else []), set_aside_now
