"""SLURM teardown of an evaluation job, run by its batch script after srun returns (launch.batch):

    python -m launch.evaluations.teardown --folder <submitit folder> --exit-code $rsp_rc

For each evaluation this job owns (its submitted.json names the job) that has neither a record nor
failed.json:

    stopped                a stop signal ended it (stopped.json, or SIGUSR2 reached the batch
                           shell: time limit, preemption): the job is requeued (same id), up to
                           evaluation.max_requeues times; then failed.json
    ended from outside     SIGTERM reached the batch shell (scontrol requeue, scancel, the time
                           limit's kill): nothing here. A requeued job comes back; otherwise the
                           evaluation is lost and recovered (launch/evaluations/recovery.py)
    died                   during imports, killed, out of memory: failed.json with the exit status
                           and where the logs are

so every failure leaves failed.json, and the checkpoint's pin is released with it. Torch-free: it
runs on the job's critical path.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

from launch.evaluations.claims import SUBMITTED, is_failed, is_recorded, is_stopped, mark_failed, release, submission
from launch.postmortem import first
from launch.requeue import begin_teardown
from launch.rundir import RunDirectory

log = logging.getLogger(__name__)


def owned(run: RunDirectory, job_id: str) -> list[tuple[int, Path]]:
    """(step, directory) of the evaluations whose claim names `job_id` and that are still open."""
    out = []
    for marker in sorted(run.path.glob(f"evals/step_*/*/{SUBMITTED}")):
        directory = marker.parent
        if submission(directory).job_id == job_id and not is_recorded(directory) and not is_failed(directory):
            out.append((int(directory.parent.name.split("_")[1]), directory))
    return out


def settle(
    run: RunDirectory, job_id: str, exit_code: int, signals: Sequence[tuple[str, float]], restarts: int, folder: Path
) -> str:
    """Decide for this job's open evaluations; returns what to do with the job: requeue | nothing."""
    open_ = owned(run, job_id)
    if not open_ or first(signals, "TERM") is not None:
        return "nothing"
    budget = run.config().evaluation.max_requeues
    stopped = first(signals, "USR2") is not None or any(is_stopped(d) for _, d in open_)
    if stopped and restarts < budget:
        return "requeue"
    logs = f"{folder}/{job_id}_0_log.err"
    why = (
        f"stopped by the time limit or a preemption {restarts + 1} times, more than evaluation.max_requeues ({budget}); "
        "raise evaluation.time_minutes"
        if stopped
        else f"its job {job_id} exited with status {exit_code} before recording a result or an error "
        f"(e.g. while importing, or killed: out of memory); see {logs}"
    )
    for step, directory in open_:
        mark_failed(directory, why)
        release(run, step, directory)
        log.warning("evaluation %s of step %d failed: %s", directory.name, step, why)
    return "nothing"


def main(argv: Sequence[str] | None = None) -> int:
    job = begin_teardown(argv, "SLURM teardown of an evaluation job: requeue it or record its failure", "eval-teardown")
    if settle(job.run, job.job_id, job.exit_code, job.signals, job.restarts, job.folder) == "requeue":
        log.info("evaluation job %s stopped: requeued (%d of its requeues used)", job.job_id, job.restarts + 1)
        subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
