"""Asynchronous promotion (`select: {promotion: async, min_reports: M}`): who goes on past a rung
before every run has reported there. Pure: plain values in, plain values out, no files and no
scheduler, so the sweep simulator (bench/sweep_sim.py) and the runtime call the same code.

The rule, per rung, fed its inputs in arrival order:
- a run that reports is **promoted** (it goes on training) when, among the runs reported at the rung
  so far, it ranks in the top `keep` fraction (launch.sweeps.selection.rank_runs: ceil(keep x reported),
  ties with the last kept one kept too), once at least `min_reports` runs have reported; otherwise
  it **pauses** (it holds no allocation while it waits);
- every new report re-ranks the rung: a paused run that now ranks in the top fraction (enough
  weaker results arrived) is promoted then; an early promotion is never taken back before the
  rung closes;
- the rung **closes** when the previous rung has closed and every run it kept has reported here
  (the first rung: every member). The close is the synchronous decision, from the same values:
  runs it keeps go on (paused ones are promoted), the rest are pruned, including a run promoted
  early that the full ranking does not keep (**demoted**: it stops where it is, and any value it
  reported at a later rung is withdrawn from that rung). So once every run has reported, the state
  is the synchronous one whatever the arrival order; early promotions only change when runs train.

Every input changes the rung's state by an `Outcome`; `Rung.record()` writes it down with the
rung's inputs so far, in arrival order (report, withdraw, close), and `replay(record)` recomputes
the outcome from them alone.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from launch.sweeps.selection import Selection, kept_count, parse_selection, rank_runs, value_key

RECORD_FORMAT = "rsp-async-promotion/1"


@dataclass
class Outcome:
    """What one input changed at one rung."""

    promoted: list[str] = field(default_factory=list)  # go on past the rung
    paused: list[str] = field(default_factory=list)  # wait at the rung, holding nothing
    pruned: list[str] = field(default_factory=list)  # stopped by the close (paused or not yet decided)
    demoted: list[str] = field(default_factory=list)  # promoted early, not kept by the close: stopped
    closed: bool = False  # this input closed the rung

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("promoted", "paused", "pruned", "demoted", "closed")}


class Rung:
    """One rung's asynchronous promotion. Inputs: report(run, value), withdraw(run) (a run pruned at
    an earlier rung, or one that failed), close() (every live run has reported)."""

    def __init__(self, step: int, selection: Selection):
        self.step, self.selection = step, selection
        # sync never promotes before the close; async waits for min_reports values
        self.min_reports = selection.min_reports if selection.promotion == "async" else None
        self.values: dict[str, float] = {}  # run id -> value, of the runs reported and not withdrawn
        self.promoted: set[str] = set()
        self.paused: list[tuple[tuple[bool, float], str]] = []  # heap of (value key, run id)
        self.pruned: set[str] = set()
        self.closed = False
        self.inputs: list[list] = []  # ["report", run, value] | ["withdraw", run] | ["close"], in arrival order
        self._keys: list[tuple[bool, float]] = []  # value keys of self.values, sorted best first
        self.last = Outcome()

    # --- inputs ---------------------------------------------------------------------------------

    def report(self, run_id: str, value: float) -> Outcome:
        if self.closed or run_id in self.values:
            raise ValueError(f"rung {self.step}: {run_id} reported twice or after the close")
        self.inputs.append(["report", run_id, value])
        self.values[run_id] = value
        key = value_key(value, self.selection.mode)
        bisect.insort(self._keys, key)
        heapq.heappush(self.paused, (key, run_id))
        return self._settle(Outcome(), reporting=run_id)

    def withdraw(self, run_id: str) -> Outcome:
        if run_id not in self.values or self.closed:
            return Outcome()
        self.inputs.append(["withdraw", run_id])
        self._keys.remove(value_key(self.values.pop(run_id), self.selection.mode))
        self.paused = [(k, r) for k, r in self.paused if r != run_id]
        heapq.heapify(self.paused)
        self.promoted.discard(run_id)
        return self._settle(Outcome())

    def close(self) -> Outcome:
        if self.closed:
            return Outcome()
        self.inputs.append(["close"])
        self.closed = True
        kept = {r.run_id for r in rank_runs(self.values, self.selection.mode, self.selection.keep) if r.kept}
        out = Outcome(closed=True)
        out.promoted = sorted(kept - self.promoted)
        out.demoted = sorted(self.promoted - kept)
        out.pruned = sorted(set(self.values) - kept - self.promoted)
        self.promoted, self.pruned, self.paused = kept, set(self.values) - kept, []
        self.last = out
        return out

    # --- the rule -------------------------------------------------------------------------------

    def threshold(self) -> tuple[bool, float] | None:
        """The value key of the last run the rung would keep now, None before min_reports."""
        n = len(self.values)
        if self.min_reports is None or n < self.min_reports or n == 0:
            return None
        return self._keys[kept_count(n, self.selection.keep) - 1]

    def _settle(self, out: Outcome, reporting: str | None = None) -> Outcome:
        """Promote every paused run at or above the threshold (ties with the last kept included,
        as rank_runs keeps them)."""
        limit = self.threshold()
        while limit is not None and self.paused and self.paused[0][0] <= limit:
            _, run_id = heapq.heappop(self.paused)
            self.promoted.add(run_id)
            out.promoted.append(run_id)
        if reporting is not None and reporting not in self.promoted:
            out.paused.append(reporting)
        out.promoted.sort()
        self.last = out
        return out

    # --- records --------------------------------------------------------------------------------

    def record(self) -> dict:
        """The last input's outcome with every input of the rung so far, in arrival order."""
        return {
            "format": RECORD_FORMAT,
            "rung": self.step,
            "select": self.selection.to_dict(),
            "inputs": [list(i) for i in self.inputs],
            "outcome": self.last.to_dict(),
        }


def replay(record: dict) -> Outcome:
    """Recompute a record's outcome from its inputs alone. ValueError naming what is wrong when the
    record is of another format, its select block is not a valid one, or an input is unknown."""
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"not an asynchronous promotion record ({record.get('format')!r}, expected {RECORD_FORMAT})")
    selection, problems = parse_selection(record.get("select"))
    if selection is None:
        raise ValueError(f"the record's select block is not valid: {'; '.join(problems)}")
    rung = Rung(record["rung"], selection)
    out = Outcome()
    for position, entry in enumerate(record["inputs"]):
        kind = entry[0] if entry else None
        if kind == "report":
            out = rung.report(entry[1], entry[2])
        elif kind == "withdraw":
            out = rung.withdraw(entry[1])
        elif kind == "close":
            out = rung.close()
        else:
            raise ValueError(f"input {position} of the record ({entry!r}) is not report, withdraw or close")
    return out


# --- a sweep's rungs ---------------------------------------------------------------------------------


@dataclass
class Change:
    """One rung's outcome, and the record it is written down with."""

    rung: int
    outcome: Outcome
    record: dict | None = None


class Promotion:
    """Every rung of one sweep. A run reports at a rung only once it is promoted at the previous
    one; a rung closes when the previous one has closed and every run it kept has reported (or was
    excluded). `keep_records`: attach each change's record (O(inputs) each: the simulator leaves it
    off for 1,000-run sweeps).

    `log` holds the sweep's inputs in arrival order (["report", run, step, value] | ["exclude",
    run]); `from_log` rebuilds the same state from it, so a decider without memory (a status call,
    an evaluation job) can append to a stored log and act on `state`."""

    def __init__(self, selection: Selection, members: Sequence[str], keep_records: bool = True):
        self.selection = selection
        self.rungs = [Rung(step, selection) for step in selection.rungs]
        self.live = set(members)  # of the first rung
        self.excluded: set[str] = set()  # failed runs: not waited for at any rung
        self.keep_records = keep_records
        self.log: list[list] = []

    @classmethod
    def from_log(cls, selection: Selection, members: Sequence[str], log: Sequence[Sequence]) -> Promotion:
        promotion = cls(selection, members, keep_records=False)
        for position, entry in enumerate(log):
            if entry and entry[0] == "report":
                promotion.report(entry[1], entry[2], entry[3])
            elif entry and entry[0] == "exclude":
                promotion.exclude(entry[1])
            else:
                raise ValueError(f"entry {position} of the promotion log ({entry!r}) is not report or exclude")
        return promotion

    def state(self, run_id: str) -> tuple[str, int | None]:
        """Where a run stands: ("training", last rung it was promoted at, or None), ("paused", rung),
        ("pruned", rung) (demoted runs included) or ("excluded", None)."""
        if run_id in self.excluded:
            return "excluded", None
        promoted_at = None
        for rung in self.rungs:
            if run_id in rung.pruned:
                return "pruned", rung.step
            if run_id not in rung.values:
                break
            if run_id not in rung.promoted:
                return "paused", rung.step
            promoted_at = rung.step
        return "training", promoted_at

    def rung_index(self, step: int) -> int:
        return list(self.selection.rungs).index(step)

    def may_report(self, run_id: str, index: int) -> bool:
        """Whether `run_id` takes part in rung `index` now (live there, not yet reported)."""
        if run_id in self.excluded:
            return False
        eligible = run_id in (self.live if index == 0 else self.rungs[index - 1].promoted)
        return eligible and run_id not in self.rungs[index].values and not self.rungs[index].closed

    def report(self, run_id: str, step: int, value: float) -> list[Change]:
        """A run's value at a rung; returns every change it caused (its own promotion or pause,
        paused runs promoted, closes, and the withdrawals a demotion causes at later rungs)."""
        index = self.rung_index(step)
        if not self.may_report(run_id, index):
            raise ValueError(f"{run_id} is not live at rung {step} (not promoted at the rung before, or reported)")
        self.log.append(["report", run_id, step, value])
        changes = [self._change(index, self.rungs[index].report(run_id, value))]
        return changes + self._close_due()

    def exclude(self, run_id: str) -> list[Change]:
        """A run that failed: it is no longer waited for at any rung."""
        self.excluded.add(run_id)
        self.log.append(["exclude", run_id])
        changes = []
        for index, rung in enumerate(self.rungs):
            if run_id in rung.values and not rung.closed:
                changes.append(self._change(index, rung.withdraw(run_id)))
        return changes + self._close_due()

    def _close_due(self) -> list[Change]:
        changes = []
        for index, rung in enumerate(self.rungs):
            if rung.closed:
                continue
            if index > 0 and not self.rungs[index - 1].closed:
                break
            expected = (self.live if index == 0 else self.rungs[index - 1].promoted) - self.excluded
            if len(rung.values) != len(expected) or set(rung.values) != expected:
                break  # (values are always a subset of expected: may_report, withdrawals)
            out = rung.close()
            changes.append(self._change(index, out))
            for later_index, later in enumerate(self.rungs[index + 1 :], start=index + 1):
                for run_id in out.demoted:  # a demoted run's later values no longer count
                    if run_id in later.values:
                        changes.append(self._change(later_index, later.withdraw(run_id)))
        return changes

    def _change(self, index: int, outcome: Outcome) -> Change:
        rung = self.rungs[index]
        return Change(rung.step, outcome, rung.record() if self.keep_records else None)

    def kept(self, step: int) -> set[str]:
        """The runs a closed rung kept."""
        rung = self.rungs[self.rung_index(step)]
        if not rung.closed:
            raise ValueError(f"rung {step} is not closed yet")
        return set(rung.promoted)
