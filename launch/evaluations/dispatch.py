"""Handing claimed evaluations to a backend: their resources (a lifecycle batch script whose
teardown is launch/evaluations/teardown.py, a stop signal that fits their time limit), one job per
task on SLURM or one per checkpoint elsewhere, and the claim updated with the job id. Used by the
scheduling of new evaluations and by the recovery of lost ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from launch.backends import Resources, make_backend
from launch.config import RunConfig
from launch.evaluations.claims import mark_submitted
from launch.evaluations.job import EvaluationJob
from launch.rundir import RunDirectory
from launch.snapshot import Snapshot


def evaluation_resources(run: RunDirectory, cfg: RunConfig) -> Resources:
    e = cfg.evaluation
    return Resources(
        nodes=1,
        tasks_per_node=1,
        gpus_per_node=e.gpus,
        cpus_per_task=e.cpus_per_task,
        mem_gb=e.mem_gb,
        time_minutes=e.time_minutes,
        signal_delay_s=e.signal_delay_s,
        partition=cfg.cluster.partition,
        account=cfg.cluster.account,
        qos=cfg.cluster.qos,
        job_name=f"eval-{run.path.name}",
        teardown="launch.evaluations.teardown",
    )


def submit_evaluations(
    run: RunDirectory,
    cfg: RunConfig,
    todo: dict[int, list[tuple[str, Path]]],
    backend_name: str,
    lost: dict[Path, Sequence[str]] | None = None,
) -> list[str]:
    """Submit the claimed evaluations `todo` (step -> [(task, directory)]); `lost`: directory ->
    the jobs of it that vanished before (a resubmission). Returns the job ids."""
    resources = evaluation_resources(run, cfg)
    backend = make_backend(backend_name, run.path / "evals" / ".jobs", snapshot_of(run))
    ids = []
    for step, items in sorted(todo.items()):
        groups = [[t] for t, _ in items] if backend.evaluation_job_per_task else [[t for t, _ in items]]
        for tasks in groups:
            job_ids = backend.submit([EvaluationJob(str(run.path), step, tasks)], resources)
            ids += job_ids
            for task, directory in items:
                if task in tasks:
                    mark_submitted(directory, job_ids[0], backend_name, (lost or {}).get(directory, ()))
    return ids


def snapshot_of(run: RunDirectory) -> Snapshot | None:
    """The code snapshot the run's training was submitted with: its evaluations run the same code."""
    last = run.last_submission()
    return Snapshot(Path(last.snapshot), last.code_version) if last and last.snapshot else None
