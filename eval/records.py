"""Result records: one immutable JSON file per (run, checkpoint step, task, protocol hash).

Many evaluation jobs on many nodes write results at once, often onto a network filesystem, where
appends to one shared CSV interleave and SQLite locking is unreliable (docs/formats.md#result-records). So each
job writes its own file, atomically (temporary file + fsync + rename): a reader sees a complete
record or none. The aggregator reads them all; a corrupt or partial file is skipped with a warning
that names it; two records for the same key keep the newer one and report the conflict.
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
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()):
        raise ValueError(f"{path}: metrics must be finite numbers, got {metrics!r}")
    return ResultRecord(**{k: v for k, v in data.items() if k in FIELDS})


def read_records(paths: Iterable[Path]) -> tuple[list[ResultRecord], list[str]]:
    """Parse many records. Returns the kept records (newest per key) and warnings: every skipped
    file and every conflict, by name."""
    by_key: dict[tuple, tuple[ResultRecord, Path]] = {}
    warnings = []
    for path in paths:
        try:
            record = parse_record(path)
        except ValueError as exc:
            warnings.append(f"skipped corrupt or partial record {exc}")
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
