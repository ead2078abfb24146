"""The one owner of run and sweep state transitions: deciding due rungs (launch/sweeps/rungs.py),
recovering lost evaluations (launch/evaluations/recovery.py) and scheduling missing ones
(launch/evaluations/schedule.py). Nothing else starts these transitions.

Who calls `advance`, and for what:

    the milestone hook      the training job (rank 0), when a milestone is durable and at the start
                            of every attempt: recover and schedule that run's evaluations
    the evaluation job      after writing a record: decide the rungs of the run's sweeps
    the watcher job         on SLURM, after a run's evaluation jobs (--dependency=afterany): recover,
                            decide, and chain itself after whatever is still pending (`watch`)
    follow                  every poll of a followed sweep: decide and recover
    backfill                decide, recover, move invalid records aside, schedule what is missing
    status                  decide and recover, unless --no-advance (then status writes nothing)

Each call returns a Report of what it did; `Report.lines()` says it in words. Deciders and
schedulers may race: every transition is claimed exclusively on disk (a decision's hard link, an
evaluation's submitted.json, a lost job's recovering-<job> marker), so running advance twice at
once does each thing once.

    python -m launch.advance OUTPUT_ROOT [--sweep NAME] [--run RUN_DIR ...] [--no-recover] [--role ROLE] [--watcher]

No lost evaluation waits for a human: whenever an advance submits evaluation jobs on SLURM (a
milestone's, or a lost one's again), it also submits a small watcher job per run with
`--dependency=afterany:<those jobs>`, which runs `python -m launch.advance ROOT --run RUN --watcher`
once they ended however they ended (a record, a failure, scancel, the time limit, a node failure).
The watcher advances the run (a lost evaluation is resubmitted, with a watcher of its own) and, while
any of the run's evaluation jobs is still pending or running (requeued, or the scheduler still
ending it), chains one more watcher after them. It also covers a run whose training ended before
its evaluations did: nothing in it depends on the training job.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from submitit.helpers import CommandFunction

from core.commandline import HintingArgumentParser
from launch.backends import Resources, backend_class, make_backend
from launch.evaluations.recovery import Resubmission, evaluation_states, recover
from launch.rundir import RunDirectory
from launch.snapshot import Snapshot
from launch.sweeps.async_rungs import decide_async
from launch.sweeps.pruned_jobs import end_pruned_without_jobs
from launch.sweeps.rungs import SweepDirectory, decide_due, sweep_directories
from rsp.lifecycle import blocked_stop_signals

log = logging.getLogger(__name__)


@dataclass
class Missing:
    """Schedule the evaluations that were never submitted: of `steps` (None: every milestone due), on
    `backend` (None: each run's own), also failed ones with `retry_failed`, and every checkpoint (not
    only milestones) with `all_checkpoints`."""

    backend: str | None = None
    steps: list[int] | None = None
    retry_failed: bool = False
    all_checkpoints: bool = False


@dataclass
class Report:
    """What one `advance` call did."""

    decided: list[str] = field(default_factory=list)  # "sweep s step 20 (status): kept a, b; pruned c"
    promotions: list[str] = field(default_factory=list)  # "sweep s: promoted a at step 20", resumed, cancelled, ...
    resubmitted: list[Resubmission] = field(default_factory=list)  # lost evaluations submitted again
    given_up: list[str] = field(default_factory=list)  # lost evaluations over their budget: failed.json
    set_aside: list[str] = field(default_factory=list)  # invalid records moved aside for a new evaluation
    submitted: dict[str, list[str]] = field(default_factory=dict)  # run directory name -> new evaluation job ids
    watchers: dict[str, str] = field(default_factory=dict)  # run directory name -> its new watcher job (SLURM)
    errors: list[str] = field(default_factory=list)  # what could not be advanced (the next call tries again)

    @property
    def changed(self) -> bool:
        return bool(
            self.decided or self.promotions or self.resubmitted or self.given_up or self.set_aside or any(self.submitted.values())
        )

    def jobs_of(self, name: str) -> tuple[list[str], list[str]]:
        """The evaluation jobs this call submitted for run directory `name`: (new ones, resubmissions of lost ones)."""
        return list(self.submitted.get(name, [])), [r.job for r in self.resubmitted if r.run == name]

    def submission_summary(self) -> list[str]:
        """One line per run that got evaluation jobs, and the total: new and resubmitted ones alike."""
        names = sorted({*self.submitted, *(r.run for r in self.resubmitted)})
        lines, new_total, again_total = [], 0, 0
        for name in names:
            new, again = self.jobs_of(name)
            new_total, again_total = new_total + len(new), again_total + len(again)
            if new or again:
                lines.append(
                    f"{name}: {len(new) + len(again)} evaluation job(s) submitted ({len(new)} new, {len(again)} "
                    f"resubmitted after a lost job) {' '.join(new + again)}"
                )
        total = new_total + again_total
        lines.append(
            f"{total} evaluation job(s) submitted: {new_total} new, {again_total} resubmitted after a lost job"
            if total
            else "no evaluation job submitted"
        )
        return lines

    def lines(self) -> list[str]:
        return [
            *(f"decided {d}" for d in self.decided),
            *self.promotions,
            *(f"resubmitted lost evaluation: {d}" for d in self.resubmitted),
            *(f"gave up on lost evaluation (failed.json): {d}" for d in self.given_up),
            *(f"moved an invalid record aside, to be evaluated again: {d}" for d in self.set_aside),
            *(f"watcher job {job} of {name} follows its evaluation jobs" for name, job in self.watchers.items()),
            *(f"advance: {e}" for e in self.errors),
        ]


def runs_under(root: Path, sweep: str | None = None) -> list[RunDirectory]:
    """Every run directory under `root` (of `sweep` when given) whose records read, by name; the
    others are named by `damaged_runs` and left as they are."""
    runs = [RunDirectory(p.parent) for p in sorted(Path(root).glob("*/run.json"))]
    return [r for r in runs if r.damage() is None and (sweep is None or r.in_sweep(sweep))]


def damaged_runs(root: Path) -> dict[str, str]:
    """Run directory name -> why its records cannot be read, for every such run under `root`."""
    runs = [RunDirectory(p.parent) for p in sorted(Path(root).glob("*/run.json"))]
    damaged = {r.path.name: problem for r in runs if (problem := r.damage()) is not None}
    for records in sorted({*Path(root).glob("*/attempts"), *Path(root).glob("*/checkpoints")}):
        # a job wrote these, so run.json was there once: deleted or lost since, not a run being created
        if not (info := records.parent / "run.json").exists():
            damaged[records.parent.name] = f"{info} is missing (the run's {records.name}/ is there)"
    return damaged


def advance(
    root: str | Path,
    sweep: str | None = None,
    *,
    role: str,
    runs: Sequence[RunDirectory] | None = None,
    decide: bool = True,
    recover_lost: bool = True,
    missing: Missing | None = None,
) -> Report:
    """Advance the runs under `root` (only `sweep`'s, or only `runs`): decide the due rungs of their
    sweeps (`decide`), resubmit their lost evaluations (`recover_lost`), then schedule the missing
    ones (`missing`). `role` names the caller in the decisions it writes."""
    root = Path(root)
    runs = list(runs) if runs is not None else runs_under(root, sweep)
    report = Report()
    if decide:
        _decide(root, sweep, runs, role, report)
    if recover_lost:
        _recover(runs, report)
    if missing is not None:
        _schedule(runs, missing, report)
    watch(runs, report)
    return report


WATCHER_MINUTES = 10  # its time limit: one advance of one run takes seconds


def watch(runs: Sequence[RunDirectory], report: Report, after: dict[str, list[str]] | None = None) -> None:
    """Submit one watcher job per run after the evaluation jobs this advance submitted for it, on a
    backend that can hold a job until others end (SLURM's --dependency; holds_for_dependencies)
    (`after`: run directory name -> more job ids to wait for). Never fails the caller: the next
    status or backfill still recovers what a missing watcher would have."""
    after = dict(after or {})
    for run in runs:
        new, again = report.jobs_of(run.path.name)
        ids = [*new, *again, *after.get(run.path.name, [])]
        last = run.last_submission() if run.exists and ids else None
        if not ids or last is None or not backend_class(last.backend).holds_for_dependencies:
            continue
        try:
            report.watchers[run.path.name] = submit_watcher(run, sorted(set(ids)))
        except Exception as exc:  # no watcher: status, follow and backfill still recover
            log.exception("could not submit the watcher of %s", run.path.name)
            report.errors.append(f"could not submit the watcher job of {run.path.name}: {exc}")


def submit_watcher(run: RunDirectory, job_ids: Sequence[str]) -> str:
    """sbatch `python -m launch.advance ROOT --run RUN --watcher` after `job_ids` (afterany), from the
    run's code snapshot; returns its job id."""
    cluster = run.config().cluster
    last = run.last_submission()
    snapshot = Snapshot(Path(last.snapshot), last.code_version) if last and last.snapshot else None
    backend = make_backend("slurm", run.path / "evals" / ".jobs" / "watchers", snapshot)
    command = [sys.executable, "-m", "launch.advance", str(run.path.parent), "--run", str(run.path), "--watcher"]
    resources = Resources(
        cpus_per_task=1,
        time_minutes=WATCHER_MINUTES,
        partition=cluster.partition,
        account=cluster.account,
        qos=cluster.qos,
        dependency="afterany:" + ":".join(job_ids),
        job_name=f"watch-{run.path.name}",
        teardown=None,
    )
    (job_id,) = backend.submit([CommandFunction(command)], resources)
    log.info("watcher job %s of %s waits for %s", job_id, run.path.name, ", ".join(job_ids))
    return job_id


def still_open(run: RunDirectory) -> list[str]:
    """The run's evaluation jobs that the scheduler still holds (pending, running, ending)."""
    return sorted({e.job_id for e in evaluation_states([run]) if e.job_id and e.state in ("pending", "running")})


def _sweeps_of(root: Path, sweep: str | None, runs: Sequence[RunDirectory]) -> list[SweepDirectory]:
    if sweep is not None:
        return [SweepDirectory(root, sweep)]
    names = {name for run in runs for name in run.sweep_names()}
    return [d for d in sweep_directories(root) if d.name in names]


def _decide(root: Path, sweep: str | None, runs: Sequence[RunDirectory], role: str, report: Report) -> None:
    for directory in _sweeps_of(root, sweep, runs):
        try:
            for d in decide_due(directory, role):
                report.decided.append(f"sweep {directory.name} step {d.rung} ({role}): {d.summary()}")
            done = decide_async(directory, role)
            report.decided += [f"sweep {directory.name} {line} ({role}, async close)" for line in done.closed]
            report.promotions += [
                *(f"sweep {directory.name}: promoted {line}" for line in done.promoted),
                *(f"sweep {directory.name}: paused {line}" for line in done.paused),
                *(f"sweep {directory.name}: resumed {line}" for line in done.resumed),
                *(f"sweep {directory.name}: {line}" for line in done.slots),
            ]
            for line in end_pruned_without_jobs(directory):
                report.promotions.append(f"sweep {directory.name}: cancelled the queued job of pruned run {line}")
        except Exception as exc:  # one sweep's trouble must not stop the others; the next call tries again
            log.exception("could not decide the rungs of sweep %s", directory.name)
            report.errors.append(f"could not decide the rungs of sweep {directory.name}: {exc}")


def _recover(runs: Sequence[RunDirectory], report: Report) -> None:
    states = evaluation_states([r for r in runs if r.exists])
    if any(e.state == "lost" for e in states):
        resubmitted, given_up = recover(states)
        report.resubmitted += resubmitted
        report.given_up += given_up


def _schedule(runs: Sequence[RunDirectory], missing: Missing, report: Report) -> None:
    # submitting imports the evaluation job, hence torch: only the callers that schedule pay for it
    from launch.evaluations.schedule import schedule

    for run in runs:
        if not run.exists:
            continue
        backend = missing.backend or run.backend()
        ids, set_aside = schedule(run, missing.steps, backend, missing.retry_failed, missing.all_checkpoints)
        report.submitted[run.path.name] = ids
        report.set_aside += set_aside


def schedule_for_checkpoint(run: RunDirectory, step: int | None, backend: str) -> None:
    """The milestone hook: called by the training job (rank 0) when milestone `step` is durable, and
    with step=None at the start of every attempt (milestones a killed attempt committed but could
    not schedule). Submission runs in a subprocess (`python -m launch.evaluations schedule`, which
    advances this run) with the job's own SLURM_* variables removed, so they cannot leak into the
    evaluation jobs; the debug backend advances in-process."""
    if backend_class(backend).in_process:
        steps = None if step is None else [step]
        missing = Missing(backend, steps)
        advance(run.path.parent, role="training job", runs=[run], decide=False, recover_lost=False, missing=missing)
        return
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_", "RSP_SIGNAL")) or k == "SLURM_CONF"
    }
    steps = [] if step is None else ["--step", str(step)]
    cmd = [sys.executable, "-m", "launch.evaluations", "schedule", str(run.path), *steps, "--backend", backend]
    # Output to a file, not a pipe: the local backend's evaluation job inherits the scheduler's
    # streams, and reading a pipe to its end would wait for the whole evaluation (and the next
    # checkpoint of the training job would wait for this hook).
    with tempfile.TemporaryFile("w+") as output:
        with blocked_stop_signals():  # the job's stop signals reach every process of it: not this short one
            proc = subprocess.run(cmd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True, timeout=300)
        if proc.returncode != 0:
            output.seek(0)
            raise RuntimeError(f"scheduling evaluations of step {step} failed: {output.read()[-2000:]}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    p = HintingArgumentParser(
        prog="python -m launch.advance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("output_root")
    p.add_argument("--sweep", default=None, help="only this sweep's runs")
    p.add_argument("--run", action="append", default=None, help="only this run directory (repeatable)")
    p.add_argument("--no-decide", action="store_true", help="do not decide rungs")
    p.add_argument("--no-recover", action="store_true", help="do not resubmit lost evaluations")
    p.add_argument("--role", default="advance", help="who decides, for the decision records")
    p.add_argument("--watcher", action="store_true", help="run as a SLURM watcher job: chain another while jobs are open")
    ns = p.parse_args(argv)
    runs = [RunDirectory(r) for r in ns.run] if ns.run else None
    role = ns.role
    if ns.watcher:
        role = f"watcher job {os.environ.get('SLURM_JOB_ID', os.getpid())}"
        for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_")) and k != "SLURM_CONF"]:
            del os.environ[key]  # the jobs it submits must not inherit this job's identity
    report = advance(ns.output_root, ns.sweep, role=role, runs=runs, decide=not ns.no_decide, recover_lost=not ns.no_recover)
    if ns.watcher:
        covered = set(report.watchers)
        watch([r for r in runs or runs_under(Path(ns.output_root)) if r.path.name not in covered], report, after_open(runs))
    for line in report.lines():
        print(line)
    return 1 if report.errors else 0


def after_open(runs: Sequence[RunDirectory] | None) -> dict[str, list[str]]:
    """Run directory name -> its evaluation jobs still open: what a watcher chains the next one after."""
    return {run.path.name: ids for run in runs or [] if (ids := still_open(run))}


if __name__ == "__main__":
    raise SystemExit(main())
