"""Chaos on the real local SLURM cluster: a seeded, printed, reproducible schedule of interruptions
of training runs (loader workers on, one or two nodes), each of which must end bitwise identical
to an uninterrupted run with no manual step. Used by tests/test_chaos_slurm.py (a small fixed-seed
subset) and bench/chaos.py (N randomized runs, a table and JSON).

Interruptions (KINDS), each aimed at one attempt of a run (a second one hits the next attempt:
two in a row):

    usr2_startup        SIGUSR2 to the ranks the moment their Python exists (starting, importing)
    batch_usr2_startup  SIGUSR2 to the batch shell once its traps are set, before srun (deferred, forwarded)
    usr2_checkpoint     SIGUSR2 to the ranks as a checkpoint step completes (the checkpoint is being written)
    requeue_workers     scontrol requeue while the loader workers run (SIGTERM to every process)
    kill9_rank          kill -9 of one rank
    kill9_worker        kill -9 of one loader worker of one rank
    preempt             a job of the high partition preempts the run

A schedule depends only on (seed, runs, kinds): `make_schedule` guarantees the issue's coverage
(>= 3/10 of the runs lead with a signal in an attempt's first seconds, >= 2/10 with a requeue while
workers run) and draws the rest. Timing on a busy machine varies; the schedule does not.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launch.postmortem import live_job
from launch.rundir import RunDirectory
from launch.status import lost_time
from launch.steplog import read_trace
from testkit.launching import explain, job_id, only_run, overrides, submit

KINDS = (
    "usr2_startup",
    "batch_usr2_startup",
    "usr2_checkpoint",
    "requeue_workers",
    "kill9_rank",
    "kill9_worker",
    "preempt",
)
STARTUP = ("usr2_startup", "batch_usr2_startup")
EFFECT = {  # how the attempt an interruption hits must end (docs/requeue.md#end-reasons)
    "usr2_startup": ("stopped",),
    "batch_usr2_startup": ("preempted",),  # the batch shell got it long before the time limit
    "usr2_checkpoint": ("stopped",),
    "requeue_workers": ("requeued",),
    "kill9_rank": ("interrupted",),  # also when a surviving rank's collective saw its peer vanish (launch/job.py)
    "kill9_worker": ("crashed",),  # a worker killed by SIGKILL (the OOM killer) is a genuine failure
    "preempt": ("preempted",),
}
# A run: 150 steps, a checkpoint every 20. The latest interruption is sent by step ~40 (a second one
# at the next checkpoint of a resumed attempt, or 10 steps into it); 110 steps more let it land. The
# same training as tests/test_launch_slurm.py's LONG runs (cadence and loader workers aside): the
# suite's uninterrupted references (testkit.training.ReferenceRuns) serve both.
STEPS, EVERY = 150, 20
WORKERS = ("data.num_workers=2", "data.prefetch_factor=1")


@dataclass
class Interruption:
    kind: str
    attempt: int  # the attempt (SLURM restart count) it hits
    rank: int = 0  # kill9_*: which rank
    after: int = 3  # kinds that wait for training: the steps the attempt completes first
    sent: float | None = None  # seconds after the attempt's start (SLURM's StartTime) when it was done
    workers: int | None = None  # requeue_workers: loader workers of rank 0 alive when it was done
    effect: str | None = None  # how the attempt it hit ended
    note: str = ""

    def label(self) -> str:
        when = f"+{self.sent:.1f}s" if self.sent is not None else " not done"
        return f"{self.kind}@{self.attempt}{when}->{self.effect or '?'}"


@dataclass
class ChaosRun:
    index: int
    nodes: int
    interruptions: list[Interruption]
    root: Path | None = None
    error: str | None = None
    outcome: dict = field(default_factory=dict)


def make_schedule(seed: int, runs: int, kinds: tuple[str, ...] = KINDS) -> list[ChaosRun]:
    rng = random.Random(seed)
    startup = [k for k in STARTUP if k in kinds]
    lead = [startup[i % len(startup)] for i in range(math.ceil(0.3 * runs))] if startup else []
    lead += ["requeue_workers"] * math.ceil(0.2 * runs) if "requeue_workers" in kinds else []
    others = [k for k in kinds if k not in lead]
    while len(lead) < runs:
        lead.append(others[len(lead) % len(others)])
    rng.shuffle(lead)
    out = []
    for i, first in enumerate(lead[:runs]):
        nodes = rng.choice((1, 2))
        chosen = [first] + ([rng.choice(kinds)] if rng.random() < 0.5 else [])
        planned = [Interruption(k, a, rng.randrange(nodes), rng.randint(2, 9)) for a, k in enumerate(chosen)]
        if len(planned) == 2 and planned[1].after == planned[0].after:  # two kills at the same step look
            planned[1].after += 1  # deterministic to the breaker (docs/requeue.md#requeue-policy): not by design
        out.append(ChaosRun(i, nodes, planned))
    return out


def describe(schedule: list[ChaosRun]) -> str:
    return "\n".join(
        f"  run {r.index}: {r.nodes} node(s): "
        + ", ".join(f"{i.kind}@attempt{i.attempt}(rank {i.rank})" for i in r.interruptions)
        for r in schedule
    )


# --- the job's processes ------------------------------------------------------------------------------


def _environ(pid: str) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(e.split("=", 1) for e in raw.split("\0") if "=" in e)


def is_rank(cmdline: bytes) -> bool:
    """A rank runs `python -u -m launch.start FOLDER` (srun's own command line holds those words too)."""
    argv = cmdline.split(b"\0")
    return Path(argv[0].decode(errors="replace")).name.startswith("python") and b"launch.start" in argv


def rank_process(job: str, rank: int, restart: int | None = None) -> int:
    """PID of the process of `rank` in SLURM job `job` (found through /proc); `restart`: of that
    attempt only (its SLURM_RESTART_COUNT). A rank's DataLoader workers are forked from it: same
    command line, same environment. So a matching process whose parent matches too is a worker,
    not the rank; whichever comes first in /proc (the PID counter wraps) does not matter."""
    matching: dict[int, int] = {}  # pid -> parent pid
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or not is_rank((proc / "cmdline").read_bytes()):
                continue
            env = _environ(proc.name)
            parent = int(re.search(r"^PPid:\s+(\d+)$", (proc / "status").read_text(), re.M).group(1))
        except (OSError, AttributeError):
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("SLURM_PROCID") == str(rank):
            if restart is None or env.get("SLURM_RESTART_COUNT", "0") == str(restart):
                matching[int(proc.name)] = parent
    ranks = [pid for pid, parent in matching.items() if parent not in matching]
    if len(ranks) != 1:
        raise LookupError(
            f"{len(ranks)} processes of rank {rank} of job {job} (restart {restart}); expected 1: {sorted(matching)}"
        )
    return ranks[0]


def rank_exists(job: str, rank: int, restart: int) -> bool:
    try:
        return bool(rank_process(job, rank, restart))
    except LookupError:
        return False


def worker_processes(pid: int) -> list[int]:
    """The DataLoader workers of a rank: its children running the same command line (a worker's
    own children, if any, are not workers of the rank)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"PPid:\t{pid}\n" in (proc / "status").read_text():
                if (proc / "cmdline").read_bytes() == cmdline:
                    out.append(int(proc.name))
        except OSError:
            continue
    return out


# --- one run's driver -------------------------------------------------------------------------------


class Attempt:
    """What the driver sees of attempt k of a run's job."""

    def __init__(self, run: RunDirectory, job: str, k: int):
        self.run, self.job, self.k = run, job, k
        self.started: float | None = None

    def running(self) -> bool:
        """Attempt k, or a later one (another run's preemption may have moved the job on), runs."""
        info = live_job(self.job)
        if info.get("JobState") != "RUNNING" or int(info.get("Restarts", -1)) < self.k:
            return False
        self.k = int(info["Restarts"])
        self.started = time.mktime(time.strptime(info["StartTime"], "%Y-%m-%dT%H:%M:%S"))
        return True

    def completed(self) -> int:
        record = next((a for a in self.run.attempts() if a.key == f"{self.job}/{self.k}"), None)
        trace = read_trace(self.run.step_log_path(record)) if record else None
        return trace.completed if trace else 0

    def last_step(self) -> int:
        record = next((a for a in self.run.attempts() if a.key == f"{self.job}/{self.k}"), None)
        trace = read_trace(self.run.step_log_path(record)) if record else None
        return trace.last[0] if trace and trace.completed else -1

    def traps_set(self) -> bool:
        """The batch shell set its traps: it created this attempt's signal log (launch.batch)."""
        folder = Path(self.run.last_submission().folder)
        return any(folder.glob(f"*/signals/{self.job}-{self.k}.log"))


def _ready(kind: str, a: Attempt, after: int) -> bool:
    if not a.running():
        return False
    if kind == "usr2_startup":  # the rank's Python exists (it started with the stop signals blocked)
        return rank_exists(a.job, 0, a.k)
    if kind == "batch_usr2_startup":
        return a.traps_set()
    if kind == "usr2_checkpoint":
        last = a.last_step()
        return last > 0 and last % EVERY == 0 and a.completed() > 0
    return a.completed() >= after


def _act(i: Interruption, a: Attempt) -> str:
    if i.kind in ("usr2_startup", "usr2_checkpoint"):
        subprocess.run(["scancel", "--signal=USR2", a.job], check=True)
    elif i.kind == "batch_usr2_startup":
        subprocess.run(["scancel", "--batch", "--signal=USR2", a.job], check=True)
    elif i.kind == "requeue_workers":
        i.workers = len(worker_processes(rank_process(a.job, 0)))
        subprocess.run(["scontrol", "requeue", a.job], check=True)
    elif i.kind == "kill9_rank":
        os.kill(rank_process(a.job, i.rank), signal.SIGKILL)
    elif i.kind == "kill9_worker":
        workers = worker_processes(rank_process(a.job, i.rank))
        os.kill(workers[0], signal.SIGKILL)
    elif i.kind == "preempt":
        high = ["sbatch", "--parsable", "-p", "high", "-N2", "-n16", "--output=/dev/null", "--wrap", "sleep 5"]
        return "preempted by job " + subprocess.run(high, capture_output=True, text=True, check=True).stdout.strip()
    return ""


def drive(chaos: ChaosRun, timeout: float) -> None:
    """Carry out the run's interruptions in order (in a thread); errors end up in chaos.error."""
    try:
        run = only_run(chaos.root)
        job = job_id(run)
        floor = 0  # two in a row: the second one hits an attempt after the one the first hit
        for i in chaos.interruptions:
            attempt = Attempt(run, job, max(i.attempt, floor))
            deadline = time.monotonic() + timeout
            while not _ready(i.kind, attempt, i.after):
                if run.status() is not None or time.monotonic() > deadline:
                    raise TimeoutError(f"attempt {i.attempt} never got ready for {i.kind}\n{explain(run)}")
                time.sleep(0.05)
            i.note = _act(i, attempt)
            i.sent, i.attempt = time.time() - attempt.started, attempt.k
            floor = attempt.k + 1
    except Exception as exc:  # reported with the run
        chaos.error = f"driver: {exc!r}"


# --- running a schedule -------------------------------------------------------------------------------


def submit_schedule(schedule: list[ChaosRun], videos: Path, base: Path, seed: int) -> list[threading.Thread]:
    """Submit every run (same training config: one reference per world size) and start its driver."""
    threads = []
    for chaos in schedule:
        chaos.root = base / f"seed{seed}-run{chaos.index}"
        args = overrides(videos, chaos.root, STEPS, EVERY, *WORKERS, f"cluster.nodes={chaos.nodes}")
        rc, out = submit(args)
        if rc != 0:
            chaos.error = f"submit failed: {out}"
            continue
        thread = threading.Thread(target=drive, args=(chaos, 600), daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def last_logged_step(run: RunDirectory, key: str) -> int | None:
    """The last step an attempt's rank 0 logged (a log line per step): independent of the step log."""
    path = run.path / "logs" / key.replace("/", "-") / "rank_0.log"
    steps = [int(m) for m in re.findall(r"step (\d+)/\d+", path.read_text(errors="replace"))] if path.is_file() else []
    return max(steps, default=None)


def outcome(chaos: ChaosRun, same_as_reference) -> dict:
    """What happened to a run that ended: attempts, lost steps (recorded and independently
    measured), bitwise equality with the reference (`same_as_reference(run) -> bool`)."""
    run = only_run(chaos.root)
    attempts = run.attempts()
    gap, redone, redone_s = lost_time(run, attempts)
    measured = 0  # from rank 0's log lines: the last step each ended attempt logged minus the next one's start
    for a, b in zip(attempts, attempts[1:], strict=False):
        logged = last_logged_step(run, a.key)
        measured += max(0, (logged if logged is not None else a.start_step) - b.start_step)
    finished = run.final_state() == "finished"
    job = job_id(run)
    for i in chaos.interruptions:  # what each interruption did to the attempt it hit
        hit = next((a for a in attempts if a.key == f"{job}/{i.attempt}"), None)
        i.effect = hit.end_reason if hit else "no such attempt"
    return {
        "finished": finished,
        "ends": " ".join(a.end_reason or "?" for a in attempts),
        "inferred": sum(a.inferred is not None for a in attempts),
        "lost_steps": redone,
        "lost_s": round(redone_s, 1),
        "measured_steps": measured,
        "requeue_gap_s": round(gap, 1),
        "bitwise": bool(finished and same_as_reference(run)),
    }


def summary(schedule: list[ChaosRun], seed: int) -> dict:
    stops = ("stopped", "preempted", "timeout", "requeued")  # the signal ended its attempt
    firsts = [
        r for r in schedule if any(i.kind in STARTUP and (i.sent or 99) <= 5 and i.effect in stops for i in r.interruptions)
    ]
    requeues = [
        r for r in schedule if any(i.kind == "requeue_workers" and i.workers and i.effect in stops for i in r.interruptions)
    ]
    kinds: dict[str, int] = {}
    for r in schedule:
        for i in r.interruptions:
            if i.sent is not None:
                kinds[i.kind] = kinds.get(i.kind, 0) + 1
    return {
        "seed": seed,
        "runs": len(schedule),
        "bitwise": sum(bool(r.outcome.get("bitwise")) for r in schedule),
        "signal_in_first_5s": len(firsts),
        "requeue_while_workers_run": len(requeues),
        "interruptions": kinds,
        "as_expected": sum(i.effect in EFFECT[i.kind] for r in schedule for i in r.interruptions),
        "unexpected": [
            f"run {r.index}: {i.label()}" for r in schedule for i in r.interruptions if i.effect not in EFFECT[i.kind]
        ],
        "lost_steps_recorded": sum(r.outcome.get("lost_steps", 0) for r in schedule),
        "lost_steps_measured": sum(r.outcome.get("measured_steps", 0) for r in schedule),
        "errors": [f"run {r.index}: {r.error}" for r in schedule if r.error],
    }


def rows(schedule: list[ChaosRun]) -> list[dict]:
    return [
        {
            "run": r.index,
            "nodes": r.nodes,
            "interruptions": ", ".join(i.label() for i in r.interruptions),
            **r.outcome,
        }
        for r in schedule
    ]


def as_json(schedule: list[ChaosRun]) -> list[dict]:
    return [{**asdict(r), "root": str(r.root)} for r in schedule]
