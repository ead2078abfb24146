"""Handing runs to a backend: their resources, the data they generate at submit time, the code
snapshot, their run directories, one job per run (a sweep's runs as job arrays), and a record of
each submission. The front door (launch/submit.py) and a sweep's plan (launch/plan.py) submit
through here, after validation."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval.tasks import get_task
from launch.backends import Backend, Resources, make_backend, max_array_size
from launch.config import RunConfig
from launch.job import TrainingJob
from launch.rundir import RunDirectory, run_id, slug
from launch.snapshot import take_snapshot
from rsp.synthetic import ensure_synthetic_dataset


def resources_for(cfg: RunConfig) -> Resources:
    # A slug: sbatch reads #SBATCH lines itself, and a newline in a job name would split one.
    return Resources.from_cluster(cfg.cluster, job_name=f"{slug(cfg.name)}-{run_id(cfg)}")


def ensure_generated_data(cfg: RunConfig) -> None:
    """Smoke-style runs generate their data at submit time, once (idempotent): the training videos
    (data.synthetic_videos) and each evaluation task's generated set (evaluation.synthetic)."""
    if cfg.data.synthetic_videos:
        ensure_synthetic_dataset(cfg.data.root, cfg.data.synthetic_videos, scene=cfg.data.synthetic_scene)
    if cfg.evaluation.synthetic:
        for task in cfg.evaluation.tasks:
            get_task(task).ensure_generated(cfg.evaluation.data_roots[task])


def array_chunks(resources: Sequence[Resources], limit: int) -> list[list[int]]:
    """Indices of runs grouped by identical resources, each group split into arrays of <= limit."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(resources):
        groups.setdefault(r.group_key(), []).append(i)
    return [idx[s : s + limit] for idx in groups.values() for s in range(0, len(idx), limit)]


def submit_arrays(backend: Backend, jobs: Sequence[Callable[[], Any]], resources: Sequence[Resources]) -> list[str]:
    """One submission per chunk (SLURM: one sbatch of an array); returns job ids in `jobs` order."""
    limit = max_array_size() if backend.name == "slurm" else len(jobs) or 1
    ids: list[str | None] = [None] * len(jobs)
    for chunk in array_chunks(resources, limit):
        first = resources[chunk[0]]
        shared = Resources(**{**first.__dict__, "job_name": first.job_name.rsplit("-", 1)[0]})
        for i, job_id in zip(chunk, backend.submit([jobs[i] for i in chunk], shared), strict=True):
            ids[i] = job_id
    return ids  # type: ignore[return-value]


def submit_runs(
    cfgs: Sequence[RunConfig],
    runs: Sequence[RunDirectory],
    resources: Sequence[Resources],
    backend_name: str,
    output_root: Path,
) -> list[str]:
    """Snapshot the code once, create the run directories (`runs`, one per config:
    RunDirectory.for_config), submit one job per run with its `resources` (resources_for; SLURM:
    one array per group of identical resources), record each submission."""
    snapshot = take_snapshot(output_root / ".code")
    folder = output_root / ".jobs" / time.strftime("%Y%m%d-%H%M%S")
    backend = make_backend(backend_name, folder, snapshot)
    for run, cfg in zip(runs, cfgs, strict=True):
        run.create(cfg)
        if run.final_state() == "failed":
            run.clear_status()
            run.reset_budgets()
    jobs = [TrainingJob(str(run.path), backend_name) for run in runs]
    job_ids = backend.submit(jobs, resources[0]) if len(cfgs) == 1 else submit_arrays(backend, jobs, resources)
    for run, job_id in zip(runs, job_ids, strict=True):
        run.record_submission(backend_name, job_id, snapshot.version, str(snapshot.path), str(folder))
    return job_ids
