"""Handing runs to a backend: their resources, the data they generate at submit time, the code
snapshot, their run directories, one job per run (a sweep's runs as job arrays), and a record of
each submission. The front door (launch/submit.py) and a sweep's plan (launch/plan.py) submit
through here, after validation.

At most once under any concurrency: a submit decides from the runs' states (launch/runstate.py),
then takes each run's claim (`claimed`) and, holding it across "check again + create + submit +
record", submits only the runs whose state is still the one it decided on (`still_as_decided`).
Two submits of the same run or sweep at the same moment thus give one job per run: the second
waits for the first's claims, then finds its jobs recorded and leaves those runs alone."""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from core.atomicio import size_text
from core.schema import ConfigError
from eval.registry import get_task
from launch.backends import Backend, Resources, make_backend
from launch.config import RunConfig
from launch.job import TrainingJob
from launch.rundir import RunDirectory, run_id, slug
from launch.runstate import RunState, reconcile
from launch.snapshot import take_snapshot
from rsp.synthetic import ensure_synthetic_dataset

CLAIMS_DIR = ".claims"  # under the output root: one lock file per run id


def resources_for(cfg: RunConfig) -> Resources:
    # A slug: sbatch reads #SBATCH lines itself, and a newline in a job name would split one.
    return Resources.from_cluster(cfg.cluster, job_name=f"{slug(cfg.name)}-{run_id(cfg)}")


def ensure_generated_data(cfg: RunConfig) -> None:
    """Smoke-style runs generate their data at submit time, once (idempotent): the training videos
    (data.synthetic_videos) and each evaluation task's generated set (evaluation.synthetic)."""
    if cfg.data.synthetic_videos:
        with generating(cfg.data.root, f"data.synthetic_videos={cfg.data.synthetic_videos}", "data.root"):
            ensure_synthetic_dataset(
                cfg.data.root, cfg.data.synthetic_videos, scene=cfg.data.synthetic_scene, sources=cfg.data.natural_sources
            )
    if cfg.evaluation.synthetic:
        for task in cfg.evaluation.tasks:
            root = cfg.evaluation.data_roots[task]
            with generating(root, f"the generated {task} set", f"evaluation.data_roots.{task}"):
                get_task(task).ensure_generated(root)


@contextmanager
def generating(root: str, what: str, key: str) -> Iterator[None]:
    """A disk that fills (or fails) while generated data is written at submit time: a ConfigError
    naming the folder, the free space and the fix, never a traceback. Nothing is queued yet, and
    the set is completed by the next submit (it is complete only once its labels file is written)."""
    try:
        yield
    except OSError as exc:
        free = shutil.disk_usage(root).free if Path(root).exists() else 0
        raise ConfigError(
            [
                f"writing {what} under {key} {root} failed: {exc.strerror or exc} ({size_text(free)} free there); "
                f"free space there or point {key} at another folder, then submit again"
            ],
            what="generated data (nothing was submitted)",
        ) from exc


@contextmanager
def claimed(cfgs: Sequence[RunConfig]) -> Iterator[None]:
    """Hold the submit claim of each run of `cfgs`: an exclusive flock on
    `<output root>/.claims/<run id>.lock`, taken in a fixed order (two overlapping sweeps cannot
    deadlock) and released when the block ends, however it ends (the kernel drops an flock with
    its process, kill -9 included). flock works across machines on NFSv4 (Linux maps it to a
    POSIX lock there)."""
    paths = sorted({Path(cfg.output_root) / CLAIMS_DIR / f"{run_id(cfg)}.lock" for cfg in cfgs})
    with ExitStack() as held:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = held.enter_context(path.open("a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def still_as_decided(decided: Sequence[RunState], output_root: Path) -> list[RunState | None]:
    """For each run: None when its state and last job are still those `decided` (nobody submitted it
    since), else its state now. Call while holding the runs' claims."""
    now = reconcile([d.run for d in decided], output_root)
    return [None if (n.state, n.job_id) == (d.state, d.job_id) else n for d, n in zip(decided, now, strict=True)]


def array_chunks(resources: Sequence[Resources], limit: int) -> list[list[int]]:
    """Indices of runs grouped by identical resources, each group split into arrays of <= limit."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(resources):
        groups.setdefault(r.group_key(), []).append(i)
    return [idx[s : s + limit] for idx in groups.values() for s in range(0, len(idx), limit)]


def submit_arrays(backend: Backend, jobs: Sequence[Callable[[], Any]], resources: Sequence[Resources]) -> list[str]:
    """One submission per chunk (SLURM: one sbatch of an array); returns job ids in `jobs` order."""
    limit = backend.max_array_size(len(jobs))
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
    slot_folder: Path | None = None,
) -> list[str]:
    """Snapshot the code once, create the run directories (`runs`, one per config:
    RunDirectory.for_config), submit one job per run with its `resources` (resources_for; SLURM:
    one array per group of identical resources), record each submission. `slot_folder`: the local
    backend's slots to wait for (a resumed run's: those of its first submission)."""
    snapshot = take_snapshot(output_root / ".code")
    folder = output_root / ".jobs" / time.strftime("%Y%m%d-%H%M%S")
    backend = make_backend(backend_name, folder, snapshot)
    backend.slot_folder = slot_folder
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
