"""The runtime of asynchronous promotion (`select: {promotion: async}`): the pure rule of
launch/sweeps/promotion.py acted on with files and jobs. launch/advance.py calls `decide_async`;
the training job asks `promoted_at` before each rung.

    <output_root>/sweeps/<sweep>/promotion/
        log.json              the sweep's inputs in arrival order (["report", run, step, value] |
                              ["exclude", run]): Promotion.from_log rebuilds the whole state from it
        records/NNNNNN.json   one per outcome: what an input changed at a rung, with every input of
                              that rung so far (promotion.replay recomputes the outcome from it)
        resumed/NNNNNN.json   each promoted paused run resubmitted: run, rung, job id, time

How a run goes through a rung:
- it trains to the rung's step (a milestone), unless already promoted there stops cooperatively
  with that step's checkpoint and ends as `paused` (launch/job.py): its process ends and its SLURM
  array task ends, so the slot goes to the next run; its evaluation at the rung is scheduled as for
  any milestone;
- each record that arrives is an input (ordered by its `created` time); a failed or --unprune'd
  run is excluded (no longer waited for);
- a paused run the rule promotes is resubmitted (`launch.resume`) and resumes from the rung's
  checkpoint, bitwise like a run never stopped;
- a rung's close is written as an ordinary decision (decisions/step_XXXXXXXX.json, the synchronous
  ranking of the same values) and applied as one: prune markers (launch/advance.py then ends the
  pruned runs that have no job to obey theirs: launch/sweeps/pruned_jobs.py).

Deciders serialize on the sweep's lock (SweepDirectory.lock); the log is rewritten under it, so
every input is fed once and a paused run is resubmitted once (its `paused` status is cleared first).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.atomicio import atomic_write_json, create_json_exclusive
from core.schema import to_dict
from launch.evaluations.claims import valid_record
from launch.rundir import RunDirectory
from launch.sweeps.promotion import Change, Promotion
from launch.sweeps.pruned_jobs import PAUSED
from launch.sweeps.rungs import DECISION_FORMAT, DecidedBy, Decision, RankedRun, SweepDirectory, apply, record_dir
from launch.sweeps.selection import Selection, rank_runs

log = logging.getLogger(__name__)


@dataclass
class AsyncReport:
    """What one decide_async call did, in words."""

    promoted: list[str] = field(default_factory=list)  # "lr0.01 at step 20"
    paused: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # "step 20: kept a, b; pruned c"
    resumed: list[str] = field(default_factory=list)  # "lr0.01 from step 20 as job 123"


def promotion_dir(sweep: SweepDirectory) -> Path:
    return sweep.path / "promotion"


def load_promotion(sweep: SweepDirectory, selection: Selection) -> Promotion:
    """The sweep's promotion state, rebuilt from its log (empty before the first input)."""
    path = promotion_dir(sweep) / "log.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    return Promotion.from_log(selection, sorted(sweep.members()), entries)


def promoted_at(run: RunDirectory) -> dict[int, bool]:
    """For each rung of the run's asynchronous sweeps: whether the run is promoted there already
    (a run resumed from an earlier checkpoint trains through such a rung). Exempt runs (--unprune)
    are promoted everywhere."""
    out: dict[int, bool] = {}
    rid = run.info().run_id
    for name in run.sweep_names():
        sweep = SweepDirectory(run.path.parent, name)
        selection = sweep.selection()
        if selection is None or selection.promotion != "async":
            continue
        promotion = load_promotion(sweep, selection)
        exempt = rid in sweep.exempt()
        for rung in promotion.rungs:
            out[rung.step] = out.get(rung.step, True) and (exempt or rid in rung.promoted)
    return out


def rung_value(run: RunDirectory, rid: str, step: int, selection: Selection) -> tuple[float, float] | None:
    """(value, record created time) of a valid record of the run at the rung, None without one. A
    record without the metric counts as NaN (ranked last), as the synchronous rule excludes it."""
    directory = record_dir(run, step, selection.task)
    if not (directory / "record.json").is_file():
        return None
    try:
        manifest = next((m for m in run.manifests() if m.step == step), None)
        record = valid_record(directory, rid, manifest)
    except ValueError:  # invalid: backfill moves it aside and evaluates again; never ranked meanwhile
        return None
    return float(record.metrics.get(selection.task_metric, float("nan"))), record.created


def new_inputs(sweep: SweepDirectory, selection: Selection, promotion: Promotion) -> list[list]:
    """The inputs not yet fed: exclusions (failed or exempt runs), then every new rung value in the
    order its record was created."""
    members, exempt = sweep.members(), sweep.exempt()
    excludes = [
        ["exclude", rid]
        for rid, run in sorted(members.items())
        if rid not in promotion.excluded and (rid in exempt or run.exists and run.final_state() == "failed")
    ]
    gone = {e[1] for e in excludes} | promotion.excluded
    reports = []
    for index, step in enumerate(selection.rungs):
        for rid, run in sorted(members.items()):
            if rid in gone or not run.exists or not promotion.may_report(rid, index):
                continue
            found = rung_value(run, rid, step, selection)
            if found is not None:
                reports.append((found[1], rid, step, found[0]))
    return excludes + [["report", rid, step, value] for _, rid, step, value in sorted(reports)]


def feed(promotion: Promotion, inputs: Sequence[list]) -> list[Change]:
    changes = []
    for entry in inputs:
        if entry[0] == "exclude":
            changes += promotion.exclude(entry[1])
        elif promotion.may_report(entry[1], promotion.rung_index(entry[2])):  # an earlier input may have demoted it
            changes += promotion.report(entry[1], entry[2], entry[3])
    return changes


def decide_async(sweep: SweepDirectory, role: str) -> AsyncReport:
    """Feed every new input to the sweep's promotion rule, write down each outcome, write and apply
    the decision of every rung that closed, and resubmit the paused runs that are promoted."""
    selection = sweep.selection()
    report = AsyncReport()
    if selection is None or selection.promotion != "async":
        return report
    with sweep.lock():
        promotion = load_promotion(sweep, selection)
        promotion.keep_records = True
        changes: list[Change] = []
        while inputs := new_inputs(sweep, selection, promotion):
            changes += feed(promotion, inputs)
        if changes:
            write_changes(sweep, promotion, changes)
        names = {rid: run.path.name for rid, run in sweep.members().items()}
        for change in changes:
            report.promoted += [f"{names[r]} at step {change.rung}" for r in change.outcome.promoted]
            report.paused += [f"{names[r]} at step {change.rung}" for r in change.outcome.paused]
        for rung in promotion.rungs:
            if rung.closed:
                decision = close_decision(sweep, selection, rung.step, rung.values, role)
                if create_json_exclusive(sweep.decision_path(rung.step), to_dict(decision)):
                    report.closed.append(f"step {rung.step}: {decision.summary()}")
                apply(sweep, Decision.read(sweep.decision_path(rung.step)))
        report.resumed += resume_promoted(sweep, promotion)
    return report


def write_changes(sweep: SweepDirectory, promotion: Promotion, changes: Sequence[Change]) -> None:
    folder = promotion_dir(sweep) / "records"
    number = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
    for offset, change in enumerate(changes):
        atomic_write_json(folder / f"{number + offset:06d}.json", change.record)
    atomic_write_json(promotion_dir(sweep) / "log.json", promotion.log)


def close_decision(sweep: SweepDirectory, selection: Selection, step: int, values: dict[str, float], role: str) -> Decision:
    """A closed rung as an ordinary decision: the synchronous ranking of the same values."""
    members = sweep.members()
    ranked = rank_runs(values, selection.mode, selection.keep)
    return Decision(
        format=DECISION_FORMAT,
        sweep=sweep.name,
        rung=step,
        select=selection.to_dict(),
        time=time.time(),
        decided_by=DecidedBy(f"{role} (async close)", os.uname().nodename, os.getpid()),
        live=len(ranked),
        ranking=[
            RankedRun(
                r.run_id,
                members[r.run_id].path.name,
                r.value,
                r.rank,
                r.kept,
                str(record_dir(members[r.run_id], step, selection.task) / "record.json"),
            )
            for r in ranked
        ],  # fmt: skip
        kept=[r.run_id for r in ranked if r.kept],
        pruned=[r.run_id for r in ranked if not r.kept],
        excluded=[],
    )


def resume_promoted(sweep: SweepDirectory, promotion: Promotion) -> list[str]:
    """Resubmit every paused run that is now promoted (its status is cleared by the resubmission)."""
    out = []
    for rid, run in sorted(sweep.members().items()):
        status = run.status() if run.exists else None
        if status is None or status.state != PAUSED or run.is_pruned():
            continue
        state, rung = promotion.state(rid)
        if state != "training" or rung is None:
            continue
        job_id = resubmit(run)
        folder = promotion_dir(sweep) / "resumed"
        number = len(list(folder.glob("*.json"))) if folder.is_dir() else 0
        atomic_write_json(folder / f"{number:06d}.json", {"run_id": rid, "rung": rung, "job_id": job_id, "time": time.time()})
        out.append(f"{run.path.name} from step {run.last_checkpoint_step()} as job {job_id}")
    return out


def resubmit(run: RunDirectory) -> str:
    """`python -m launch.resume RUN`, with this process's own SLURM_* identity removed (an evaluation
    or training job deciding must not hand it to the new job); returns the new job id. A subprocess:
    submitting imports the training job (and torch), which only this step needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_")) or k == "SLURM_CONF"}
    code = Path(__file__).resolve().parents[2]  # the checkout (or a job's code snapshot) this module runs from
    # Output to a file, not a pipe: a local job inherits the streams, and reading a pipe to its end
    # would wait for the whole resumed run.
    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.run(
            [sys.executable, "-m", "launch.resume", str(run.path)], cwd=code, env=env, stdout=output,
            stderr=subprocess.STDOUT, text=True, timeout=300,
        )  # fmt: skip
        output.seek(0)
        text = output.read()
    if proc.returncode != 0:
        raise RuntimeError(f"resubmitting promoted run {run.path.name} failed: {text[-2000:]}")
    return text.rsplit(" as job ", 1)[1].split()[0]
