"""Result records: one immutable JSON file per (run, checkpoint step, task, protocol hash).

Many evaluation jobs on many nodes write results at once, often onto a network filesystem, where
appends to one shared CSV interleave and SQLite locking is unreliable (docs/formats.md#result-records). So each
job writes its own file, atomically (temporary file + fsync + rename): a reader sees a complete
record or none. Every reader validates what it reads (`parse_record`): the schema, numbers as
numbers, each metric in its documented range (a registered task's metrics are fractions in [0, 1]),
and the checkpoint it names against that checkpoint's manifest. The aggregator reads them all; a
corrupt, partial, out-of-range or inconsistent file is skipped with a warning that names it; two
records for the same key keep the newer one and report the conflict.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomicio import atomic_write_json
from eval.registry import TASKS
from eval.task import GENERATED_MARKER
from rsp.manifest import Manifest

log = logging.getLogger(__name__)

RECORD_NAME = "record.json"
FORMAT = "rsp-result/1"


@dataclass
class ResultRecord:
    run_id: str
    run_name: str
    config_hash: str  # of the training run (core.schema.fingerprint)
    step: int  # checkpoint step evaluated
    task: str  # davis | jhmdb | vip
    protocol_hash: str  # eval.protocol.protocol_hash
    protocol: dict[str, Any]  # every setting that produced the numbers
    metrics: dict[str, float]
    checkpoint_sha256: str
    checkpoint_path: str
    code_version: str
    job_id: str
    wall_time_s: float
    sweep_axes: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    # What training spent until this checkpoint was written: {"gpu_hours", "cpu_hours", "source"}
    # (launch/cost.py: sacct's allocations on SLURM, the attempt records elsewhere); {} when unknown.
    training_cost: dict[str, Any] = field(default_factory=dict)
    # The record of an evaluation of identical weights under the same protocol whose numbers this one
    # repeats (launch/evaluations/reuse.py: a sweep's step-0 checkpoints); "": evaluated for this record.
    same_as: str = ""
    created: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    format: str = FORMAT

    @property
    def key(self) -> tuple[str, int, str, str]:
        return (self.run_id, self.step, self.task, self.protocol_hash)

    @property
    def measured_on_generated(self) -> bool | None:
        """Whether the numbers were measured on a generated set, decided from the data they were
        measured on: the marker the record names (`generated_set`), else the data root it names
        (a generated set's root holds eval.task.GENERATED_MARKER), whatever code wrote it. None:
        the record names neither (a hand-made record), so the data cannot be told."""
        if self.protocol.get("generated_set"):
            return True
        root = self.protocol.get("data_root")
        if root and (Path(root) / GENERATED_MARKER).is_file():
            return True
        return False if "generated_set" in self.protocol or root else None


FIELDS = frozenset(f.name for f in dataclasses.fields(ResultRecord))
REQUIRED_FIELDS = frozenset(
    f.name
    for f in dataclasses.fields(ResultRecord)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
_JSON_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "dict": (dict,)}
FIELD_TYPES = {f.name: _JSON_TYPES[f.type.split("[")[0]] for f in dataclasses.fields(ResultRecord)}


def write_record(path: str | Path, record: ResultRecord) -> Path:
    path = Path(path)
    atomic_write_json(path, dataclasses.asdict(record))
    return path


def parse_record(path: Path) -> ResultRecord:
    """Read one record; ValueError (naming the file) when it is not a complete, valid record."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object (got {type(data).__name__})")
    missing = sorted(REQUIRED_FIELDS - set(data))
    if missing:
        raise ValueError(f"{path}: missing fields {', '.join(missing)}")
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {data.get('format')!r}")
    wrong = [
        f"{k} ({data[k]!r})"
        for k, types in FIELD_TYPES.items()
        if k in data and (not isinstance(data[k], types) or isinstance(data[k], bool))
    ]
    if wrong:
        raise ValueError(f"{path}: wrong value types: {', '.join(wrong)}")
    metrics = data["metrics"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in metrics.values()):
        raise ValueError(f"{path}: metrics must be finite numbers, got {metrics!r}")
    if problems := metric_problems(data["task"], metrics):
        raise ValueError(f"{path}: {'; '.join(problems)}")
    return ResultRecord(**{k: v for k, v in data.items() if k in FIELDS})


def metric_problems(task: str, metrics: dict[str, float]) -> list[str]:
    """A registered task's metrics are fractions in [0, 1] (eval.task.EvalTask; tables show
    percent): a value outside, or a metric the task does not report, is not a measurement."""
    if task not in TASKS:
        return [f"task {task!r} is not a registered evaluation task ({', '.join(TASKS)})"]
    known = TASKS[task].metrics
    out = [f"metric {k!r} is not one of {task}'s ({', '.join(known)})" for k in metrics if k not in known]
    out += [f"{k} = {v!r} is outside [0, 1] (metrics are fractions)" for k, v in metrics.items() if not 0 <= v <= 1]
    return out


def manifest_problem(record: ResultRecord) -> str | None:
    """A record must be of the weights its checkpoint's manifest describes (rsp.manifest: the JSON
    beside the checkpoint file). None when they agree, or when the checkpoint's manifest is gone."""
    path = Path(record.checkpoint_path).with_suffix(".json")
    try:
        manifest = Manifest.read(path)
    except (OSError, ValueError, TypeError):
        return None
    if manifest.sha256 == record.checkpoint_sha256:
        return None
    return (
        f"its checkpoint_sha256 ({record.checkpoint_sha256[:12]}...) is not the sha256 in the manifest "
        f"{path} ({manifest.sha256[:12]}...)"
    )


def read_records(paths: Iterable[Path]) -> tuple[list[ResultRecord], list[str]]:
    """Parse many records. Returns the kept records (newest per key) and warnings: every skipped
    file and every conflict, by name."""
    by_key: dict[tuple, tuple[ResultRecord, Path]] = {}
    warnings = []
    for path in paths:
        try:
            record = parse_record(path)
        except ValueError as exc:
            warnings.append(
                f"skipped corrupt, partial or out-of-range record {exc} (`python -m launch.evaluations backfill` "
                "moves it aside and evaluates again)"
            )
            continue
        if problem := manifest_problem(record):
            warnings.append(f"skipped inconsistent record {path}: {problem}")
            continue
        if record.key in by_key:
            other, other_path = by_key[record.key]
            kept, ignored = ((record, path), other_path) if record.created >= other.created else ((other, other_path), path)
            warnings.append(f"conflict for {record.key}: kept the newer {kept[1]}, ignored {ignored}")
            by_key[record.key] = kept
        else:
            by_key[record.key] = (record, path)
    for warning in warnings:
        log.warning("%s", warning)
    return [r for r, _ in by_key.values()], warnings


def find_record_files(directory: str | Path) -> list[Path]:
    """Every record file below `directory`, at any depth (where the launcher puts them is its own
    business: launch/results.py)."""
    return sorted(Path(directory).rglob(RECORD_NAME))
