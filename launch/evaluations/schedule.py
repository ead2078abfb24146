"""Submitting the evaluations that are due: called by the training job (rank 0) when a milestone is
durable and at the start of every attempt, and by a backfill. Each evaluation is claimed before it is
submitted (launch/evaluations/claims.py), so concurrent schedulers never submit one twice."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from launch.backends import Resources, make_backend
from launch.evaluations.claims import claim_and_pin, is_recorded, mark_submitted, reopen_failed
from launch.evaluations.expected import expected
from launch.evaluations.job import EvaluationJob
from launch.rundir import RunDirectory
from launch.snapshot import Snapshot


def schedule_for_checkpoint(run: RunDirectory, step: int | None, backend: str) -> None:
    """Called by the training job (rank 0) when milestone `step` is durable, and with step=None at
    the start of every attempt (milestones a killed attempt committed but could not schedule).
    Submission runs in a subprocess with the job's own SLURM_* variables removed, so they cannot
    leak into the evaluation jobs."""
    if backend == "debug":
        schedule(run, None if step is None else [step], "debug")
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_")) or k == "SLURM_CONF"}
    steps = [] if step is None else ["--step", str(step)]
    cmd = [sys.executable, "-m", "launch.evaluations", "schedule", str(run.path), *steps, "--backend", backend]
    # Output to a file, not a pipe: the local backend's evaluation job inherits the scheduler's
    # streams, and reading a pipe to its end would wait for the whole evaluation (and the next
    # checkpoint of the training job would wait for this hook).
    with tempfile.TemporaryFile("w+") as output:
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
    todo: dict[int, list[tuple[str, Path]]] = {}
    for step, task, directory in expected(run, cfg, all_checkpoints):
        if steps is not None and step not in steps or is_recorded(directory):
            continue
        if retry_failed:
            reopen_failed(directory)
        if claim_and_pin(run, step, directory):
            todo.setdefault(step, []).append((task, directory))
    if not todo:
        return []
    e = cfg.evaluation
    resources = Resources(
        nodes=1,
        tasks_per_node=1,
        gpus_per_node=e.gpus,
        cpus_per_task=e.cpus_per_task,
        mem_gb=e.mem_gb,
        time_minutes=e.time_minutes,
        partition=cfg.cluster.partition,
        account=cfg.cluster.account,
        qos=cfg.cluster.qos,
        job_name=f"eval-{run.path.name}",
        requeue_teardown=False,
    )
    backend = make_backend(backend_name, run.path / "evals" / ".jobs", _snapshot_of(run))
    ids = []
    for step, items in sorted(todo.items()):
        groups = [[t] for t, _ in items] if backend_name == "slurm" else [[t for t, _ in items]]
        for tasks in groups:
            job_ids = backend.submit([EvaluationJob(str(run.path), step, tasks)], resources)
            ids += job_ids
            for task, directory in items:
                if task in tasks:
                    mark_submitted(directory, job_ids[0], backend_name)
    return ids


def backfill(output_root: Path, backend: str | None, retry_failed: bool, all_checkpoints: bool) -> dict[str, list[str]]:
    """Schedule what every run under `output_root` lacks, each on `backend` (None: its own)."""
    submitted = {}
    for path in sorted(output_root.glob("*/run.json")):
        run = RunDirectory(path.parent)
        name = backend or (run.last_submission() or {"backend": "local"})["backend"]
        submitted[run.path.name] = schedule(run, None, name, retry_failed, all_checkpoints)
    return submitted


def _snapshot_of(run: RunDirectory) -> Snapshot | None:
    """The code snapshot the run's training was submitted with: its evaluations run the same code."""
    last = run.last_submission()
    return Snapshot(Path(last["snapshot"]), last["code_version"]) if last and last.get("snapshot") else None
