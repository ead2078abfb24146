"""Submitting the evaluations that are due: called by the training job (rank 0) when a milestone is
durable and at the start of every attempt, and by a backfill. Each evaluation is claimed before it is
submitted (launch/evaluations/claims.py), so concurrent schedulers never submit one twice; lost ones
(their job vanished without a record) are resubmitted first (launch/evaluations/recovery.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from launch.backends import backend_class
from launch.evaluations.claims import claim_and_pin, is_recorded, reopen_failed
from launch.evaluations.expected import expected
from launch.evaluations.recovery import evaluation_states, recover
from launch.evaluations.submitting import submit_evaluations
from launch.rundir import RunDirectory
from rsp.lifecycle import blocked_stop_signals


def schedule_for_checkpoint(run: RunDirectory, step: int | None, backend: str) -> None:
    """Called by the training job (rank 0) when milestone `step` is durable, and with step=None at
    the start of every attempt (milestones a killed attempt committed but could not schedule).
    Submission runs in a subprocess with the job's own SLURM_* variables removed, so they cannot
    leak into the evaluation jobs."""
    if backend_class(backend).in_process:
        schedule(run, None if step is None else [step], backend)
        return
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_", "RSP_SIGNAL")) or k == "SLURM_CONF"
    }
    steps = [] if step is None else ["--step", str(step)]
    cmd = [sys.executable, "-m", "launch.evaluations", "schedule", str(run.path), *steps, "--backend", backend]
    # Output to a file, not a pipe: the local backend's evaluation job inherits the scheduler's
    # streams, and reading a pipe to its end would wait for the whole evaluation (and the next
    # checkpoint of the training job would wait for this hook).
    with tempfile.TemporaryFile("w+") as output:
        with blocked_stop_signals():  # the job's stop signals reach every process of it: not this short one
            proc = subprocess.run(cmd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True, timeout=300)
        if proc.returncode != 0:
            output.seek(0)
            raise RuntimeError(f"scheduling evaluations of step {step} failed: {output.read()[-2000:]}")


def schedule(
    run: RunDirectory,
    steps: Sequence[int] | None,
    backend_name: str,
    retry_failed: bool = False,
    all_checkpoints: bool = False,
) -> list[str]:
    """Submit the evaluations of `steps` (None: every checkpoint due) that were never submitted
    (and, with retry_failed, those that failed). Returns the job ids."""
    cfg = run.config()
    if not backend_class(backend_name).in_process:
        recover(evaluation_states([run]))  # lost evaluations (their job vanished) first: one scheduler query
    todo: dict[int, list[tuple[str, Path]]] = {}
    for step, task, directory in expected(run, cfg, all_checkpoints):
        if steps is not None and step not in steps or is_recorded(directory):
            continue
        if retry_failed:
            reopen_failed(directory)
        if claim_and_pin(run, step, directory):
            todo.setdefault(step, []).append((task, directory))
    return submit_evaluations(run, cfg, todo, backend_name) if todo else []


def backfill(output_root: Path, backend: str | None, retry_failed: bool, all_checkpoints: bool) -> dict[str, list[str]]:
    """Schedule what every run under `output_root` lacks, each on `backend` (None: its own)."""
    submitted = {}
    for path in sorted(output_root.glob("*/run.json")):
        run = RunDirectory(path.parent)
        name = backend or (run.last_submission() or {"backend": "local"})["backend"]
        submitted[run.path.name] = schedule(run, None, name, retry_failed, all_checkpoints)
    return submitted
