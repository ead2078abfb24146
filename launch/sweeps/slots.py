"""Slot hand-off: a promoted run resubmitted on SLURM runs inside its array's `cluster.array_parallelism`.

A sweep's runs are one job array throttled to P tasks at once (`%P`). A paused run that is promoted is
resubmitted as a new job (launch/resume.py), which SLURM does not count against the array's throttle.
So each resubmitted job first takes one of the P slots (a *lane*) and holds it until it ends:

- **from the array**: the array's throttle is lowered by one (`scontrol update JobId=<array>
  ArrayTaskThrottle=T-1`, never to 0, which SLURM reads as unlimited) *before* looking at what runs;
  then, if fewer than T-1 of the array's tasks run (not counting donors, below), a slot is free and
  the job is submitted plainly; else it waits (`--dependency=afterany:<donor>`) for a running task of
  the array whose slot is promised to nobody yet (its own paused task if that still runs, else the
  one that started first): the donor's slot goes to it and not back to the array;
- **along a lane** when the throttle is already 1 (it cannot be lowered): the job waits for the
  newest job holding a lane (afterany) and takes the lane over;
- **after the whole array** (afterany:<array>) when P is 1 and no lane exists;
- once the array has ended, a job takes a free lane if fewer than P are held, else waits along one.

A lane ends when its last job is no longer pending or running (finished, paused, pruned, failed,
cancelled by hand): `reconcile` (launch/advance.py, every decision of the sweep, before resuming)
then sets the throttle back to P minus the lanes still held, which also repairs a throttle left
low by a decider or a job that was killed. Why exact: at every moment the array runs at most
`throttle + (running donors)` tasks (SLURM starts a task only below the throttle; lowering and
promising a running donor keep the sum), every lane runs at most one job at once (each job of a
lane waits for the one before it), and `throttle + lanes taken from the array = P`.

Every hand-off and every return is a record in `<sweep>/promotion/slots/NNNNNN.json` (donor,
receiver, throttle before and after): status counts them and reconcile rebuilds the lanes from them.
The pure decisions (`lane_source`, `pick_donor`, `throttle_target`) are tested without SLURM.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.atomicio import atomic_write_json
from launch.rundir import RunDirectory
from launch.slurm_queries import ACTIVE_STATES, slurm_states

log = logging.getLogger(__name__)

RUNNING = "running"  # an array task that holds (or is about to hold, or is still releasing) its slot


@dataclass(frozen=True)
class Lane:
    """One slot taken from an array, as the records tell it, with its last job's state."""

    lane: int
    from_array: bool  # the throttle was lowered for it (given back by reconcile when it ends)
    returned: bool  # reconcile gave it back already
    donor: str | None  # the job the lane's first receiver waited for
    tail_job: str  # the lane's newest job
    alive: bool  # the tail job is pending or running (or the scheduler cannot tell yet)


@dataclass(frozen=True)
class Source:
    """Where a resubmitted job's slot comes from: "array" (lower the throttle to `throttle`), "lane"
    (wait for lane `lane`'s newest job `after`), "array end" (wait for the whole array `after`),
    "free" (the array has ended and fewer than P lanes are held)."""

    kind: str
    throttle: int | None = None
    lane: int | None = None
    after: str | None = None


def lane_source(
    parallelism: int, array_active: bool, throttle: int | None, lanes: list[Lane], array: str, own: str | None = None
) -> Source:
    """Where the next resubmitted job of the array gets its slot (the pure half of `take_slot`).
    `own`: the run's previous job; a lane it still holds is handed on to the run itself."""
    alive = [lane for lane in lanes if lane.alive]
    mine = [lane for lane in alive if own is not None and lane.tail_job == own]
    if mine:
        return Source("lane", lane=mine[0].lane, after=own)
    if array_active:
        if throttle is not None and throttle >= 2:
            return Source("array", throttle=throttle - 1)
        if alive:
            newest = max(alive, key=lambda lane: lane.lane)
            return Source("lane", lane=newest.lane, after=newest.tail_job)
        return Source("array end", after=array)
    if len(alive) < parallelism:
        return Source("free")
    newest = max(alive, key=lambda lane: lane.lane)
    return Source("lane", lane=newest.lane, after=newest.tail_job)


def pick_donor(
    running: list[tuple[str, str]], promised: set[str], throttle: int, own: str | None, ending: set[str] = frozenset()
) -> str | None:
    """After the throttle was lowered to `throttle`: None when a slot of the array is free (at most
    `throttle` of its running tasks are promised to nobody: the array, now throttled to that many,
    starts no task until one ends), else the running task that gives its slot: the receiver's own
    previous job if it still runs (it waits for it anyway), else one whose run has ended already
    (`ending`: paused, pruned or finished, its teardown still running), else the one that started
    first. `running`: (task id, start time) of the array's running tasks."""
    free = sorted((start, task) for task, start in running if task not in promised)
    if len(free) <= throttle:
        return None
    tasks = [task for _, task in free]
    if own in tasks:
        return own
    return next((task for task in tasks if task in ending), tasks[0])


def throttle_target(parallelism: int, lanes: list[Lane]) -> int:
    """The array's throttle: P minus the lanes taken from it that are still held; never 0 (SLURM
    reads 0 as unlimited)."""
    held = sum(1 for lane in lanes if lane.from_array and lane.alive)
    return max(1, parallelism - held)


# --- the records -------------------------------------------------------------------------------


def slots_dir(promotion: Path) -> Path:
    return promotion / "slots"


def read_records(promotion: Path) -> list[dict]:
    folder = slots_dir(promotion)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def write_record(promotion: Path, record: dict) -> Path:
    folder = slots_dir(promotion)
    number = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
    path = folder / f"{number:06d}.json"
    atomic_write_json(path, {**record, "time": time.time()})
    return path


def lanes_of(records: list[dict], array: str, states: dict[str, str]) -> list[Lane]:
    """The array's lanes from its records; `states`: job id -> scheduler state of each tail job."""
    hand_offs: dict[int, list[dict]] = {}
    returned: set[int] = set()
    for record in records:
        if record.get("array") != array:
            continue
        if record["kind"] == "handoff":
            hand_offs.setdefault(record["lane"], []).append(record)
        elif record["kind"] == "return":
            returned.update(record["lanes"])
    lanes = []
    for number, chain in sorted(hand_offs.items()):
        # its newest job; a hand-off without one (its submission failed, or its decider was killed
        # before it) holds nothing
        tail = next((r["receiver_job"] for r in reversed(chain) if r["receiver_job"]), None)
        state = states.get(tail, "UNKNOWN") if tail else "NONE"
        lanes.append(
            Lane(
                lane=number,
                from_array=chain[0]["from_array"],
                returned=number in returned,
                donor=chain[0]["donor"],
                tail_job=tail or "",
                alive=state in ACTIVE_STATES or state == "UNKNOWN",  # UNKNOWN: not in squeue nor sacct yet
            )
        )
    return lanes


# --- SLURM -------------------------------------------------------------------------------------


def array_of(run: RunDirectory) -> str | None:
    """The job array the run was first submitted in ("123" of "123_4"); None: not an array task."""
    subs = run.submissions()
    if not subs or "_" not in subs[0].job_id:
        return None
    return subs[0].job_id.split("_", 1)[0]


def array_tasks(array: str) -> list[tuple[str, str, str]]:
    """(task id, state, start time) of every task of the array the scheduler still holds."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%i|%T|%S"], capture_output=True, text=True, timeout=60)
    rows = []
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0].startswith(f"{array}_"):
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def parse_throttle(show_job: str) -> int | None:
    """The throttle of an array from `scontrol show job <array>` (one record per task and one for
    the pending rest): that of a record still pending or running (None: none is)."""
    for record in re.split(r"\n\s*\n", show_job):
        state = re.search(r"JobState=(\w+)", record)
        throttle = re.search(r"ArrayTaskThrottle=(\d+)", record)
        if state and throttle and state.group(1) in ACTIVE_STATES:
            return int(throttle.group(1))
    return None


def read_throttle(array: str) -> int | None:
    """The array's ArrayTaskThrottle (None: SLURM no longer knows the array, or all its tasks ended)."""
    out = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True, timeout=60)
    return parse_throttle(out.stdout) if out.returncode == 0 else None


def set_throttle(array: str, throttle: int) -> None:
    """`scontrol update JobId=<array> ArrayTaskThrottle=N`. SLURM applies it to every task and
    exits 1 when some have finished ("Job has already finished"; the others say "No error"), so
    success is read back: the live records carry the new throttle."""
    if throttle < 1:
        raise ValueError(f"refusing ArrayTaskThrottle={throttle}: SLURM reads 0 as unlimited")
    proc = subprocess.run(
        ["scontrol", "update", f"JobId={array}", f"ArrayTaskThrottle={throttle}"], capture_output=True, text=True, timeout=60
    )
    now = read_throttle(array)
    if now not in (throttle, None):  # None: every task has ended meanwhile, nothing left to throttle
        raise RuntimeError(f"could not set the throttle of array {array} to {throttle} (it is {now}): {proc.stderr.strip()}")


def tail_states(records: list[dict], array: str) -> dict[str, str]:
    jobs = sorted(
        {r["receiver_job"] for r in records if r.get("array") == array and r["kind"] == "handoff" and r["receiver_job"]}
    )
    return slurm_states(jobs) if jobs else {}


def reconcile(promotion: Path, array: str, parallelism: int) -> str | None:
    """Give back the lanes of `array` whose jobs all ended: set its throttle to P minus the lanes
    still held (also repairing a throttle left low by a killed decider). Returns what it did."""
    records = read_records(promotion)
    lanes = lanes_of(records, array, tail_states(records, array))
    ended = [lane.lane for lane in lanes if lane.from_array and not lane.returned and not lane.alive]
    tasks = array_tasks(array)
    throttle = read_throttle(array) if tasks else None
    target = throttle_target(parallelism, lanes)
    if throttle is not None and throttle != target:
        set_throttle(array, target)
    if ended or (throttle is not None and throttle != target):
        write_record(promotion, {"kind": "return", "array": array, "lanes": ended, "throttle_before": throttle,
                                 "throttle_after": target if throttle is not None else None})  # fmt: skip
        return f"array {array}: gave back {len(ended)} slot(s), throttle {throttle} -> {target if throttle is not None else '-'}"
    return None


@dataclass
class Grant:
    """A slot taken for one resubmission: the jobs it waits for (`after`), and its hand-off record,
    written before the throttle is lowered (receiver None: a lane that holds nothing, so a decider
    killed half-way leaves a throttle that reconcile repairs) and completed by `record`."""

    array: str
    after: list[str]
    path: Path
    content: dict

    def record(self, receiver_run: str, receiver_job: str) -> None:
        atomic_write_json(self.path, {**self.content, "receiver_run": receiver_run, "receiver_job": receiver_job})

    def undo(self) -> None:
        """The submission failed: give the slot back now (reconcile would, at the next decision)."""
        before, after = self.content.get("throttle_before"), self.content.get("throttle_after")
        if before is not None and after is not None and before != after:
            try:
                set_throttle(self.array, before)
                atomic_write_json(self.path, {**self.content, "from_array": False, "undone": True})
            except Exception:  # reconcile gives it back at the next decision: the record holds no job
                log.exception("could not give back the slot of array %s", self.array)


def take_slot(promotion: Path, run: RunDirectory, parallelism: int, members: Sequence[RunDirectory] = ()) -> Grant | None:
    """Take a slot for resubmitting `run` (call under the sweep's lock, after `reconcile`); None when
    the run was not submitted in an array (nothing to count it against). `members`: the sweep's
    runs (a running task of one that has ended already is the donor to prefer)."""
    array = array_of(run)
    if array is None:
        return None
    records = read_records(promotion)
    lanes = lanes_of(records, array, tail_states(records, array))
    tasks = array_tasks(array)
    throttle = read_throttle(array) if tasks else None
    last = run.last_submission()
    own = last.job_id if last else None
    source = lane_source(parallelism, bool(tasks), throttle, lanes, array, own)
    base = {"kind": "handoff", "array": array, "throttle_before": throttle, "throttle_after": throttle,
            "receiver_run": run.path.name, "receiver_job": None}  # fmt: skip
    next_lane = max((lane.lane for lane in lanes), default=-1) + 1
    if source.kind == "array":
        content = {**base, "lane": next_lane, "from_array": True, "donor": None, "donor_kind": None,
                   "throttle_after": source.throttle}  # fmt: skip
        path = write_record(promotion, content)
        set_throttle(array, source.throttle)  # first: from now on the array does not refill a slot
        running = [(task, start) for task, state, start in array_tasks(array) if state != "PENDING"]
        promised = {lane.donor for lane in lanes if lane.alive and lane.donor}
        ending = {m.last_submission().job_id for m in members if m.exists and m.final_state() and m.last_submission()}
        donor = pick_donor(running, promised, source.throttle, own, ending)
        content = {**content, "donor": donor, "donor_kind": "array task" if donor else None}
        atomic_write_json(path, content)
        return Grant(array, [donor] if donor else [], path, content)
    if source.kind == "lane":
        content = {**base, "lane": source.lane, "from_array": False, "donor": source.after, "donor_kind": "lane"}
    elif source.kind == "array end":
        content = {**base, "lane": next_lane, "from_array": False, "donor": array, "donor_kind": "whole array"}
    else:
        content = {**base, "lane": next_lane, "from_array": False, "donor": None, "donor_kind": None}
    after = [content["donor"]] if content["donor"] else []
    return Grant(array, after, write_record(promotion, content), content)


def summary(promotion: Path) -> str | None:
    """For status: how many resubmissions took a slot, how (donor or free), and the slots given back."""
    records = read_records(promotion)
    hand_offs = [r for r in records if r["kind"] == "handoff"]
    if not hand_offs:
        return None
    donors = sum(1 for r in hand_offs if r.get("donor"))
    returned = sum(len(r["lanes"]) for r in records if r["kind"] == "return")
    throttles = [r["throttle_after"] for r in records if r.get("throttle_after") is not None]
    now = f", array throttle now {throttles[-1]}" if throttles else ""
    return (
        f"  slot hand-offs: {len(hand_offs)} resubmission(s) took a slot of the array ({donors} waited for a "
        f"donor job); {returned} slot(s) given back{now} ({slots_dir(promotion)})"
    )
