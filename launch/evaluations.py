"""Evaluation jobs for every milestone checkpoint; each (run, step, task, protocol) at most once.

How they are scheduled (the README explains the choice): the training job itself, on rank 0,
submits them when a milestone checkpoint is durable, to the same backend (SLURM: one job per task;
local: one job per checkpoint running its tasks in turn, so a laptop is not oversubscribed; debug:
in-process). No watcher process has to stay alive, and a dependency on a job that has not written
its checkpoint yet is never needed.

- At most once: `<run>/evals/step_XXXXXXXX/<task>-<hash12>/submitted.json` is created with O_EXCL
  before submitting; a second scheduler (a requeued job, a backfill) sees it and skips.
- Requeue-safe: every attempt of the training job reconciles at start, so a milestone committed
  just before a kill still gets its evaluations.
- Backfill: `python -m launch.evaluations backfill [OUTPUT_ROOT] [--all-checkpoints] [--retry-failed]`.
- Retention: the checkpoint is pinned until its evaluations wrote a record or failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.records import RECORD_NAME
from launch.config import EvaluationConfig, RunConfig
from launch.rundir import RunDirectory
from rsp.atomicio import atomic_write_json
from rsp.manifest import Manifest, checkpoint_name

log = logging.getLogger(__name__)

SUBMITTED, FAILED = "submitted.json", "failed.json"


def eval_config_for(cfg: RunConfig, task: str, checkpoint: Path, output_dir: Path):
    return task_eval_config(cfg.evaluation, task, checkpoint=str(checkpoint), output_dir=str(output_dir))


def task_eval_config(e: EvaluationConfig, task: str, **paths: str):
    """The eval.config.EvalConfig of `task` under the evaluation settings `e`. `paths` (checkpoint,
    output_dir, data_root) set or replace the runtime-only paths; submit-time validation builds the
    config here too, with stand-in paths, so every field it sets is checked before anything runs."""
    from eval.config import EvalConfig
    from rsp.config import from_dict

    base = {
        "checkpoint_format": "ours",
        "task": task,
        "preset": e.presets.get(task, "auto"),
        "data_root": e.data_roots.get(task, ""),
        "device": e.device,
        **paths,
    }
    return from_dict(EvalConfig, {**base, **dict(e.overrides.get(task, {}))})


def eval_dir(run: RunDirectory, step: int, task: str, protocol_hash: str) -> Path:
    return run.path / "evals" / f"step_{step:08d}" / f"{task}-{protocol_hash[:12]}"


def expected(
    run: RunDirectory,
    cfg: RunConfig | None = None,
    all_checkpoints: bool = False,
    manifests: list[Manifest] | None = None,
) -> list[tuple[int, str, Path]]:
    """(step, task, directory) of every evaluation this run should have (`cfg` and `manifests`:
    the run's, when the caller already read them)."""
    from eval.protocol import protocol_hash

    cfg = cfg or run.config()
    out = []
    for manifest in run.manifests() if manifests is None else manifests:
        if not (manifest.milestone or all_checkpoints):
            continue
        for task in cfg.evaluation.tasks:
            ecfg = eval_config_for(cfg, task, run.path / "checkpoints" / manifest.file, Path("."))
            out.append((manifest.step, task, eval_dir(run, manifest.step, task, protocol_hash(ecfg))))
    return out


def evaluation_summary(run: RunDirectory, info: dict | None = None, manifests: list[Manifest] | None = None) -> tuple[int, int]:
    """(evaluations with a record, evaluations expected so far); `info` (run.json) and `manifests`:
    the run's, when the caller already read them."""
    try:
        todo = expected(run, run.config(info), manifests=manifests)
    except Exception:  # an unreadable config must not break a status table
        return 0, 0
    return sum((d / RECORD_NAME).is_file() for _, _, d in todo), len(todo)


def claim(directory: Path) -> bool:
    """Create submitted.json exclusively; False when another scheduler got there first."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / SUBMITTED, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write('{"job_id": null}\n')
    return True


@dataclass
class EvaluationJob:
    """Evaluates one checkpoint of one run on one or more tasks; writes one record per task."""

    run_dir: str
    step: int
    tasks: list[str]

    def __call__(self) -> list[str]:
        from eval.protocol import protocol_hash
        from eval.records import ResultRecord, write_record
        from eval.run import evaluate
        from launch.sweep import sweep_axes_of
        from rsp.provenance import code_version

        run = RunDirectory(self.run_dir)
        info = run.info()
        cfg = run.config(info)
        store = run.checkpoints
        checkpoint = store.dir / checkpoint_name(self.step)
        manifest = next((m for m in store.manifests() if m.step == self.step), None)
        written, failed = [], []
        for task in self.tasks:
            ecfg = eval_config_for(cfg, task, checkpoint, Path("."))
            phash = protocol_hash(ecfg)
            out = eval_dir(run, self.step, task, phash)
            ecfg.output_dir = str(out / "predictions")  # runtime-only: the hash stays
            started = time.time()
            try:
                if manifest is None or not checkpoint.is_file():
                    raise FileNotFoundError(
                        f"checkpoint step {self.step} of run {run.path} ({checkpoint}) vanished before its {task} "
                        "evaluation ran; it was deleted outside retention (pinned checkpoints are kept)"
                    )
                outcome = evaluate(ecfg)
                record = ResultRecord(
                    run_id=info["run_id"],
                    run_name=info["name"],
                    config_hash=info["config_hash"],
                    step=self.step,
                    task=task,
                    protocol_hash=phash,
                    protocol=outcome.protocol,
                    metrics=outcome.metrics,
                    checkpoint_sha256=manifest.sha256,
                    checkpoint_path=str(checkpoint),
                    code_version=code_version(),
                    job_id=os.environ.get("SLURM_JOB_ID", str(os.getpid())),
                    wall_time_s=time.time() - started,
                    sweep_axes=sweep_axes_of(run.path),
                    model_name=info["config"]["model"]["name"],
                )
                written.append(str(write_record(out / RECORD_NAME, record)))
            except Exception as exc:
                failed.append(task)
                atomic_write_json(out / FAILED, {"error": "".join(traceback.format_exception(exc)[-8:]), "time": time.time()})
                log.exception("evaluation %s of %s step %d failed", task, run.path.name, self.step)
            finally:
                store.unpin(self.step, out.name)
        if failed:
            raise RuntimeError(
                f"evaluation of step {self.step} failed for {', '.join(failed)}; see failed.json in {run.path / 'evals'}"
            )
        return written


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
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"scheduling evaluations of step {step} failed: {proc.stderr[-2000:]}")


def schedule(
    run: RunDirectory,
    steps: Sequence[int] | None,
    backend_name: str,
    retry_failed: bool = False,
    all_checkpoints: bool = False,
) -> list[str]:
    """Submit the evaluations of `steps` (None: every checkpoint due) that were never submitted
    (and, with retry_failed, those that failed). Returns the job ids."""
    from launch.backends import Resources, make_backend
    from launch.snapshot import Snapshot

    cfg = run.config()
    todo: dict[int, list[tuple[str, Path]]] = {}
    for step, task, directory in expected(run, cfg, all_checkpoints):
        if steps is not None and step not in steps or (directory / RECORD_NAME).is_file():
            continue
        if retry_failed and (directory / FAILED).is_file():
            (directory / FAILED).unlink()
            (directory / SUBMITTED).unlink(missing_ok=True)
        if claim(directory):
            run.checkpoints.pin(step, directory.name)
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
    snapshot = _snapshot_of(run)
    backend = make_backend(
        backend_name, run.path / "evals" / ".jobs", Snapshot(Path(snapshot[0]), snapshot[1]) if snapshot else None
    )
    ids = []
    for step, items in sorted(todo.items()):
        groups = [[t] for t, _ in items] if backend_name == "slurm" else [[t for t, _ in items]]
        for tasks in groups:
            job_ids = backend.submit([EvaluationJob(str(run.path), step, tasks)], resources)
            ids += job_ids
            for task, directory in items:
                if task in tasks:
                    atomic_write_json(directory / SUBMITTED, {"job_id": job_ids[0], "backend": backend_name, "time": time.time()})
    return ids


def _snapshot_of(run: RunDirectory) -> tuple[str, str] | None:
    last = run.last_submission()
    return (last["snapshot"], last["code_version"]) if last and last.get("snapshot") else None


def ensure_benchmarks(e: EvaluationConfig) -> None:
    """Generate each task's small generated set where its configured root has none (smoke runs)."""
    from eval.tasks import TASKS

    for task in e.tasks:
        TASKS[task].ensure_generated(e.data_roots[task])


def wait_and_report(run: RunDirectory, poll_s: float = 2.0, timeout_s: float = 3600) -> int:
    """Local follow mode: wait until every expected evaluation has a record or failed, then print
    the results table of the run's output root."""
    deadline = time.time() + timeout_s
    todo = expected(run)  # training has ended: its milestones are all committed
    while True:
        open_ = [d for _, _, d in todo if not (d / RECORD_NAME).is_file() and not (d / FAILED).is_file()]
        if not open_ or time.time() > deadline:
            break
        time.sleep(poll_s)
    failed = [d for _, _, d in todo if (d / FAILED).is_file()]
    print(f"evaluations: {len(todo) - len(failed) - len(open_)} done, {len(failed)} failed, {len(open_)} unfinished")
    for d in failed:
        print(f"  failed: {d / FAILED}")
    from eval.aggregate import aggregate

    report = aggregate(run.path.parent, run.path.parent / "results")
    print(report.summary())
    return 0 if not failed and not open_ else 1


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    p = argparse.ArgumentParser(
        prog="python -m launch.evaluations", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("schedule", help="submit the evaluations of one run's checkpoint(s)")
    s.add_argument("run_dir")
    s.add_argument("--step", type=int, action="append")
    s.add_argument("--backend", required=True)
    b = sub.add_parser("backfill", help="evaluate existing checkpoints that lack results")
    b.add_argument("output_root", nargs="?", default="runs")
    b.add_argument("--backend", default=None, help="default: each run's own backend")
    b.add_argument("--all-checkpoints", action="store_true", help="not only milestones")
    b.add_argument("--retry-failed", action="store_true")
    args = p.parse_args(argv)
    if args.command == "schedule":
        ids = schedule(RunDirectory(args.run_dir), args.step, args.backend)
        print(" ".join(ids))
        return 0
    for path in sorted(Path(args.output_root).glob("*/run.json")):
        run = RunDirectory(path.parent)
        backend = args.backend or (run.last_submission() or {"backend": "local"})["backend"]
        ids = schedule(run, None, backend, args.retry_failed, args.all_checkpoints)
        print(f"{run.path.name}: {len(ids)} evaluation job(s) submitted {' '.join(ids)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
