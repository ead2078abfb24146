"""One directory per run, shared by every attempt, every tool and every evaluation.

    <output_root>/<name>-<run id>/
        run.json            identity: run id, name, config hash, world size, created
        config.yaml         the resolved configuration (human-readable; run.json holds it too)
        submissions/NNN.json  each submit: time, command, cwd, user, host, code version, snapshot,
                            environment, backend, job id
        attempts/NNN.json   each attempt: job id, hosts, start/end time and step, end reason, exit code,
                            the stop signal it saw, and how its end was inferred when it could not record it
        attempts/NNN.steps  each attempt's step log: the steps it completed, and when (launch.steplog)
        logs/<attempt key>/ per-attempt, per-rank logs (rank_<r>.log; key: <job id>-<restart count> on SLURM)
        checkpoints/ tb/ metrics.jsonl   (rsp.checkpoint, rsp.metrics)
        evals/              per-checkpoint evaluation outputs and result records
        sweeps/<sweep>.json membership of each sweep that includes the run, with its axis values
        pruned.json         a sweep's successive halving pruned it (rung, rank, metric): stop, never requeue
        unpruned/NNN.json   earlier prune markers, moved here by --unprune
        status.json         written once the run is over: finished | failed | pruned (+ why); or
                            paused: waiting at a rung of an asynchronous sweep, no job alive
The whole layout, with every file's fields: docs/formats.md#run-directory.

Run id = the first 12 hex digits of the hash of every result-affecting setting (core.schema
fingerprint, world size included): the same experiment submitted twice maps to the same
directory; worker counts, log cadence, cluster partition or time limit do not change it.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.atomicio import atomic_write_json, atomic_write_text, create_json_exclusive
from core.schema import ConfigError, fingerprint, from_dict, read_record, to_dict
from launch.config import RunConfig, train_config
from launch.steplog import read_trace
from rsp.manifest import Manifest, list_manifests

RUNS_FILE = "runs.json"  # in each sbatch folder: array index -> run directory (written by backends, read by requeue)
# finished; timeout, preempted: the time-limit / preemption signal; stopped: a stop signal sent to
# the ranks from outside (scancel --signal=USR2); requeued, cancelled: ended from outside by the
# scheduler (scontrol requeue, scancel); crashed: an error; interrupted: killed without a word
# (SIGKILL, node failure); pruned: stopped by the sweep's successive halving (docs/sweeps.md);
# paused: stopped at a rung of an asynchronous sweep until promoted. docs/requeue.md has the policy for each.
END_REASONS = (
    "finished", "timeout", "preempted", "stopped", "requeued", "cancelled", "crashed", "interrupted", "pruned", "paused",
)  # fmt: skip
PRUNED = "pruned.json"  # the prune marker (launch/sweeps/rungs.py writes it, the job and the teardown obey it)
ENV_RECORDED = ("CUDA_VISIBLE_DEVICES", "SLURM_CONF", "OMP_NUM_THREADS", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX")


def run_id(cfg: RunConfig) -> str:
    return config_hash(cfg)[:12]


def config_hash(cfg: RunConfig) -> str:
    """Identical to the hash the trainer stores in every checkpoint of this run."""
    return fingerprint(train_config(cfg), extra={"world_size": cfg.cluster.world_size})


def slug(name: str) -> str:
    """A directory- and shell-safe version of a run name (quotes, spaces, newlines removed)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60]
    return cleaned or "run"


def output_root_problem(root: Path) -> str | None:
    """Why `root` is not an output root to read runs from (missing, a file, or one run's directory:
    its runs would read as none), for the commands that take one; None when it can be one."""
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        return f"output root {root} {what}; pass the output_root your runs were submitted with"
    if (root / "run.json").is_file():
        return f"{root} is a run directory, not an output root; pass the folder that holds it: {root.parent}"
    return None


def sweep_name(given: str) -> str:
    """The name a sweep's runs record, from a sweep as a command line gives it: its name, or its
    file's path (launch/submit.py takes sweep=path/to/file.yaml; a sweep is named by its file)."""
    return Path(given).stem if given.endswith((".yaml", ".yml")) else given


@dataclass
class RunInfo:
    """run.json: the run's identity, written once by the first submit."""

    run_id: str  # the first 12 hex digits of config_hash
    name: str
    config_hash: str  # rsp.schema.fingerprint of the training config and the world size
    world_size: int
    created: float  # unix time
    config: dict[str, Any]  # the resolved RunConfig as a dict (RunDirectory.config reads it)


@dataclass
class Submission:
    """submissions/NNN.json: one submit of the run."""

    time: float
    backend: str  # debug | local | slurm
    job_id: str
    # Provenance (what the decisions never need: a record without it still reads)
    command: list[str] = field(default_factory=list)  # sys.argv of the submitting command
    cwd: str = ""
    user: str = ""
    host: str = ""
    python: str = ""
    code_version: str = ""
    snapshot: str | None = None  # the code snapshot the job runs from (launch/snapshot.py)
    environment: dict[str, str] = field(default_factory=dict)  # ENV_RECORDED
    folder: str | None = None  # the scheduler's files of the job


@dataclass
class PruneMarker:
    """pruned.json: a sweep's successive halving pruned the run (launch/sweeps/rungs.py writes it)."""

    sweep: str
    rung: int  # the step decided
    rank: int  # the run's rank at that rung (1: best)
    of: int  # how many live runs were ranked
    metric: str
    mode: str  # max | min
    value: float
    decision: str  # the decision file
    time: float

    def reason(self) -> str:
        return (
            f"pruned at step {self.rung} by sweep {self.sweep}: rank {self.rank} of {self.of} "
            f"by {self.metric} = {self.value:.4g} ({self.mode})"
        )


@dataclass
class RunStatus:
    """status.json: written once the run is over."""

    state: str  # finished | failed | pruned; paused (async rung: cleared when it is resubmitted)
    reason: str
    time: float
    pruned: PruneMarker | None = None  # the marker that stopped it, when pruned


@dataclass
class Progress:
    """progress.json: where the current attempt started and how long the run is."""

    start_step: int
    total_steps: int
    time: float


def prune_reason(marker: PruneMarker) -> str:
    """One line from a prune marker (RunDirectory.prune_marker)."""
    return marker.reason()


@dataclass
class Attempt:
    number: int
    job_id: str
    key: str  # unique per attempt: "<job id>/<SLURM restart count>" (a requeued job keeps its id)
    hosts: list[str]
    start_time: float
    start_step: int  # the checkpoint step it resumed from (0: from scratch)
    end_time: float | None = None
    end_step: int | None = None  # the last step it completed (its step log), not its last checkpoint
    end_reason: str | None = None  # one of END_REASONS
    exit_code: int | None = None
    error: str | None = None  # last lines of the traceback when it crashed
    deadline: float | None = None  # when the scheduler ends it (time limit), if known
    signal_log: str | None = None  # where the batch script records the signals it received (SLURM)
    stop_signal: str | None = None  # the stop signal that ended it, e.g. SIGUSR2 ...
    stop_time: float | None = None  # ... and when it arrived
    inferred: str | None = None  # set when the end was not recorded by the attempt itself: the evidence used
    alloc: dict[str, int] | None = None  # what the attempt holds, all nodes together: {"gpus": n, "cpus": n}


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_config(cls, cfg: RunConfig) -> RunDirectory:
        """The directory of `cfg`'s run: an existing one with the same id (whatever its name), else a new path."""
        return cls.for_configs([cfg])[0]

    @classmethod
    def for_configs(cls, cfgs: Sequence[RunConfig]) -> list[RunDirectory]:
        """for_config of many runs, listing each output root once (a sweep may plan 1,000 runs)."""
        by_root: dict[Path, dict[str, Path]] = {}
        out = []
        for cfg in cfgs:
            root, rid = Path(cfg.output_root), run_id(cfg)
            if root not in by_root:  # run id -> the first existing entry "<anything>-<run id>"
                by_root[root] = {}
                for path in sorted(root.glob("*-*")) if root.is_dir() else []:
                    by_root[root].setdefault(path.name.rsplit("-", 1)[1], path)
            out.append(cls(by_root[root].get(rid, root / f"{slug(cfg.name)}-{rid}")))
        return out

    # --- identity -------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def create(self, cfg: RunConfig) -> None:
        """Write run.json and config.yaml once; later submissions only add records."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.exists:
            return
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        info = RunInfo(run_id(cfg), cfg.name, config_hash(cfg), cfg.cluster.world_size, time.time(), to_dict(cfg))
        atomic_write_json(self.path / "run.json", to_dict(info))

    def damage(self) -> str | None:
        """Why this run's own records cannot be read (a hand edit, a truncated copy, a full disk at the
        wrong moment), naming the file; None when every one of them reads. Status and the other
        readers set such a run aside and name it instead of failing on it."""
        try:
            self.config()
            self.status(), self.prune_marker(), self.total_steps()
            self.submissions(), self.attempts()
        except ConfigError as exc:
            return "; ".join(exc.problems)
        return None

    def info(self) -> RunInfo:
        """run.json; rsp.schema.ConfigError naming the file when it is unreadable or of another format."""
        return read_record(RunInfo, self.path / "run.json")

    def config(self, info: RunInfo | None = None) -> RunConfig:
        """The run's configuration; pass `info` (run.json, already read) to not read it again."""
        return from_dict(RunConfig, (info or self.info()).config)

    @property
    def checkpoints(self):
        """The run's rsp.checkpoint.CheckpointStore (imports torch: only for loading and pinning)."""
        from rsp.checkpoint import CheckpointStore  # torch: the status table and requeue teardown never load or pin

        return CheckpointStore(self.path / "checkpoints")

    def manifests(self) -> list[Manifest]:
        """Committed checkpoints, oldest first (torch-free: status and the SLURM teardown use it)."""
        return list_manifests(self.path / "checkpoints")

    # --- submissions ----------------------------------------------------------------------------

    def record_submission(
        self, backend: str, job_id: str, code_version: str, snapshot: str | None, folder: str | None = None
    ) -> Path:
        records = self.path / "submissions"
        number = len(list(records.glob("*.json"))) if records.is_dir() else 0
        path = records / f"{number:03d}.json"
        environment = {k: os.environ[k] for k in ENV_RECORDED if k in os.environ}
        submission = Submission(
            time.time(), backend, job_id, list(sys.argv), os.getcwd(), getpass.getuser(), socket.gethostname(),
            sys.executable, code_version, snapshot, environment, folder,
        )  # fmt: skip
        atomic_write_json(path, to_dict(submission))
        return path

    def submissions(self) -> list[Submission]:
        records = self.path / "submissions"
        return [read_record(Submission, p) for p in sorted(records.glob("*.json"))] if records.is_dir() else []

    def last_submission(self) -> Submission | None:
        """The newest submission record (reads that one file only), None before the first submit."""
        records = self.path / "submissions"
        newest = max(records.glob("*.json"), default=None) if records.is_dir() else None
        return read_record(Submission, newest) if newest is not None else None

    def backend(self) -> str:
        """The backend the run was last submitted to ("local" before its first submit)."""
        last = self.last_submission()
        return last.backend if last is not None else "local"

    # --- attempts -------------------------------------------------------------------------------

    def attempts(self) -> list[Attempt]:
        records = self.path / "attempts"
        if not records.is_dir():
            return []
        return [read_record(Attempt, p) for p in sorted(records.glob("*.json"))]

    def save_attempt(self, attempt: Attempt) -> None:
        atomic_write_json(self.path / "attempts" / f"{attempt.number:03d}.json", dataclasses.asdict(attempt))

    def begin_attempt(
        self,
        job_id: str,
        key: str,
        hosts: list[str],
        start_step: int,
        previous: list[Attempt] | None = None,
        **fields: Any,
    ) -> Attempt:
        """Record a new attempt. An earlier one still without an end must be closed first
        (launch.postmortem infers how it ended); one that is not is closed here as `interrupted`
        at the last step its step log shows. `previous`: the run's attempts when the caller
        already read them (closed in place). `fields`: more Attempt fields (deadline, signal_log, alloc)."""
        previous = self.attempts() if previous is None else previous
        if previous and previous[-1].end_reason is None:
            stale = previous[-1]
            trace = read_trace(self.step_log_path(stale))
            stale.end_reason, stale.end_time = "interrupted", trace.last[1] if trace else time.time()
            stale.end_step = trace.last[0] if trace else stale.start_step
            stale.inferred = "no end record and no other evidence when the next attempt began"
            self.save_attempt(stale)
        attempt = Attempt(len(previous), job_id, key, hosts, time.time(), start_step, **fields)
        self.save_attempt(attempt)
        return attempt

    def end_attempt(
        self,
        attempt: Attempt,
        reason: str,
        step: int,
        exit_code: int | None = None,
        error: str | None = None,
        when: float | None = None,
        **fields: Any,
    ) -> None:
        """Close `attempt`: `step` is the last step it completed; `when` defaults to now;
        `fields`: more Attempt fields (stop_signal, stop_time, inferred)."""
        if reason not in END_REASONS:
            raise ValueError(f"unknown attempt end reason {reason!r}; valid: {', '.join(END_REASONS)}")
        attempt.end_reason, attempt.end_time, attempt.end_step = reason, when or time.time(), step
        attempt.exit_code, attempt.error = exit_code, error
        for key, value in fields.items():
            setattr(attempt, key, value)
        self.save_attempt(attempt)

    def step_log_path(self, attempt: Attempt) -> Path:
        return self.path / "attempts" / f"{attempt.number:03d}.steps"

    def reset_budgets(self) -> None:
        """--retry-failed: the requeue budgets and the breaker count attempts from now on."""
        atomic_write_json(self.path / "budget_reset.json", {"from_attempt": len(self.attempts()), "time": time.time()})

    def policy_attempts(self, attempts: list[Attempt] | None = None) -> list[Attempt]:
        """The attempts the requeue policy counts (those since the last --retry-failed); `attempts`:
        all of the run's, when the caller already read them."""
        reset = self.path / "budget_reset.json"
        start = json.loads(reset.read_text())["from_attempt"] if reset.is_file() else 0
        return (self.attempts() if attempts is None else attempts)[start:]

    # --- sweeps ---------------------------------------------------------------------------------

    def record_sweep(self, sweep: str, axis_values: dict[str, Any]) -> None:
        """Mark the run as a member of `sweep`, with its values of the sweep's axes."""
        atomic_write_json(self.path / "sweeps" / f"{sweep}.json", {"sweep": sweep, "axes": axis_values})

    def sweep_names(self) -> list[str]:
        folder = self.path / "sweeps"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def in_sweep(self, sweep: str) -> bool:
        return (self.path / "sweeps" / f"{sweep}.json").is_file()

    def sweep_axes(self) -> dict[str, Any]:
        """Axis values of every sweep the run belongs to (for result records and tables)."""
        folder = self.path / "sweeps"
        out: dict[str, Any] = {}
        for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            out.update(json.loads(record.read_text())["axes"])
        return out

    # --- final status ---------------------------------------------------------------------------

    def status(self) -> RunStatus | None:
        path = self.path / "status.json"
        return read_record(RunStatus, path) if path.is_file() else None

    def final_state(self) -> str | None:
        """status.json's state (finished | failed | pruned), None while the run is not over."""
        status = self.status()
        return status.state if status is not None else None

    def set_status(self, state: str, reason: str, pruned: PruneMarker | None = None) -> None:
        atomic_write_json(self.path / "status.json", to_dict(RunStatus(state, reason, time.time(), pruned)))

    def clear_status(self) -> None:
        (self.path / "status.json").unlink(missing_ok=True)

    # --- pruning (launch/sweeps/rungs.py decides; the job and the teardown obey) ------------------------

    def prune_marker(self) -> PruneMarker | None:
        """Why a sweep's successive halving pruned this run (rung, rank, metric ...), None if it did not."""
        path = self.path / PRUNED
        return read_record(PruneMarker, path) if path.is_file() else None

    def is_pruned(self) -> bool:
        """Whether a prune marker is there, whatever it holds (what the job obeys: one stat)."""
        return (self.path / PRUNED).is_file()

    def mark_pruned(self, marker: PruneMarker) -> bool:
        """Write the prune marker unless one is there (idempotent: concurrent deciders write one)."""
        return create_json_exclusive(self.path / PRUNED, to_dict(marker))

    def unprune(self, why: str = "--unprune") -> PruneMarker | None:
        """Move the prune marker to unpruned/NNN.json (with `why`) and clear a `pruned` status, so the
        run can be resubmitted and resume from its checkpoint. Returns the marker (None: it was not
        pruned). Also used when a run finished before its marker could stop it."""
        marker = self.prune_marker()
        if marker is None:
            return None
        history = self.path / "unpruned"
        number = len(list(history.glob("*.json"))) if history.is_dir() else 0
        atomic_write_json(history / f"{number:03d}.json", {**to_dict(marker), "unpruned": time.time(), "why": why})
        (self.path / PRUNED).unlink(missing_ok=True)
        if self.final_state() == "pruned":
            self.clear_status()
        return marker

    def record_progress(self, start_step: int, total_steps: int) -> None:
        atomic_write_json(self.path / "progress.json", to_dict(Progress(start_step, total_steps, time.time())))

    def total_steps(self) -> int | None:
        path = self.path / "progress.json"
        return read_record(Progress, path).total_steps if path.is_file() else None

    def latest_logged_step(self) -> int:
        """Step of the last line of metrics.jsonl (read from the end: cheap on long logs)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return 0
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
        for line in reversed(lines):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError):
                continue
        return 0

    def last_checkpoint_step(self) -> int | None:
        manifests = self.manifests()
        return manifests[-1].step if manifests else None
