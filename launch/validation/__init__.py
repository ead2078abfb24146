"""Everything that can be checked before a job is queued, for one run or a whole sweep, checked in
one place, all at once: `validate` is the one entry point both front doors call (launch/submit.py
for a run, launch/plan.py for a sweep), before anything is written to disk or queued.

It returns `Findings`: problems (each names the key, the bad value, the rule and the fix; any one
refuses the submission), warnings (allowed, but costs something the user may not expect) and notes
(about the data; no reason to refuse). The rules live by topic:
- launch.validation.run: one run's config, which gathers the topics below;
- launch.validation.cluster: resources, time limits, scheduler warnings;
- launch.validation.data: the labels file against the disk, the batch against the dataset;
- launch.validation.devices: precision, compile, whether the batch can fit the GPU;
- launch.validation.evaluation: the evaluation tasks, their data and protocol;
- launch.validation.sweep: a sweep's select block and backend.
Once those find nothing, the backend judges one representative job per group of equal resources
(SLURM: `sbatch --test-only`, which queues nothing). To add a rule: add it to its topic's function
(or a new topic's, called from run.problems or from `validate`), with one unit test.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launch.backends import Resources, make_backend
from launch.config import RunConfig
from launch.dispatch import resources_for
from launch.rundir import run_id
from launch.sweeps.rungs import SweepDirectory, membership_changes
from launch.sweeps.selection import Selection
from launch.validation.cluster import scheduler_warnings
from launch.validation.data import data_notes
from launch.validation.devices import device_warnings
from launch.validation.run import problems, same_name_warnings
from launch.validation.sweep import (
    backend_problems,
    selection_change_problems,
    selection_problems,
    sweep_selection_problems,
)

log = logging.getLogger(__name__)


@dataclass
class Findings:
    """What validation found. Problems refuse the submission; warnings and notes are shown."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the data; only gathered when there are no problems

    def show(self) -> None:
        """Warnings on stderr, notes through logging (the problems are the caller's to list or raise)."""
        for warning in self.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for note in self.notes:
            log.warning("%s", note)


@dataclass(frozen=True)
class SweepContext:
    """What a sweep adds to its runs' rules: its name, its select block, and where it was recorded."""

    name: str
    selection: Selection | None


def validate(cfgs: Sequence[RunConfig], sweep: SweepContext | None = None) -> Findings:
    """Every problem, warning and note of one run (`[cfg]`, sweep=None) or of a sweep's runs.

    A sweep's problems are listed once each, ending with the runs they concern ("(all runs)" or
    "(runs: a, b)"). The backend's own judgement (SLURM: `sbatch --test-only` of one script per group
    of equal resources) is asked only once everything else passes. A sweep file whose runs changed
    since a rung was decided: added runs are refused, removed ones warned about
    (launch.sweeps.rungs.membership_changes)."""
    found, removed = run_problems(cfgs, sweep), []
    if sweep is not None:
        found += backend_problems(cfgs) + sweep_selection_problems(sweep.selection, cfgs)
        directory = SweepDirectory(cfgs[0].output_root, sweep.name)
        found += selection_change_problems(sweep.name, sweep.selection, directory)
        changed, removed = membership_changes(directory, {run_id(cfg): cfg.name for cfg in cfgs}, f"sweep file {sweep.name}")
        found += changed
    if not found:
        found = backend_refusals(cfgs, sweep)
    warnings = scheduler_warnings(cfgs) + [w for cfg in cfgs for w in device_warnings(cfg)] + removed
    if sweep is None and not found:  # a sweep's runs differ from each other by design
        warnings += same_name_warnings(cfgs[0])
    notes = [] if found else [n for cfg in cfgs for n in data_notes(cfg)]
    return Findings(found, list(dict.fromkeys(warnings)), list(dict.fromkeys(notes)))


def run_problems(cfgs: Sequence[RunConfig], sweep: SweepContext | None) -> list[str]:
    found = [(cfg.name, problems(cfg) + (selection_problems(sweep.selection, cfg) if sweep else [])) for cfg in cfgs]
    return by_runs(found) if sweep else [p for _, ps in found for p in ps]


def backend_refusals(cfgs: Sequence[RunConfig], sweep: SweepContext | None) -> list[str]:
    """The backend's judgement of one representative job per group of equal resources."""
    groups: dict[tuple, list[RunConfig]] = {}
    for cfg in cfgs:  # the group key leaves the job name out: no run id to compute per run
        key = Resources.from_cluster(cfg.cluster, job_name="").group_key()
        groups.setdefault((cfg.cluster.backend, key), []).append(cfg)
    found = []
    for group in groups.values():
        backend = make_backend(group[0].cluster.backend, Path(group[0].output_root) / ".jobs" / "validate")
        refusals = backend.refusals(resources_for(group[0]))
        found += [(cfg.name, refusals) for cfg in group]
    return by_runs(found) if sweep else [p for _, ps in found for p in ps]


def by_runs(found: Sequence[tuple[str, list[str]]]) -> list[str]:
    """(run name, its problems) per run -> each problem once, ending with the runs it concerns."""
    names: dict[str, list[str]] = {}
    for name, problems_of_run in found:
        for problem in problems_of_run:
            names.setdefault(problem, []).append(name)
    return [f"{p} ({'all runs' if len(n) == len(found) else 'runs: ' + ', '.join(n)})" for p, n in names.items()]
