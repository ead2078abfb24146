"""What an attempt completed, measured rather than assumed: one small binary log per attempt.

    <run>/attempts/NNN.steps    16-byte records: little-endian int64 step, float64 unix time

Rank 0 of the job appends the step training resumed from when it starts, then one record per
completed optimizer step: one 16-byte write(2) with O_APPEND and no fsync (the kernel keeps it
when the process is killed; only a node crash can lose the tail). Whatever ended the attempt,
the last record is the last step it completed, and the record of step S says when the attempt
had S behind it, so the wall time redone after a non-cooperative end is
time(last step) - time(step the next attempt resumed from).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

RECORD = struct.Struct("<qd")  # step, unix time


class StepLog:
    """Appends records to one attempt's log (rank 0 only)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, step: int, when: float) -> None:
        os.write(self.fd, RECORD.pack(step, when))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class StepTrace:
    """A read-only view of one attempt's log: (step, time) of its start and of its last completed step."""

    path: Path
    first: tuple[int, float]
    last: tuple[int, float]

    @property
    def completed(self) -> int:
        """Optimizer steps this attempt completed."""
        return self.last[0] - self.first[0]

    def time_of(self, step: int) -> float | None:
        """When the attempt had completed `step` (its start record for the step it resumed from);
        None when the attempt never held that step."""
        if not self.first[0] <= step <= self.last[0]:
            return None
        with open(self.path, "rb") as f:
            f.seek((step - self.first[0]) * RECORD.size)  # records are consecutive steps
            found, when = RECORD.unpack(f.read(RECORD.size))
        return when if found == step else None


def read_trace(path: Path) -> StepTrace | None:
    """The trace of the log at `path`, None when there is none (the attempt never started training)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size // RECORD.size * RECORD.size  # a torn tail record is ignored
            if size == 0:
                return None
            first = RECORD.unpack(f.read(RECORD.size))
            f.seek(size - RECORD.size)
            last = RECORD.unpack(f.read(RECORD.size))
    except FileNotFoundError:
        return None
    return StepTrace(path, (int(first[0]), first[1]), (int(last[0]), last[1]))
