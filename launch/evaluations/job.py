"""The evaluation job: evaluates one checkpoint of one run on one or more tasks and writes one
result record per task (eval.records), with the run's provenance. Pickled by submitit at submit time
and run from the run's code snapshot, like the training job.

An evaluation is not checkpointed: on SLURM a stop signal (time limit, preemption, scancel
--signal) ends it at once, leaves stopped.json, and the teardown requeues the job
(launch/evaluations/teardown.py); a task that already has its record is not evaluated again.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.atomicio import SpaceReserve, out_of_space, size_text
from core.provenance import code_version
from eval.protocol import protocol_hash
from eval.records import RECORD_NAME, ResultRecord, write_record
from launch.cost import accounting, to_checkpoint
from launch.evaluations.claims import STOPPED, is_failed, is_recorded, mark_failed, mark_stopped, release
from launch.evaluations.expected import eval_config_for, eval_dir
from launch.evaluations.reuse import earlier_evaluation
from launch.rundir import RunDirectory
from launch.sweeps.rungs import SweepDirectory
from rsp.lifecycle import STOP_SIGNALS, blocked_stop_signals, early_stop_request
from rsp.manifest import checkpoint_name

log = logging.getLogger(__name__)

RESERVE_FILE = ".space-reserve"  # 1 MiB held while a task is evaluated: room for its failed.json on a full disk


def evaluate(ecfg):
    """eval.run.evaluate, imported when an evaluation runs: the scheduler that pickles this job
    (a subprocess of every milestone) never evaluates and starts in ~1 s instead of ~5."""
    from eval.run import evaluate as run_evaluation  # torch and timm: seconds to import

    return run_evaluation(ecfg)


class EvaluationStopped(BaseException):
    """A stop signal ended the evaluation: it is requeued, not failed (not an Exception, so that
    no `except Exception` takes it for an error)."""


def stop_on_signals() -> None:
    """On SLURM (launch.start installed the early stop request): a stop signal raises
    EvaluationStopped, at once, and one that arrived while the job started raises it now."""
    early = early_stop_request()
    if early is None:  # local and debug backends: no lifecycle batch script to requeue the job
        return

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise EvaluationStopped(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    if early.requested:
        raise EvaluationStopped(early.reason)


@dataclass
class EvaluationJob:
    """Evaluates one checkpoint of one run on one or more tasks; writes one record per task."""

    run_dir: str
    step: int
    tasks: list[str]

    def __call__(self) -> list[str]:
        run = RunDirectory(self.run_dir)
        info = run.info()
        cfg = run.config(info)
        store = run.checkpoints
        checkpoint = store.dir / checkpoint_name(self.step)
        configs = []
        for task in self.tasks:
            ecfg = eval_config_for(cfg, task, checkpoint, Path("."))
            out = eval_dir(run, self.step, task, protocol_hash(ecfg))
            ecfg.output_dir = str(out / "predictions")  # runtime-only: the hash stays
            configs.append((task, ecfg, out))
        written, failed = [], []
        try:
            stop_on_signals()
            manifest = next((m for m in store.manifests() if m.step == self.step), None)
            cost = training_cost(run, manifest.created) if manifest is not None else {}
            for task, ecfg, out in configs:
                if is_recorded(out):  # a requeued job: this task finished in an earlier attempt
                    continue
                (out / STOPPED).unlink(missing_ok=True)
                reserve = SpaceReserve(out / RESERVE_FILE)
                try:
                    written.append(self._evaluate(run, info, task, ecfg, out, manifest, checkpoint, cost))
                except Exception as exc:
                    failed.append(task)
                    if out_of_space(exc):  # its failure must still be written: the reserve makes room for it
                        exc = disk_full(run, self.step, task, out, exc)
                        reserve.release()
                    mark_failed(out, exc)
                    log.exception("evaluation %s of %s step %d failed", task, run.path.name, self.step)
                finally:
                    reserve.release()
                release(run, self.step, out)  # recorded or failed: the checkpoint may be pruned again
                if is_recorded(out):
                    decide_rungs(run, self.step, task)
        except EvaluationStopped as stop:
            for _, _, out in configs:
                if not is_recorded(out) and not is_failed(out):
                    mark_stopped(out, str(stop))
            log.warning("evaluation of %s step %d stopped by %s; the teardown requeues it", run.path.name, self.step, stop)
            raise
        if failed:
            raise RuntimeError(
                f"evaluation of step {self.step} failed for {', '.join(failed)}; see failed.json in {run.path / 'evals'}"
            )
        return written

    def _evaluate(self, run: RunDirectory, info: dict, task: str, ecfg, out: Path, manifest, checkpoint: Path, cost: dict) -> str:
        started = time.time()
        if manifest is None or not checkpoint.is_file():
            raise FileNotFoundError(
                f"checkpoint step {self.step} of run {run.path} ({checkpoint}) vanished before its {task} "
                "evaluation ran; it was deleted outside retention (pinned checkpoints are kept)"
            )
        with earlier_evaluation(run.path.parent, manifest.weights_sha256, protocol_hash(ecfg), code_version()) as earlier:
            if earlier.record is not None:  # identical weights, same protocol: its numbers, not a new computation
                log.info("step %d of %s: weights evaluated before (%s)", self.step, run.path.name, earlier.record_path)
                metrics, details = earlier.record.metrics, {**earlier.record.protocol, "checkpoint": str(checkpoint)}
            else:
                outcome = evaluate(ecfg)
                metrics, details = outcome.metrics, outcome.protocol
            record = ResultRecord(
                run_id=info.run_id,
                run_name=info.name,
                config_hash=info.config_hash,
                step=self.step,
                task=task,
                protocol_hash=protocol_hash(ecfg),
                protocol=details,
                metrics=metrics,
                checkpoint_sha256=manifest.sha256,
                checkpoint_path=str(checkpoint),
                code_version=code_version(),
                job_id=os.environ.get("SLURM_JOB_ID", str(os.getpid())),
                wall_time_s=time.time() - started,
                sweep_axes=run.sweep_axes(),
                model_name=run.config(info).model.name,
                training_cost=cost,
                same_as=earlier.record_path,
            )
            path = write_record(out / RECORD_NAME, record)
            if earlier.record is None:
                earlier.register(path)
        return str(path)


def disk_full(run: RunDirectory, step: int, task: str, out: Path, exc: BaseException) -> OSError:
    """The one line a full disk leaves in failed.json (record.json is written whole or not at all:
    nothing half written is ever counted), with the original error as its cause."""
    full = OSError(
        errno.ENOSPC,
        f"no space left on device writing the {task} evaluation of step {step} in {out} "
        f"({size_text(shutil.disk_usage(out).free)} free); nothing was recorded for it. Free space there, then: "
        f"python -m launch.evaluations backfill {run.path.parent} --retry-failed",
    )
    full.__cause__ = exc
    return full


def training_cost(run: RunDirectory, created: float) -> dict:
    """The record's training cost (launch/cost.py); {} when it cannot be known (never fails the job)."""
    try:
        return to_checkpoint(run, created, accounting([run]))
    except Exception:
        log.exception("could not price the training of %s up to its checkpoint", run.path.name)
        return {}


def decide_rungs(run: RunDirectory, step: int, task: str) -> None:
    """A record at a rung of a sweep with a select block may complete the rung: advance the sweep now
    (launch/advance.py, the one owner of state transitions, in a subprocess: it schedules evaluation
    jobs like this one), so a pruned run stops within one poll of its marker. Never fails the job:
    status, follow and the next evaluation advance too."""
    role = f"evaluation job {os.environ.get('SLURM_JOB_ID', os.getpid())}"
    for name in run.sweep_names():
        try:
            selection = SweepDirectory(run.path.parent, name).selection()
            if selection is None or selection.task != task or step not in selection.rungs:
                continue
            cmd = [sys.executable, "-m", "launch.advance", str(run.path.parent), "--sweep", name, "--no-recover", "--role", role]
            with blocked_stop_signals():  # a stop signal ends the job, not this short decision
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            for line in proc.stdout.splitlines():
                log.info("%s", line)
            if proc.returncode != 0:
                log.error("advancing sweep %s failed: %s", name, (proc.stdout + proc.stderr)[-2000:])
        except Exception:
            log.exception("could not decide the rungs of sweep %s", name)
