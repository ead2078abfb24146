"""At most once: the markers in an evaluation's directory (launch/evaluations/expected.py).

    submitted.json  created exclusively (O_EXCL) before the job is submitted, then given its job id,
                    backend, time, and how often it was resubmitted after its job was lost
    stopped.json    the job was stopped by a stop signal (time limit, preemption): it is requeued
    failed.json     the evaluation failed (the tail of its traceback, or why the teardown or the
                    recovery gave up on it): never submitted again without --retry-failed
    record.json     the result (eval.records), written by the job; counted only when valid
                    (`record_problem`): an invalid one is reported, never counted done, and moved
                    aside (`set_aside`: record.invalid-N.json, never deleted) by the next scheduling
                    (a backfill), which evaluates again

A second scheduler (a requeued training job, a backfill) finds submitted.json and skips. The
checkpoint is pinned against retention from the claim until its evaluation recorded, failed or was
given up (launch/evaluations/recovery.py).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.atomicio import atomic_write_json
from core.schema import ConfigError, read_record, to_dict
from eval.records import RECORD_NAME, ResultRecord, parse_record
from launch.rundir import RunDirectory
from rsp.manifest import Manifest, pin, unpin

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
    """`lost`: the jobs of this evaluation that vanished before it (each one was a resubmission). A
    new job was not stopped: a lost job's stopped.json is moved aside, so status names it truthfully."""
    if lost and (directory / STOPPED).is_file():
        (directory / STOPPED).rename(directory / f"stopped.lost-{len(lost):03d}.json")
    atomic_write_json(directory / SUBMITTED, to_dict(EvaluationSubmission(job_id, backend, time.time(), len(lost), list(lost))))


@dataclass
class EvaluationSubmission:
    """submitted.json: the claim of one evaluation, then the job that runs it."""

    job_id: str | None = None  # None while the claim is being submitted (or its file is torn)
    backend: str | None = None  # debug | local | slurm
    time: float | None = None
    resubmissions: int = 0  # how often it was submitted again after its job was lost
    lost: list[str] = field(default_factory=list)  # those lost jobs, oldest first


def submission(directory: Path) -> EvaluationSubmission:
    """submitted.json as written (an empty one while a claim is being submitted, or torn)."""
    try:
        return read_record(EvaluationSubmission, directory / SUBMITTED)
    except ConfigError:
        return EvaluationSubmission()


@dataclass
class EvaluationFailure:
    """failed.json: why the evaluation failed or was given up."""

    error: str  # the tail of its traceback, or the teardown's or the recovery's reason
    time: float


def mark_failed(directory: Path, error: BaseException | str) -> None:
    text = error if isinstance(error, str) else "".join(traceback.format_exception(error)[-8:])
    atomic_write_json(directory / FAILED, to_dict(EvaluationFailure(text, time.time())))


def failure(directory: Path) -> EvaluationFailure | None:
    """failed.json, None when there is none; ConfigError when it cannot be read."""
    return read_record(EvaluationFailure, directory / FAILED) if is_failed(directory) else None


def mark_stopped(directory: Path, signal_name: str | None) -> None:
    atomic_write_json(directory / STOPPED, {"signal": signal_name, "time": time.time()})


def is_stopped(directory: Path) -> bool:
    return (directory / STOPPED).is_file()


def is_recorded(directory: Path) -> bool:
    return (directory / RECORD_NAME).is_file()


def is_failed(directory: Path) -> bool:
    return (directory / FAILED).is_file()


def valid_record(directory: Path, run_id: str, manifest: Manifest | None) -> ResultRecord:
    """The record in `directory`; ValueError naming the file when it cannot be counted: unreadable,
    truncated or out of range (eval.records.parse_record), of another run, step or task than its
    directory (launch/evaluations/expected.py: step_XXXXXXXX/<task>-<hash12>), or of other weights
    than the checkpoint its step's manifest describes (`manifest`; None when that checkpoint is gone)."""
    path = directory / RECORD_NAME
    record = parse_record(path)
    if record.run_id != run_id:
        raise ValueError(f"{path}: it is a record of run {record.run_id}, not of this run ({run_id})")
    place = (directory.parent.name, directory.name.rsplit("-", 1)[0])
    if place != (f"step_{record.step:08d}", record.task):
        raise ValueError(f"{path}: its content (step {record.step}, task {record.task}) is not its directory's")
    if manifest is not None and record.checkpoint_sha256 != manifest.sha256:
        raise ValueError(
            f"{path}: its checkpoint_sha256 ({record.checkpoint_sha256[:12]}...) is not the sha256 in step "
            f"{manifest.step}'s checkpoint manifest ({manifest.sha256[:12]}...)"
        )
    return record


def record_problem(directory: Path, run_id: str, manifest: Manifest | None) -> str | None:
    """Why the record in `directory` cannot be counted (valid_record), None when it can."""
    try:
        valid_record(directory, run_id, manifest)
    except ValueError as exc:
        return str(exc)
    return None


def set_aside(directory: Path) -> Path:
    """Move an invalid record (and the claim that produced it) aside, never deleting it, so that the
    evaluation can be claimed and run again. Returns where the record went."""
    number = len(list(directory.glob("record.invalid-*.json")))
    target = directory / f"record.invalid-{number:03d}.json"
    (directory / RECORD_NAME).rename(target)
    for name in (SUBMITTED, STOPPED):
        if (directory / name).is_file():
            (directory / name).rename(directory / f"{Path(name).stem}.invalid-{number:03d}.json")
    return target
