"""A sweep's successive-halving decisions (its `select:` block, launch/sweeps/selection.py): made once per
rung, by whichever process gets there first, written down with their inputs, and applied by
writing each pruned run's prune marker (its training job stops cooperatively and is never requeued).

    <output_root>/sweeps/<sweep>/
        sweep.json                    members (run id -> run directory), the select block; updated by each submit
        decisions/step_XXXXXXXX.json  one per rung: the metric value of every live run, ranks, kept, pruned,
                                      excluded runs and why, who decided and when
        exempt/<run id>.json          runs brought back with --unprune: later rungs leave them alone
        .lock                         serializes deciders (flock); the decision file's hard link makes it unique

Who decides: launch/advance.py, the one owner of state transitions (`decide_due` is its deciding
step), called by the evaluation job that writes a rung's record (launch/evaluations/job.py), every
status call (unless --no-advance), every poll of a followed local sweep, a backfill and the SLURM
watcher job. A rung is due once every live
run has its record at that step. Deciders may race (two evaluation jobs finishing together, a
status call beside them): each computes the decision from the same records, the first hard link of
the decision file wins and the others read it, and applying a decision is idempotent (a marker is
created once). Decided rungs are never revisited; rungs are decided in order.

A live run at a rung: a member not pruned at an earlier rung and not exempt. A member that failed
without reaching the rung's evaluation is excluded (with the reason) rather than waited for; one
whose evaluation failed is waited for (retry it with `python -m launch.evaluations backfill ROOT
--retry-failed`), so a broken evaluation never prunes a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomicio import atomic_write_json, create_json_exclusive
from core.schema import from_dict, read_record, to_dict
from eval.protocol import protocol_hash
from eval.records import RECORD_NAME
from launch.evaluations.claims import FAILED, SUBMITTED, valid_record
from launch.evaluations.expected import eval_config_for, eval_dir
from launch.rundir import PruneMarker, RunDirectory
from launch.sweeps.selection import Selection, rank_runs
from rsp.manifest import checkpoint_name

DECISION_FORMAT = "rsp-rung-decision/1"


@dataclass
class SweepRecord:
    """sweeps/<sweep>/sweep.json: the members and the select block of the last submit."""

    sweep: str
    select: dict[str, Any] | None  # launch.selection.Selection.to_dict(), None without a select block
    runs: dict[str, str]  # run id -> run directory name, every member ever submitted
    created: float
    updated: float


@dataclass
class RankedRun:
    run_id: str
    name: str  # its run directory's name
    value: float  # the metric at the rung
    rank: int  # 1: best; ties share a rank
    kept: bool
    record: str  # the result record the value came from


@dataclass
class ExcludedRun:
    run_id: str
    name: str
    why: str


@dataclass
class DecidedBy:
    role: str  # "status", "follow", "evaluation job 123", ...
    host: str
    pid: int


@dataclass
class Decision:
    """sweeps/<sweep>/decisions/step_XXXXXXXX.json: one rung's decision with its inputs."""

    format: str  # DECISION_FORMAT
    sweep: str
    rung: int
    select: dict[str, Any]  # the select block it was decided under (Selection.to_dict())
    time: float
    decided_by: DecidedBy
    live: int  # how many runs were ranked
    ranking: list[RankedRun]
    kept: list[str]  # run ids
    pruned: list[str]  # run ids
    excluded: list[ExcludedRun]

    @classmethod
    def read(cls, path: Path) -> Decision:
        decision = read_record(cls, path)
        decision.ranking = [from_dict(RankedRun, r, f"{path}: ranking.") for r in decision.ranking]
        decision.excluded = [from_dict(ExcludedRun, e, f"{path}: excluded.") for e in decision.excluded]
        return decision

    @property
    def selection(self) -> Selection:
        return Selection.from_dict(self.select)

    def summary(self) -> str:
        """ "kept a, b; pruned c" by run directory name."""
        names = {r.run_id: r.name for r in self.ranking}
        return f"kept {', '.join(names[i] for i in self.kept)}; pruned {', '.join(names[i] for i in self.pruned) or 'none'}"


class SweepDirectory:
    def __init__(self, output_root: str | Path, name: str):
        self.output_root, self.name = Path(output_root), name
        self.path = self.output_root / "sweeps" / name

    # --- the sweep's record ---------------------------------------------------------------------

    def record(self) -> SweepRecord | None:
        path = self.path / "sweep.json"
        return read_record(SweepRecord, path) if path.is_file() else None

    def selection(self) -> Selection | None:
        record = self.record()
        return Selection.from_dict(record.select) if record is not None and record.select else None

    def write_record(self, selection: Selection | None, runs: dict[str, str]) -> None:
        """Record the members (run id -> run directory name; added to those already recorded) and
        the select block the sweep was last submitted with."""
        with self.lock():
            old = self.record()
            record = SweepRecord(
                self.name,
                selection.to_dict() if selection else None,
                {**(old.runs if old else {}), **runs},
                old.created if old else time.time(),
                time.time(),
            )
            atomic_write_json(self.path / "sweep.json", to_dict(record))

    def members(self) -> dict[str, RunDirectory]:
        record = self.record()
        return {rid: RunDirectory(self.output_root / d) for rid, d in (record.runs if record else {}).items()}

    # --- decisions ------------------------------------------------------------------------------

    def decision_path(self, rung: int) -> Path:
        return self.path / "decisions" / f"step_{rung:08d}.json"

    def decisions(self) -> dict[int, Decision]:
        folder = self.path / "decisions"
        out = {}
        for path in sorted(folder.glob("step_*.json")) if folder.is_dir() else []:
            decision = Decision.read(path)
            out[decision.rung] = decision
        return out

    def exempt(self) -> set[str]:
        folder = self.path / "exempt"
        return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One decider (or unprune) at a time. flock is advisory and, on some network filesystems,
        per node: the decision file's exclusive creation is what keeps a decision unique."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def membership_changes(sweep: SweepDirectory, planned: dict[str, str], file: str) -> tuple[list[str], list[str]]:
    """(problems, notes) of a sweep file whose runs changed since it was last submitted: `planned`
    (run id -> run name) against the recorded members. A run added after a rung was decided cannot
    be ranked at that rung fairly (its value would arrive after the others were pruned): refused,
    with how to start a new sweep. A run removed from the file is reported; it stays a member (its
    decisions and markers stand) and is not resubmitted by this file."""
    decisions = sweep.decisions() if sweep.path.is_dir() else {}
    members = sweep.members()
    added = sorted(name for rid, name in planned.items() if rid not in members)
    removed = sorted(run.path.name for rid, run in members.items() if rid not in planned)
    problems, notes = [], []
    if added and decisions:
        steps = ", ".join(map(str, sorted(decisions)))
        problems.append(
            f"runs added to sweep {sweep.name} after it decided step(s) {steps} ({sweep.path / 'decisions'}): "
            f"{', '.join(added)} cannot be ranked at rungs already decided; remove them from {file}, or copy the "
            f"file to a new name (e.g. {sweep.name}_2.yaml) to start a sweep of its own"
        )
    if removed:
        unrelated = not set(planned) & set(members)  # likely another file of the same name, not an edit
        notes.append(
            f"{len(removed)} run(s) of sweep {sweep.name} are no longer in {file}: {', '.join(removed)}; they stay "
            "members (their decisions and prune markers stand) and this file does not resubmit them"
            + (
                f"; none of its runs is in {sweep.path}: if this is another sweep that shares the name, give its file "
                "another name (a sweep is named by its file) or use another output_root"
            )
            * unrelated
        )
    return problems, notes


def sweep_directories(output_root: str | Path) -> list[SweepDirectory]:
    root = Path(output_root)
    return [SweepDirectory(root, p.parent.name) for p in sorted(root.glob("sweeps/*/sweep.json"))]


# --- one rung ------------------------------------------------------------------------------------


@dataclass
class RungView:
    """What a rung waits for, or how it was decided."""

    rung: int
    decision: Decision | None = None
    values: dict[str, float] = field(default_factory=dict)  # run id -> metric, of the live runs with a record
    records: dict[str, str] = field(default_factory=dict)  # run id -> record path
    waiting: dict[str, str] = field(default_factory=dict)  # run id -> why it has no value yet
    coming: set[str] = field(default_factory=set)  # of those: its evaluation at the rung is submitted
    training: set[str] = field(default_factory=set)  # of those: it has not reached the rung's evaluation
    excluded: dict[str, str] = field(default_factory=dict)  # run id -> why it is not ranked

    @property
    def due(self) -> bool:
        return self.decision is None and not self.waiting and bool(self.values)


def record_dir(run: RunDirectory, rung: int, task: str) -> Path:
    cfg = run.config()
    return eval_dir(
        run, rung, task, protocol_hash(eval_config_for(cfg, task, run.path / "checkpoints" / checkpoint_name(rung), Path(".")))
    )


def look_at_rung(sweep: SweepDirectory, selection: Selection, rung: int, out_before: set[str]) -> RungView:
    """The live runs of `rung` (members not in `out_before`, the runs pruned at earlier rungs or
    exempt) and their values, or why a value is missing."""
    view = RungView(rung)
    for rid, run in sweep.members().items():
        if rid in out_before:
            continue
        if not run.exists:
            view.waiting[rid] = "not submitted yet"
            continue
        directory = record_dir(run, rung, selection.task)
        record = directory / RECORD_NAME
        if record.is_file():
            try:
                manifest = next((m for m in run.manifests() if m.step == rung), None)
                metrics = valid_record(directory, rid, manifest).metrics
            except ValueError as exc:  # never ranked, never a traceback: named, and backfill evaluates it again
                view.waiting[rid] = (
                    f"its step-{rung} {selection.task} record is invalid ({exc}); "
                    f"python -m launch.evaluations backfill {sweep.output_root} moves it aside and evaluates again"
                )
                continue
            if selection.task_metric in metrics:
                view.values[rid], view.records[rid] = float(metrics[selection.task_metric]), str(record)
                continue
            view.excluded[rid] = f"its step-{rung} {selection.task} record has no {selection.task_metric}"
            continue
        status = run.status()
        if status is not None and status.state == "failed":
            view.excluded[rid] = f"failed before its step-{rung} evaluation: {status.reason}"
        elif (directory / FAILED).is_file():
            view.waiting[rid] = (
                f"its step-{rung} {selection.task} evaluation failed ({directory / FAILED}); retry it with "
                f"python -m launch.evaluations backfill {sweep.output_root} --retry-failed"
            )
        elif (directory / SUBMITTED).is_file():
            view.waiting[rid] = f"its step-{rung} {selection.task} evaluation is running"
            view.coming.add(rid)
        else:
            step = max(run.latest_logged_step(), run.last_checkpoint_step() or 0)
            view.waiting[rid] = f"training (step {step} of rung {rung})"
            view.training.add(rid)
    return view


def rung_views(sweep: SweepDirectory, selection: Selection | None = None) -> list[RungView]:
    """Every rung in order: decided ones with their decision, then the first undecided one with
    what it waits for (later rungs cannot be looked at before it is decided)."""
    selection = selection or sweep.selection()
    if selection is None:
        return []
    decisions, exempt = sweep.decisions(), sweep.exempt()
    out_before = set(exempt)
    views = []
    for rung in selection.rungs:
        if rung in decisions:
            views.append(RungView(rung, decisions[rung]))
            out_before |= set(decisions[rung].pruned)
            continue
        views.append(look_at_rung(sweep, selection, rung, out_before))
        break
    return views


def pause_reason(run: RunDirectory, step: int, running: Callable[[RunDirectory], bool]) -> str | None:
    """Why `run`, having completed `step`, should wait before its next step: `step` is the pending
    rung of one of its sweeps, the run is live there, and the rung can be decided without more
    training, because every live run still missing its value (this one included) is either evaluating
    that step or training toward it right now (`running`). None: go on. A run waits only for a
    decision that is coming: not for a member not started yet (queued behind
    cluster.array_parallelism, which may need this run's slot) nor for a failed evaluation (retried
    by hand)."""
    run_id = run.info().run_id
    for name in run.sweep_names():
        sweep = SweepDirectory(run.path.parent, name)
        selection = sweep.selection()
        if selection is None or step not in selection.rungs or selection.promotion == "async":
            continue
        view = rung_views(sweep, selection)[-1]
        if view.rung != step or view.decision is not None or run_id not in {*view.waiting, *view.values}:
            continue  # decided, an earlier rung pending (this run went past it), or not live here
        members = sweep.members()
        if all(rid in view.coming or rid in view.training and (rid == run_id or running(members[rid])) for rid in view.waiting):
            return f"rung {step} of sweep {name} ({len(view.values)} of {len(view.values) + len(view.waiting)} values in)"
    return None


def decide_due(sweep: SweepDirectory, role: str) -> list[Decision]:
    """Decide every rung that is due, in order, and (re)apply every decision; returns the decisions
    this call created. `role`: who decides, for the record ("status", "evaluation job 123", ...).
    An asynchronous sweep's rungs close by its own rule (launch/sweeps/async_rungs.py), not here."""
    selection = sweep.selection()
    if selection is None or selection.promotion == "async":
        return []
    made = []
    with sweep.lock():
        while True:
            views = rung_views(sweep, selection)
            for view in views:
                if view.decision is not None:
                    apply(sweep, view.decision)
            last = views[-1] if views else None
            if last is None or not last.due:
                return made
            decision = build_decision(sweep, selection, last, role)
            if create_json_exclusive(sweep.decision_path(last.rung), to_dict(decision)):
                made.append(decision)
            # else another decider linked it first: the loop reads and applies theirs


def build_decision(sweep: SweepDirectory, selection: Selection, view: RungView, role: str) -> Decision:
    ranked = rank_runs(view.values, selection.mode, selection.keep)
    members = sweep.members()
    return Decision(
        format=DECISION_FORMAT,
        sweep=sweep.name,
        rung=view.rung,
        select=selection.to_dict(),
        time=time.time(),
        decided_by=DecidedBy(role, socket.gethostname(), os.getpid()),
        live=len(ranked),
        ranking=[
            RankedRun(r.run_id, members[r.run_id].path.name, r.value, r.rank, r.kept, view.records[r.run_id]) for r in ranked
        ],
        kept=[r.run_id for r in ranked if r.kept],
        pruned=[r.run_id for r in ranked if not r.kept],
        excluded=[ExcludedRun(rid, members[rid].path.name, why) for rid, why in sorted(view.excluded.items())],
    )


def apply(sweep: SweepDirectory, decision: Decision) -> list[str]:
    """Write the prune marker of every run the decision pruned (idempotent), except runs since
    exempted by --unprune and runs that already finished. Returns the runs newly marked."""
    members, exempt = sweep.members(), sweep.exempt()
    by_id = {r.run_id: r for r in decision.ranking}
    marked = []
    for rid in decision.pruned:
        run = members.get(rid)
        if run is None or rid in exempt or run.prune_marker() is not None:
            continue
        if run.final_state() in ("finished", "failed"):
            continue  # it ended before the decision: nothing to stop
        entry = by_id[rid]
        selection = decision.selection
        marker = PruneMarker(
            sweep.name, decision.rung, entry.rank, decision.live, selection.metric, selection.mode, entry.value,
            str(sweep.decision_path(decision.rung)), time.time(),
        )  # fmt: skip
        if run.mark_pruned(marker):
            marked.append(rid)
    return marked


def unprune(sweep: SweepDirectory, run: RunDirectory) -> PruneMarker:
    """Bring a pruned run back: exempt it from later rungs, then remove its marker (the order keeps
    a concurrent decider from marking it again). Raises ValueError when it is not pruned."""
    with sweep.lock():
        marker = run.prune_marker()
        if marker is None:
            raise ValueError(f"{run.path.name} is not pruned (no {run.path / 'pruned.json'})")
        rid = run.info().run_id
        atomic_write_json(sweep.path / "exempt" / f"{rid}.json", {"run_id": rid, "time": time.time(), "marker": to_dict(marker)})
        run.unprune()
    return marker
