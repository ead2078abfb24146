"""Slot hand-off (launch/sweeps/slots.py): the pure decisions, then the real `take_slot` and
`reconcile` driven against a fake SLURM (an array with a throttle, afterany dependencies, tasks that
end a moment after their run paused) over random sweeps, checking at every moment that the array's
tasks and the resubmitted jobs together never run more than array_parallelism at once."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from launch.sweeps import slots
from launch.sweeps.slots import Lane, Source, lane_source, lanes_of, pick_donor, throttle_target
from testkit.launching import most_at_once


def lane(n: int, tail: str, alive: bool = True, from_array: bool = True, donor: str | None = None) -> Lane:
    return Lane(n, from_array, False, donor, tail, alive)


def test_a_slot_comes_from_the_array_while_its_throttle_can_be_lowered():
    assert lane_source(3, True, 3, [], "7") == Source("array", throttle=2)
    assert lane_source(3, True, 2, [lane(0, "9")], "7") == Source("array", throttle=1)


def test_a_throttle_of_one_is_never_lowered_to_zero_which_slurm_reads_as_unlimited():
    # a lane held: the new job waits for its newest job and takes the lane over
    assert lane_source(2, True, 1, [lane(0, "9"), lane(1, "10", alive=False)], "7") == Source("lane", lane=0, after="9")
    # P = 1 and no lane: after the whole array
    assert lane_source(1, True, 1, [], "7") == Source("array end", after="7")
    # the throttle cannot be read while tasks remain: never a plain submission
    assert lane_source(2, True, None, [], "7").kind == "array end"
    with pytest.raises(ValueError, match="unlimited"):
        slots.set_throttle("7", 0)


def test_once_the_array_has_ended_a_job_takes_a_free_lane_or_waits_along_one():
    assert lane_source(2, False, None, [lane(0, "9")], "7") == Source("free")
    assert lane_source(2, False, None, [lane(0, "9"), lane(1, "10")], "7") == Source("lane", lane=1, after="10")


def test_a_run_whose_previous_job_holds_a_lane_takes_that_lane_over():
    assert lane_source(2, True, 2, [lane(0, "9")], "7", own="9") == Source("lane", lane=0, after="9")


def test_the_donor_is_a_running_task_promised_to_nobody_preferring_one_that_ends_anyway():
    running = [("7_0", "2026-12-07T10:00:00"), ("7_1", "2026-12-07T10:05:00")]
    assert pick_donor(running, set(), 2, None) is None  # throttle lowered to 2, 2 run: a slot is free
    assert pick_donor(running, set(), 1, None) == "7_0"  # the one that started first
    assert pick_donor(running, set(), 1, "7_1") == "7_1"  # its own paused task, still in its teardown
    assert pick_donor(running, set(), 1, None, ending={"7_1"}) == "7_1"  # a paused run's task
    assert pick_donor(running, {"7_0"}, 1, None) is None  # 7_0's slot is promised: 7_1 alone fits


def test_lanes_and_the_throttle_come_from_the_records_and_the_jobs_states():
    records = [
        {"kind": "handoff", "array": "7", "lane": 0, "from_array": True, "donor": "7_1", "receiver_job": "9"},
        {"kind": "handoff", "array": "7", "lane": 0, "from_array": False, "donor": "9", "receiver_job": None},
        {"kind": "handoff", "array": "7", "lane": 1, "from_array": True, "donor": None, "receiver_job": None},
        {"kind": "handoff", "array": "8", "lane": 0, "from_array": True, "donor": None, "receiver_job": "11"},
        {"kind": "return", "array": "7", "lanes": [], "throttle_before": 1, "throttle_after": 2},
    ]
    held = lanes_of(records, "7", {"9": "RUNNING"})
    # lane 0 is held by job 9 (its failed hand-on holds nothing); lane 1's decider never submitted
    assert [(x.lane, x.tail_job, x.alive) for x in held] == [(0, "9", True), (1, "", False)]
    assert throttle_target(3, held) == 2
    assert throttle_target(3, lanes_of(records, "7", {"9": "COMPLETED"})) == 3
    assert throttle_target(1, held) == 1  # never 0


# --- the real take_slot and reconcile against a fake SLURM ----------------------------------------


@dataclass
class Job:
    id: str
    after: list[str]
    run: FakeRun
    state: str = "PENDING"  # PENDING, RUNNING, ENDING (its run has ended; the teardown still runs), DONE
    start: float = 0.0
    left: int = 0  # ticks of training left once started


@dataclass
class Submission:
    job_id: str


@dataclass
class FakeRun:
    name: str
    jobs: list[str] = field(default_factory=list)
    status: str | None = None  # "paused", "finished", or None while it trains or waits
    exists: bool = True

    @property
    def path(self) -> Path:
        return Path("/runs") / self.name

    def submissions(self) -> list[Submission]:
        return [Submission(j) for j in self.jobs]

    def last_submission(self) -> Submission:
        return Submission(self.jobs[-1])

    def final_state(self) -> str | None:
        return self.status


class FakeSlurm:
    """One array `7` of `n` tasks throttled to P, plus resubmitted jobs; every start goes through
    the rules SLURM applies (throttle, afterany), and every moment's running count is kept."""

    def __init__(self, n: int, parallelism: int, rng: random.Random):
        self.rng, self.throttle, self.now = rng, parallelism, 0.0
        self.runs = [FakeRun(f"r{i}", [f"7_{i}"]) for i in range(n)]
        self.jobs = {f"7_{i}": Job(f"7_{i}", [], self.runs[i]) for i in range(n)}
        self.intervals: list[tuple[float, float]] = []
        self.next_id = 100

    def tasks(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.id.startswith("7_")]

    def done(self, job: str) -> bool:
        if job == "7":
            return all(t.state == "DONE" for t in self.tasks())
        return self.jobs[job].state == "DONE"

    def start(self, job: Job) -> None:
        job.state, job.start, job.left = "RUNNING", self.now, self.rng.randint(1, 6)

    def schedule(self) -> None:
        for job in self.jobs.values():
            if job.state == "PENDING" and not job.id.startswith("7_") and all(self.done(a) for a in job.after):
                self.start(job)
        for task in sorted(self.tasks(), key=lambda t: int(t.id[2:])):
            running = sum(t.state in ("RUNNING", "ENDING") for t in self.tasks())
            if task.state == "PENDING" and running < self.throttle:
                self.start(task)

    def tick(self) -> None:
        self.now += 1
        for job in self.jobs.values():
            if job.state == "ENDING" and self.rng.random() < 0.6:
                job.state = "DONE"
                self.intervals.append((job.start, self.now))
            elif job.state == "RUNNING":
                job.left -= 1
                if job.left <= 0:
                    job.state = "ENDING"
                    job.run.status = "paused" if len(job.run.jobs) == 1 or self.rng.random() < 0.4 else "finished"

    def submit(self, run: FakeRun, after: list[str]) -> str:
        job_id = str(self.next_id)
        self.next_id += 1
        self.jobs[job_id] = Job(job_id, [run.jobs[-1], *after], run)
        run.jobs.append(job_id)
        run.status = None
        return job_id

    # the scheduler calls slots.py makes
    def array_tasks(self, array: str) -> list[tuple[str, str, str]]:
        state = {"PENDING": "PENDING", "RUNNING": "RUNNING", "ENDING": "RUNNING"}
        return [(t.id, state[t.state], f"{t.start:012.1f}") for t in self.tasks() if t.state != "DONE"]

    def read_throttle(self, array: str) -> int | None:
        return self.throttle if any(t.state != "DONE" for t in self.tasks()) else None

    def set_throttle(self, array: str, throttle: int) -> None:
        assert throttle >= 1
        self.throttle = throttle

    def states(self, jobs: list[str]) -> dict[str, str]:
        name = {"PENDING": "PENDING", "RUNNING": "RUNNING", "ENDING": "COMPLETING", "DONE": "COMPLETED"}
        return {j: name[self.jobs[j].state] for j in jobs}


@pytest.mark.parametrize("seed", range(16))
def test_resubmitted_jobs_and_array_tasks_never_run_more_than_array_parallelism_at_once(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    parallelism, n = rng.choice([1, 2, 3, 4]), rng.randint(2, 12)
    slurm = FakeSlurm(n, parallelism, rng)
    for name in ("array_tasks", "read_throttle", "set_throttle"):
        monkeypatch.setattr(slots, name, getattr(slurm, name))
    monkeypatch.setattr(slots, "slurm_states", slurm.states)
    promotion = tmp_path / "promotion"
    resubmitted = 0
    for _ in range(250):
        slurm.schedule()
        # the decider (a paused job's teardown, an evaluation job, status): give back, then resume
        paused = [r for r in slurm.runs if r.status == "paused" and len(r.jobs) < 4]
        if rng.random() < 0.5:
            slots.reconcile(promotion, "7", parallelism)
            for run in rng.sample(paused, k=min(len(paused), rng.randint(0, 2))):
                grant = slots.take_slot(promotion, run, parallelism, slurm.runs)
                grant.record(run.name, slurm.submit(run, grant.after))
                resubmitted += 1
        slurm.tick()
        running = [(j.start, slurm.now + 0.5) for j in slurm.jobs.values() if j.state in ("RUNNING", "ENDING")]
        assert most_at_once(slurm.intervals + running)[0] <= parallelism, (seed, slurm.jobs)
    slots.reconcile(promotion, "7", parallelism)
    assert resubmitted >= n  # every run paused at its first rung and was resumed at least once
    records = [json.loads(p.read_text()) for p in sorted((promotion / "slots").glob("*.json"))]
    assert all(r["throttle_after"] is None or 1 <= r["throttle_after"] <= parallelism for r in records)


# --- the local backend ------------------------------------------------------------------------------


def test_a_local_sweep_and_a_resumed_run_wait_for_the_sweeps_slots(tmp_path, monkeypatch):
    """Every job of a local sweep holds one of array_parallelism lock-file slots, even when the sweep
    fits (a paused run's process still ending holds its slot); a resumed run, submitted alone, waits
    for one of the slots of its first submission (launch/resume.py passes them)."""
    from launch.backends import InLocalSlot, LocalBackend, Resources

    submitted = []

    class Executor:
        def submit(self, fn):
            submitted.append(fn)
            return type("J", (), {"job_id": str(len(submitted))})()

    monkeypatch.setattr(LocalBackend, "executor", lambda self, resources: Executor())
    resources = Resources(array_parallelism=4)
    LocalBackend(tmp_path / "sweep").submit([print, print], resources)
    assert [(type(f), f.folder, f.slots) for f in submitted] == [(InLocalSlot, str(tmp_path / "sweep" / "slots"), 4)] * 2
    submitted.clear()
    resumed = LocalBackend(tmp_path / "resumed")
    resumed.slot_folder = tmp_path / "sweep" / "slots"
    resumed.submit([print], resources)
    assert [(type(f), f.folder) for f in submitted] == [(InLocalSlot, str(tmp_path / "sweep" / "slots"))]
    submitted.clear()
    LocalBackend(tmp_path / "single").submit([print], resources)  # one run, not a sweep: no slot
    assert submitted == [print]


def test_the_throttle_is_read_from_a_live_record_of_the_array():
    show = (
        "JobId=2 ArrayJobId=2 ArrayTaskId=7 ArrayTaskThrottle=1 JobName=lr\n   JobState=PENDING Reason=None\n\n"
        "JobId=9 ArrayJobId=2 ArrayTaskId=0 ArrayTaskThrottle=2 JobName=lr\n   JobState=COMPLETED Reason=None\n"
    )
    assert slots.parse_throttle(show) == 1
    assert slots.parse_throttle(show.replace("PENDING", "COMPLETED")) is None
