"""Submit-time rules of a sweep as a whole (each run's own rules are launch.validation.run's):
- its select block can rank every run (launch.sweeps.selection.run_problems: the metric is evaluated, the
  rungs are milestones before the run's last step);
- its select block fits the sweep (promotion: async with min_reports at most the number of runs) and
  the backend can act on it (runtime_problems: async pauses and resubmits jobs);
- its runs share one backend;
- a sweep whose rungs were decided keeps the select block they were decided under."""

from __future__ import annotations

from collections.abc import Sequence

from launch.backends import backend_class
from launch.config import RunConfig
from launch.sweeps.rungs import SweepDirectory
from launch.sweeps.selection import Selection, run_problems, sweep_size_problems
from launch.validation.run import known_total_steps


def selection_problems(selection: Selection | None, cfg: RunConfig) -> list[str]:
    """Why the sweep's select block cannot rank the run `cfg` ([] without a select block)."""
    return [] if selection is None else run_problems(selection, cfg, known_total_steps(cfg))


def sweep_selection_problems(selection: Selection | None, cfgs: Sequence[RunConfig]) -> list[str]:
    """What the sweep's select block cannot do with the runs `cfgs`, or on their backend."""
    if selection is None:
        return []
    backends = sorted({cfg.cluster.backend for cfg in cfgs})
    return sweep_size_problems(selection, len(cfgs)) + runtime_problems(selection, backends)


def runtime_problems(selection: Selection, backends: Sequence[str]) -> list[str]:
    """What the runs' backends cannot act on: asynchronous promotion ends a paused run's job and
    submits it again when promoted (launch/sweeps/async_rungs.py), which needs jobs of their own
    (local, slurm), not runs inside the submitting process (debug)."""
    inside = [b for b in backends if backend_class(b).in_process]
    if selection.promotion == "async" and inside:
        return [
            f"select.promotion: async needs runs in jobs of their own that can pause and be resubmitted; cluster.backend "
            f"is {inside[0]} (runs inside the submitting process); use cluster=local or cluster=slurm, or promotion: sync"
        ]
    return []


def backend_problems(cfgs: Sequence[RunConfig]) -> list[str]:
    backends = {cfg.cluster.backend for cfg in cfgs}
    if len(backends) == 1:
        return []
    return [f"a sweep runs on one backend; its runs ask for {sorted(backends)}: set cluster= once, in overrides"]


def selection_change_problems(name: str, selection: Selection | None, directory: SweepDirectory) -> list[str]:
    """A sweep whose rungs were decided keeps the select block they were decided under."""
    decisions = directory.decisions() if directory.path.is_dir() else {}
    if not decisions:
        return []
    record = directory.record()
    before = record.select if record else None
    now = selection.to_dict() if selection else None
    if before == now:
        return []
    return [
        f"select changed: sweep {name} was pruned under select {before} (decided at step(s) "
        f"{', '.join(map(str, sorted(decisions)))}, {directory.path / 'decisions'}) but its file now says {now}; "
        f"restore the select block, or copy the file to a new name to start a sweep of its own "
        "(bring single runs back with --unprune RUN)"
    ]
