"""The plan of a sweep: for each run its id, name, overrides, resources, current state and the
action submitting would take, and every problem that keeps it from being submitted; then the
submission itself (only `submit`/`retry` rows, through launch/dispatch.py).

States come from the run directories plus one batched scheduler query (launch/runstate.py): pending,
running and finished runs are never submitted twice; failed runs only with --retry-failed; runs a
sweep's successive halving pruned only after `--unprune` (launch/sweeps/rungs.py); paused runs
(asynchronous promotion) only by the sweep itself, when promoted (launch/sweeps/async_rungs.py).

Problems (a data root that is not set, a batch the data cannot fill, a select block the runs
cannot honour, resources SLURM would refuse, ...) are found for all runs at once by the one
validation (launch.validation) and listed under the plan: a dry run shows them and succeeds; a
submission refuses them (exit 2) with nothing written or queued.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launch.backends import Resources
from launch.config import absolutize
from launch.dispatch import claimed, ensure_generated_data, resources_for, still_as_decided, submit_runs
from launch.rundir import RunDirectory, run_id
from launch.runstate import SUBMITTABLE, RunState, reconcile
from launch.sweeps.expand import Sweep, SweepRun, expand
from launch.sweeps.rungs import SweepDirectory
from launch.validation import Findings, SweepContext, validate


@dataclass
class PlanRow:
    run: SweepRun
    rundir: RunDirectory
    state: RunState
    action: str  # submit | retry | nothing
    resources: Resources


@dataclass
class Plan:
    sweep: Sweep
    rows: list[PlanRow]
    backend: str
    output_root: Path
    findings: Findings = field(default_factory=Findings)  # each problem ends with the runs it concerns

    @property
    def problems(self) -> list[str]:
        return self.findings.problems

    def pending_rows(self) -> list[PlanRow]:
        return [r for r in self.rows if r.action in ("submit", "retry")]

    def record_membership(self, rows: Sequence[PlanRow]) -> None:
        for row in rows:
            row.rundir.record_sweep(self.sweep.name, row.run.axis_values)
        members = {run_id(r.run.cfg): r.rundir.path.name for r in rows}
        SweepDirectory(self.output_root, self.sweep.name).write_record(self.sweep.selection, members)

    def submit(self) -> int:
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            print(
                f"error: {len(self.problems)} problem(s) in sweep {self.sweep.name}; nothing was submitted:\n{lines}",
                file=sys.stderr,
            )
            return 2
        rows = self.pending_rows()
        if not rows:
            print(
                f"nothing to submit: all {len(self.rows)} runs of sweep {self.sweep.name} "
                "are pending, running, finished, failed, paused or pruned"
            )
            self.record_membership([r for r in self.rows if r.rundir.exists])
            return 0
        for cfg in {(r.run.cfg.data.root, r.run.cfg.evaluation.synthetic): r.run.cfg for r in rows}.values():
            ensure_generated_data(cfg)
        with claimed([r.run.cfg for r in rows]):  # another submit may have decided the same meanwhile
            taken = still_as_decided([r.state for r in rows], self.output_root)
            if any(taken):
                names = ", ".join(r.run.name for r, now in zip(rows, taken, strict=True) if now)
                print(f"left alone: {sum(map(bool, taken))} run(s) another submit took meanwhile ({names})")
            rows = [r for r, now in zip(rows, taken, strict=True) if now is None]
            # Membership first: an evaluation that completes a rung looks the sweep up (launch/sweeps/rungs.py).
            for row in rows:
                row.rundir.create(row.run.cfg)
            self.record_membership([r for r in self.rows if r.rundir.exists])
            if not rows:
                return 0
            job_ids = submit_runs(
                [r.run.cfg for r in rows], [r.rundir for r in rows], [r.resources for r in rows], self.backend, self.output_root
            )
        arrays = len({j.split("_")[0] for j in job_ids})
        print(f"submitted {len(rows)} run(s) of sweep {self.sweep.name} as {arrays} {self.backend} submission(s)")
        return 0


def plan_sweep(sweep: Sweep, extra: Sequence[str], cwd: Path, retry_failed: bool = False) -> Plan:
    """The sweep's runs, validated together (launch.validation; its warnings and notes are shown
    here), with their states and actions. Writes nothing."""
    runs = expand(sweep, extra)
    for run in runs:
        absolutize(run.cfg, cwd)
    findings = validate([r.cfg for r in runs], SweepContext(sweep.name, sweep.selection))
    findings.show()
    output_root = Path(runs[0].cfg.output_root)
    dirs = RunDirectory.for_configs([r.cfg for r in runs])
    states = reconcile(dirs, output_root)
    wanted = SUBMITTABLE + (("failed",) if retry_failed else ())
    rows = []
    for run, rundir, state in zip(runs, dirs, states, strict=True):
        action = ("retry" if state.state == "failed" else "submit") if state.state in wanted else "nothing"
        rows.append(PlanRow(run, rundir, state, action, resources_for(run.cfg)))
    return Plan(sweep, rows, sorted({r.cfg.cluster.backend for r in runs})[0], output_root, findings)


def describe_resources(r: Resources) -> str:
    gpus = f"x{r.gpus_per_node}gpu" if r.gpus_per_node else ""
    return f"{r.nodes}n{gpus} {r.tasks_per_node}t {r.time_minutes}min"


def print_plan(plan: Plan, out=None) -> None:
    out = out or sys.stdout
    axis_keys = plan.sweep.axis_keys
    header = ["run id", "name", *axis_keys, "resources", "state", "action"]
    body = [
        [
            run_id(r.run.cfg),
            r.run.name,
            *[str(r.run.axis_values.get(k)) for k in axis_keys],
            describe_resources(r.resources),
            r.state.state,
            r.action,
        ]
        for r in plan.rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    for line in [header, ["-" * w for w in widths], *body]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip(), file=out)
    counts = {a: sum(r.action == a for r in plan.rows) for a in ("submit", "retry", "nothing")}
    print(
        f"sweep {plan.sweep.name}: {len(plan.rows)} runs; "
        f"submit {counts['submit']}, retry {counts['retry']}, nothing {counts['nothing']}",
        file=out,
    )
    if plan.sweep.selection is not None:
        print(f"successive halving: {plan.sweep.selection.describe()}", file=out)
    if plan.problems:
        print(f"{len(plan.problems)} problem(s); a submission would queue nothing until they are fixed:", file=out)
        for problem in plan.problems:
            print(f"  - {problem}", file=out)
