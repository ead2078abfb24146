"""At most once: the markers in an evaluation's directory (launch/evaluations/expected.py).

    submitted.json  created exclusively (O_EXCL) before the job is submitted, then given its job id
    failed.json     the evaluation raised: the tail of its traceback
    record.json     the result (eval.records), written by the job

A second scheduler (a requeued training job, a backfill) finds submitted.json and skips. The
checkpoint is pinned against retention from the claim until its evaluation recorded or failed.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from eval.records import RECORD_NAME
from launch.rundir import RunDirectory
from rsp.atomicio import atomic_write_json
from rsp.manifest import pin, unpin

SUBMITTED, FAILED = "submitted.json", "failed.json"


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


def claim_and_pin(run: RunDirectory, step: int, directory: Path) -> bool:
    """Claim the evaluation in `directory`; when claimed, pin its checkpoint until `release`."""
    if not claim(directory):
        return False
    pin(run.path / "checkpoints", step, directory.name)  # torch-free: the scheduler never loads a checkpoint
    return True


def release(run: RunDirectory, step: int, directory: Path) -> None:
    """The evaluation recorded or failed: its checkpoint may be pruned again."""
    unpin(run.path / "checkpoints", step, directory.name)


def reopen_failed(directory: Path) -> None:
    """--retry-failed: a failed evaluation may be claimed again."""
    if (directory / FAILED).is_file():
        (directory / FAILED).unlink()
        (directory / SUBMITTED).unlink(missing_ok=True)


def mark_submitted(directory: Path, job_id: str, backend: str) -> None:
    atomic_write_json(directory / SUBMITTED, {"job_id": job_id, "backend": backend, "time": time.time()})


def mark_failed(directory: Path, exc: BaseException) -> None:
    atomic_write_json(directory / FAILED, {"error": "".join(traceback.format_exception(exc)[-8:]), "time": time.time()})


def is_recorded(directory: Path) -> bool:
    return (directory / RECORD_NAME).is_file()


def is_failed(directory: Path) -> bool:
    return (directory / FAILED).is_file()
