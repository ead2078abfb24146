"""What runs cost: per attempt, per run, per sweep, and what pruning saved.

    allocated   GPUs and CPUs the attempt held (all nodes together)
    elapsed     how long it held them
    queue wait  from (re)submission to the allocation's start
    redone      steps the attempt completed that the next one had to compute again (a non-cooperative
                end resumes from the last checkpoint): the last completed step of its attempt
                record and step log (launch/steplog.py), and the time and GPU-hours they took

On SLURM every number comes from the scheduler's accounting: ONE batched `sacct -D -X` call for all
runs and their evaluation jobs (launch.slurm_queries.slurm_allocations), AllocTRES x ElapsedRaw per
allocation, so GPU-hours are exactly what sacct charges; a requeued job has one allocation per
start, matched to the attempt that recorded its start inside it. Elsewhere they come from the
attempt records (launch/rundir.py): the local backend has no queue, and a process holds its CPUs
from the moment it is spawned (the submission, or the previous attempt's end when it restarts) to
the end of its attempt; the allocation is the request (tasks x cluster.cpus_per_task), which nothing
enforces. Without GPUs (the local backend, the local SLURM cluster) the unit is the CPU-hour, and
the tables say so.

Evaluation jobs: their sacct allocations on SLURM (job ids from the claims); locally the wall time
their records report x evaluation.cpus_per_task.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eval.records import RECORD_NAME, parse_record
from launch.backends import backend_class
from launch.evaluations.claims import SUBMITTED, EvaluationSubmission, submission
from launch.rundir import Attempt, RunDirectory
from launch.slurm_queries import Allocation, slurm_allocations
from launch.steplog import read_trace

MATCH_SLACK_S = 5.0  # an attempt's start record lies inside its allocation, give or take clock skew


@dataclass(frozen=True)
class AttemptCost:
    job_id: str
    number: int | None  # the attempt record's number; None: an allocation that recorded no attempt
    start: float  # when the allocation began (unix time)
    end: float | None  # None: still running
    queue_s: float
    gpus: int
    cpus: int
    redone_steps: int = 0
    redone_s: float = 0.0
    source: str = "attempts"  # attempts | sacct

    def elapsed_s(self, now: float) -> float:
        return max(0.0, (self.end if self.end is not None else now) - self.start)

    def held_before(self, when: float, now: float) -> float:
        """Seconds of this allocation before `when`."""
        return max(0.0, min(self.end if self.end is not None else now, when) - self.start)


@dataclass
class RunCost:
    attempts: list[AttemptCost]
    eval_gpu_s: float = 0.0
    eval_cpu_s: float = 0.0
    steps_trained: int = 0  # optimizer steps computed, redone ones included
    now: float = field(default_factory=time.time)

    @property
    def uses_gpus(self) -> bool:
        return any(a.gpus for a in self.attempts) or self.eval_gpu_s > 0

    def train_s(self, unit: str) -> float:
        """GPU- or CPU-seconds of training (`unit`: "gpu" | "cpu")."""
        return sum(a.elapsed_s(self.now) * (a.gpus if unit == "gpu" else a.cpus) for a in self.attempts)

    def eval_s(self, unit: str) -> float:
        return self.eval_gpu_s if unit == "gpu" else self.eval_cpu_s

    def redone_s(self, unit: str) -> float:
        return sum(a.redone_s * (a.gpus if unit == "gpu" else a.cpus) for a in self.attempts)

    def queue_s(self) -> float:
        return sum(a.queue_s for a in self.attempts)

    def total_s(self, unit: str) -> float:
        return self.train_s(unit) + self.eval_s(unit)

    def to_step_time(self, when: float, unit: str) -> float:
        """Unit-seconds of training spent before `when` (e.g. a checkpoint's creation time)."""
        return sum(a.held_before(when, self.now) * (a.gpus if unit == "gpu" else a.cpus) for a in self.attempts)


def unit_of(costs: Sequence[RunCost]) -> str:
    """ "gpu" when any run held a GPU, else "cpu" (a CPU-only cluster, the local backend)."""
    return "gpu" if any(c.uses_gpus for c in costs) else "cpu"


def hours(seconds: float, unit: str) -> str:
    return f"{seconds / 3600:.3g} {unit.upper()}-h"


# --- from the records ------------------------------------------------------------------------------


def redone(run: RunDirectory, attempts: Sequence[Attempt]) -> list[tuple[int, float]]:
    """(steps redone, their seconds) per attempt: the last step it completed (its end record, which
    the lifecycle takes from its step log) beyond the step the next attempt resumed from, timed by
    its step log (launch/steplog.py): time(last step) - time(step the next one resumed from). A
    cooperative stop (time limit, preemption, prune) checkpoints the step it stops at: nothing is
    redone. launch/status.py's lost column sums the same figures. An attempt without a step log
    (recorded before step logs existed) is timed at its mean step time."""
    out = []
    for a, nxt in zip(attempts, [*attempts[1:], None][: len(attempts)], strict=True):  # none yet: queued
        steps = max(0, (a.end_step or 0) - nxt.start_step) if nxt is not None and a.end_step is not None else 0
        seconds = 0.0
        if steps:
            trace = read_trace(run.step_log_path(a))
            if trace is not None:
                since = trace.time_of(max(nxt.start_step, trace.first[0]))
                seconds = trace.last[1] - since if since is not None else 0.0
            elif a.end_time and a.end_step is not None and a.end_step > a.start_step:
                seconds = steps * (a.end_time - a.start_time) / (a.end_step - a.start_step)
        out.append((steps, seconds))
    return out


def local_attempt_costs(run: RunDirectory, attempts: Sequence[Attempt], fallback: dict[str, int]) -> list[AttemptCost]:
    """Attempts of a run on the local backend (or any run whose scheduler has no accounting)."""
    submitted = sorted(s.time for s in run.submissions())
    out = []
    for a, (steps, seconds) in zip(attempts, redone(run, attempts), strict=True):
        since = max([t for t in submitted if t <= a.start_time], default=a.start_time)
        before = [b.end_time for b in attempts[: a.number] if b.end_time and b.end_time <= a.start_time]
        since = max([since, *before])
        alloc = a.alloc or fallback
        out.append(AttemptCost(a.job_id, a.number, since, a.end_time, 0.0, alloc["gpus"], alloc["cpus"], steps, seconds))
    return out


def slurm_attempt_costs(run: RunDirectory, attempts: Sequence[Attempt], allocations: Sequence[Allocation]) -> list[AttemptCost]:
    """Attempts of a SLURM run priced by its jobs' allocations (each requeue of a job is one); an
    attempt sacct does not know yet (accounting lags a few seconds) is priced from its record."""
    by_number = dict(zip([a.number for a in attempts], redone(run, attempts), strict=True))
    out, matched = [], set()
    for alloc in allocations:
        if alloc.start is None:
            continue
        end = alloc.end if alloc.end is not None else float("inf")
        inside = [
            a for a in attempts if a.job_id == alloc.job_id and alloc.start - MATCH_SLACK_S <= a.start_time <= end + MATCH_SLACK_S
        ]
        steps = sum(by_number[a.number][0] for a in inside)
        seconds = sum(by_number[a.number][1] for a in inside)
        matched.update(a.number for a in inside)
        # ElapsedRaw is sacct's own figure: end = start + elapsed keeps GPU-h equal to AllocTRES x Elapsed
        stop = alloc.start + alloc.elapsed_s if alloc.end is not None else None
        out.append(
            AttemptCost(
                alloc.job_id,
                inside[0].number if inside else None,
                alloc.start,
                stop,
                max(0.0, alloc.start - alloc.submit),
                alloc.gpus,
                alloc.cpus,
                steps,
                seconds,
                "sacct",
            )
        )
    for a in attempts:
        if a.number not in matched and a.alloc:
            steps, seconds = by_number[a.number]
            out.append(
                AttemptCost(a.job_id, a.number, a.start_time, a.end_time, 0.0, a.alloc["gpus"], a.alloc["cpus"], steps, seconds)
            )
    return sorted(out, key=lambda c: c.start)


def evaluation_jobs(run: RunDirectory) -> list[tuple[Path, EvaluationSubmission]]:
    """(evaluation directory, its claim) of every evaluation submitted for the run (a claim being
    written has no job id yet: counted on the next call)."""
    return [(claim.parent, submission(claim.parent)) for claim in sorted(run.path.glob(f"evals/step_*/*/{SUBMITTED}"))]


def recorded_seconds(directory: Path) -> float:
    """The wall time an evaluation's record says it took (0 without a valid record)."""
    try:
        return parse_record(directory / RECORD_NAME).wall_time_s
    except ValueError:  # no record, or an invalid one (status names it)
        return 0.0


def in_accounting(backend: str | None) -> bool:
    """Whether the scheduler's accounting (sacct) knows the jobs of a submission (or an evaluation
    claim) on `backend`; the others' cost comes from the attempt records."""
    return backend_class(backend).accounted_by_sacct


def run_job_ids(run: RunDirectory) -> list[str]:
    """SLURM job ids of the run's training submissions and evaluation jobs."""
    ids = [s.job_id for s in run.submissions() if in_accounting(s.backend)]
    ids += [c.job_id for _, c in evaluation_jobs(run) if in_accounting(c.backend) and c.job_id]
    return ids


def accounting(runs: Sequence[RunDirectory]) -> dict[str, list[Allocation]]:
    """The allocations of every SLURM job of `runs`, from one sacct call ({} when none ran on SLURM)."""
    ids = [j for run in runs if run.exists for j in run_job_ids(run)]
    return slurm_allocations(ids) if ids else {}


def run_cost(run: RunDirectory, allocations: dict[str, list[Allocation]] | None = None, now: float | None = None) -> RunCost:
    """The run's cost; `allocations`: from `accounting` (needed for its SLURM jobs)."""
    allocations = allocations or {}
    cfg = run.config()
    cluster, evaluation = cfg.cluster, cfg.evaluation
    fallback = {
        "gpus": cluster.gpus_per_node * cluster.nodes,
        "cpus": cluster.processes_per_node * cluster.nodes * cluster.cpus_per_task,
    }
    attempts = run.attempts()
    on_slurm = any(in_accounting(s.backend) for s in run.submissions())
    if on_slurm:
        rows = [a for s in dict.fromkeys(s.job_id for s in run.submissions()) for a in allocations.get(s, [])]
        costs = slurm_attempt_costs(run, attempts, rows)
    else:
        costs = local_attempt_costs(run, attempts, fallback)
    cost = RunCost(costs, now=now or time.time())
    cost.steps_trained = sum(max(0, (a.end_step or a.start_step) - a.start_step) for a in attempts)
    for directory, claim in evaluation_jobs(run):
        if in_accounting(claim.backend) and claim.job_id in allocations:
            continue  # counted below, once per job (a job may evaluate several tasks)
        seconds = recorded_seconds(directory)
        cost.eval_cpu_s += seconds * evaluation.cpus_per_task
        cost.eval_gpu_s += seconds * evaluation.gpus
    for job in dict.fromkeys(c.job_id for _, c in evaluation_jobs(run) if in_accounting(c.backend)):
        for alloc in allocations.get(job, []):
            cost.eval_cpu_s += alloc.elapsed_s * alloc.cpus
            cost.eval_gpu_s += alloc.elapsed_s * alloc.gpus
    return cost


def to_checkpoint(run: RunDirectory, created: float, allocations: dict[str, list[Allocation]] | None = None) -> dict:
    """GPU- and CPU-hours of training spent until a checkpoint was created (unix time `created`):
    what a result record stores as its training cost."""
    cost = run_cost(run, allocations)
    return {
        "gpu_hours": cost.to_step_time(created, "gpu") / 3600,
        "cpu_hours": cost.to_step_time(created, "cpu") / 3600,
        "source": "sacct" if any(a.source == "sacct" for a in cost.attempts) else "attempts",
    }


def projected_to_end(run: RunDirectory, cost: RunCost, unit: str) -> float:
    """Unit-seconds a run stopped early (pruned) would still have cost to reach its last step: its
    remaining steps at its own measured cost per step, plus the evaluations of the milestones it
    skipped at its own mean cost per evaluation. 0 when it cannot be estimated. The cost per step is
    the step logs' training rate times the allocation's size (`step_rate_cost`): the run already
    paid its start-up, so counting start-ups in the rate would overstate what pruning saved; without
    a step log, its allocations' cost over its steps."""
    total, stopped = run.total_steps(), run.last_checkpoint_step() or 0
    if not total or stopped >= total or cost.steps_trained <= 0:
        return 0.0
    per_step = step_rate_cost(run, cost, unit)
    if per_step is None:
        per_step = cost.train_s(unit) / cost.steps_trained
    cfg = run.config()
    every = cfg.checkpoint.milestone_every_steps
    skipped = {total} | ({m for m in range(every, total + 1, every) if m > stopped} if every > 0 else set())
    evaluations = len(list(run.path.glob("evals/step_*/*/record.json")))
    per_evaluation = cost.eval_s(unit) / evaluations if evaluations else 0.0
    return (total - stopped) * per_step + len(skipped) * len(cfg.evaluation.tasks) * per_evaluation


def step_rate_cost(run: RunDirectory, cost: RunCost, unit: str) -> float | None:
    """Unit-seconds per optimizer step while training, from the step logs of the run's attempts
    (first to last logged step, no start-up or teardown) and the size of its allocations; None
    without a log of two steps or more."""
    seconds = steps = 0.0
    for attempt in run.attempts():
        trace = read_trace(run.step_log_path(attempt))
        if trace is not None and trace.last[0] > trace.first[0]:
            seconds += trace.last[1] - trace.first[1]
            steps += trace.last[0] - trace.first[0]
    sizes = [a.gpus if unit == "gpu" else a.cpus for a in cost.attempts]
    if steps <= 0 or not sizes:
        return None
    return seconds / steps * max(sizes)
