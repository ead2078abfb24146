"""At most once: the markers in an evaluation's directory (launch/evaluations/expected.py).

    submitted.json  created exclusively (O_EXCL) before the job is submitted, then given its job id,
                    backend, time, and how often it was resubmitted after its job was lost
    stopped.json    the job was stopped by a stop signal (time limit, preemption): it is requeued
    failed.json     the evaluation failed (the tail of its traceback, or why the teardown or the
                    recovery gave up on it): never submitted again without --retry-failed
    record.json     the result (eval.records), written by the job

A second scheduler (a requeued training job, a backfill) finds submitted.json and skips. The
checkpoint is pinned against retention from the claim until its evaluation recorded, failed or was
given up (launch/evaluations/recovery.py).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from core.atomicio import atomic_write_json
from eval.records import RECORD_NAME
from launch.rundir import RunDirectory
from rsp.manifest import pin, unpin

SUBMITTED, FAILED, STOPPED = "submitted.json", "failed.json", "stopped.json"


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


def mark_submitted(directory: Path, job_id: str, backend: str, lost: Sequence[str] = ()) -> None:
    """`lost`: the jobs of this evaluation that vanished before it (each one was a resubmission)."""
    atomic_write_json(
        directory / SUBMITTED,
        {"job_id": job_id, "backend": backend, "time": time.time(), "resubmissions": len(lost), "lost": list(lost)},
    )


def submission(directory: Path) -> dict:
    """submitted.json as written ({"job_id": None} while a claim is being submitted, or torn)."""
    try:
        return {"job_id": None, "lost": [], **json.loads((directory / SUBMITTED).read_text())}
    except (OSError, ValueError):
        return {"job_id": None, "lost": []}


def mark_failed(directory: Path, error: BaseException | str) -> None:
    text = error if isinstance(error, str) else "".join(traceback.format_exception(error)[-8:])
    atomic_write_json(directory / FAILED, {"error": text, "time": time.time()})


def mark_stopped(directory: Path, signal_name: str | None) -> None:
    atomic_write_json(directory / STOPPED, {"signal": signal_name, "time": time.time()})


def is_stopped(directory: Path) -> bool:
    return (directory / STOPPED).is_file()


def is_recorded(directory: Path) -> bool:
    return (directory / RECORD_NAME).is_file()


def is_failed(directory: Path) -> bool:
    return (directory / FAILED).is_file()
