"""Identical weights are evaluated once per output root: the runs of a sweep that differ only in
what training does with their weights (a learning rate, a loss weight) start from the same
initialization, so their step-0 checkpoints hold the same weights, and evaluating each of them
would repeat one computation N times.

    <output_root>/.evaluated/<weights sha256[:32]>-<protocol hash[:32]>.json   {"record": path}
    <output_root>/.evaluated/<same>.lock                                       flock

The key is the checkpoint's weights digest (its manifest's `weights_sha256`: every tensor of the
model's state, rsp.checkpoint.weights_digest) and the protocol hash (eval.protocol: every setting
that changes the numbers, no paths). An evaluation job takes the key's lock before it evaluates: a
second job with the same key waits for the first, then writes its own record with the first one's
metrics and `same_as` naming it (launch/evaluations/job.py). Only a complete, parseable record with
the same protocol hash, computed by the same code version, is reused; anything else is evaluated
again. Without the lock (a network filesystem without flock across nodes) both evaluate: the index
saves work, it never decides a number.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.atomicio import atomic_write_json
from eval.records import ResultRecord, parse_record

INDEX_DIR = ".evaluated"


@dataclass
class Earlier:
    """What the index knows of one key: the record to reuse (None: evaluate) and where to register a new one."""

    index: Path | None
    record: ResultRecord | None = None
    record_path: str = ""

    def register(self, record_path: Path) -> None:
        if self.index is not None:
            atomic_write_json(self.index, {"record": str(record_path)})


def lookup(index: Path, protocol_hash: str, code_version: str) -> tuple[ResultRecord | None, str]:
    try:
        path = json.loads(index.read_text())["record"]
        record = parse_record(Path(path))
    except (OSError, ValueError, KeyError, TypeError):
        return None, ""  # none yet, or torn, or its record is gone: evaluate
    same = record.protocol_hash == protocol_hash and record.code_version == code_version and not record.same_as
    return (record, path) if same else (None, "")


@contextlib.contextmanager
def earlier_evaluation(output_root: Path, weights_sha256: str, protocol_hash: str, code_version: str) -> Iterator[Earlier]:
    """Hold the key's lock while the caller evaluates (or reuses) and registers its record. Only a
    record computed by the same code (`code_version`) is reused: a fixed evaluation evaluates again.
    A checkpoint without a weights digest (written before digests existed) is never reused."""
    if not weights_sha256:
        yield Earlier(None)
        return
    folder = Path(output_root) / INDEX_DIR
    folder.mkdir(parents=True, exist_ok=True)
    key = f"{weights_sha256[:32]}-{protocol_hash[:32]}"
    with open(folder / f"{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        index = folder / f"{key}.json"
        yield Earlier(index, *lookup(index, protocol_hash, code_version))
