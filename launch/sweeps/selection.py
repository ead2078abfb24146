"""Successive halving on milestone metrics: a sweep file's `select:` block, checked, and the ranking
that decides one rung. Pure (no files, no scheduler): launch/sweeps/rungs.py makes and applies decisions.

    select: {metric: "davis:J&F-Mean", mode: max, keep: 0.5, rungs: [5000, 20000]}

- metric  a results-table column "<task>:<metric>" that a registered evaluation task produces
          (eval/registry.py); the runs must evaluate that task
- mode    max (higher is better: every metric the shipped tasks report) or min
- keep    the fraction of the live runs kept at each rung, strictly between 0 and 1; the number kept
          is ceil(keep x live runs), at least one, and a run tied with the last kept one is kept too
- rungs   increasing training steps, each a milestone of every run (a multiple of
          checkpoint.milestone_every_steps) before its last step
- promotion    sync (the default: a rung is decided once every live run has reported) or async
               (launch/sweeps/promotion.py: a run goes on as soon as it ranks in the top `keep` of the runs
               reported so far, once min_reports have reported)
- min_reports  with promotion: async, how many runs must have reported at a rung before any is
               promoted early (at most the number of runs in the sweep)

Synchronous rungs (docs/sweeps.md#synchronous-rungs says why): a rung is decided once every live run's evaluation at that
step exists, from those values alone, so the same results always give the same decision whatever the
order in which runs and evaluations finished. Runs do not pause at a rung: they train on while the
decision waits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.schema import ConfigError
from eval.registry import TASKS
from launch.config import RunConfig

SELECT_KEYS = ("metric", "mode", "keep", "rungs", "promotion", "min_reports")
MODES = ("max", "min")
PROMOTIONS = ("sync", "async")


@dataclass(frozen=True)
class Selection:
    metric: str  # "<task>:<metric>", e.g. "davis:J&F-Mean"
    mode: str  # max | min
    keep: float  # fraction of the live runs kept at each rung, in (0, 1)
    rungs: tuple[int, ...]  # training steps (milestones), increasing
    promotion: str = "sync"  # sync | async (launch/sweeps/promotion.py)
    min_reports: int | None = None  # async: runs reported at a rung before any early promotion

    @property
    def task(self) -> str:
        return self.metric.split(":", 1)[0]

    @property
    def task_metric(self) -> str:
        """The metric's name inside its task's record ("J&F-Mean")."""
        return self.metric.split(":", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        """The block as written; a synchronous one without the promotion keys, so sweeps recorded
        before they existed compare equal (launch/plan.py refuses a changed block)."""
        out = {"metric": self.metric, "mode": self.mode, "keep": self.keep, "rungs": list(self.rungs)}
        if self.promotion != "sync":
            out.update(promotion=self.promotion, min_reports=self.min_reports)
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> Selection:
        """A select block as recorded (to_dict, in sweep.json and each decision); ConfigError naming
        every problem when it is not a valid one."""
        selection, problems = parse_selection(raw)
        if selection is None:
            raise ConfigError(problems, what="recorded select block")
        return selection

    def describe(self) -> str:
        rungs = ", ".join(map(str, self.rungs))
        early = f", async promotion after {self.min_reports} reports" if self.promotion == "async" else ""
        return f"{self.metric} ({self.mode}), keep {self.keep:g} at step(s) {rungs}{early}"


def produced_metrics() -> list[str]:
    """Every results-table metric column the registered evaluation tasks produce."""
    return [task.column(m) for task in TASKS.values() for m in task.metrics]


def parse_selection(raw: Any) -> tuple[Selection | None, list[str]]:
    """The `select:` block of a sweep file, or None and every problem with it (each naming the key,
    the value, the rule and the fix)."""
    if not isinstance(raw, Mapping):
        return None, [
            f'select ({raw!r}) must be a mapping: select: {{metric: "davis:J&F-Mean", mode: max, keep: 0.5, rungs: [...]}}'
        ]
    problems = [f"select.{k} is not a key of select; valid: {', '.join(SELECT_KEYS)}" for k in raw if k not in SELECT_KEYS]
    metric, mode, keep, rungs = raw.get("metric"), raw.get("mode", "max"), raw.get("keep", 0.5), raw.get("rungs")
    valid = produced_metrics()
    if not isinstance(metric, str) or metric not in valid:
        problems.append(
            f"select.metric ({metric!r}) is not a metric any registered evaluation task produces; valid: {', '.join(valid)}"
        )
    if mode not in MODES:
        problems.append(f"select.mode ({mode!r}) must be max (higher is better) or min (lower is better)")
    if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0 < keep < 1:
        problems.append(
            f"select.keep ({keep!r}) must lie strictly between 0 and 1: the fraction of the live runs kept at each rung "
            "(0.5 halves them)"
        )
    if not isinstance(rungs, list) or not rungs:
        problems.append(f"select.rungs ({rungs!r}) must be a non-empty list of training steps, e.g. rungs: [5000, 20000]")
    elif not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in rungs):
        problems.append(f"select.rungs ({rungs!r}) must be positive whole training steps, e.g. rungs: [5000, 20000]")
    elif any(b <= a for a, b in zip(rungs, rungs[1:], strict=False)):
        problems.append(f"select.rungs ({rungs!r}) must increase strictly, e.g. rungs: {sorted(set(rungs))}")
    promotion, min_reports = raw.get("promotion", "sync"), raw.get("min_reports")
    problems += promotion_problems(promotion, min_reports)
    if problems:
        return None, problems
    return Selection(metric, mode, float(keep), tuple(rungs), promotion, min_reports), []


def promotion_problems(promotion: Any, min_reports: Any) -> list[str]:
    if promotion not in PROMOTIONS:
        return [
            f"select.promotion ({promotion!r}) must be sync (decide a rung once every live run has reported) or async "
            "(promote a run as soon as it ranks in the top keep of the runs reported so far)"
        ]
    if promotion == "sync":
        if min_reports is None:
            return []
        return [f"select.min_reports ({min_reports!r}) applies to promotion: async only; remove it or set promotion: async"]
    if not isinstance(min_reports, int) or isinstance(min_reports, bool) or min_reports < 1:
        return [
            f"select.min_reports ({min_reports!r}) must be a whole number >= 1 with promotion: async: how many runs must "
            "have reported at a rung before any is promoted early, e.g. min_reports: 8"
        ]
    return []


def sweep_size_problems(selection: Selection, runs: int) -> list[str]:
    """What the select block cannot do with a sweep of `runs` runs."""
    if selection.promotion == "async" and selection.min_reports > runs:
        return [
            f"select.min_reports ({selection.min_reports}) is larger than the sweep ({runs} runs): no run could ever be "
            f"promoted early, so promotion: async would wait like sync; set min_reports to at most {runs} "
            "(a few times 1/keep is typical) or use promotion: sync"
        ]
    return []


def run_problems(selection: Selection, cfg: RunConfig, total_steps: int | None) -> list[str]:
    """Why `selection` cannot rank the run `cfg` (total_steps: its length in optimizer steps, None
    when it cannot be known before its data exists)."""
    out = []
    if selection.task not in cfg.evaluation.tasks:
        own = [TASKS[t].column(m) for t in cfg.evaluation.tasks if t in TASKS for m in TASKS[t].metrics]
        out.append(
            f"select.metric ({selection.metric}) needs the {selection.task} evaluation, but evaluation.tasks is "
            f"{list(cfg.evaluation.tasks)}; add {selection.task} to evaluation.tasks"
            + (f" or select one of: {', '.join(own)}" if own else "")
        )
    every = cfg.checkpoint.milestone_every_steps
    if every <= 0:
        out.append(
            f"select.rungs ({list(selection.rungs)}) must be milestones, but checkpoint.milestone_every_steps is {every} "
            f"(only the last step is a milestone); set it to a divisor of every rung, e.g. {math.gcd(*selection.rungs)}"
        )
    else:
        off = [r for r in selection.rungs if r % every]
        if off:
            out.append(
                f"select.rungs {off} are not milestones: checkpoint.milestone_every_steps is {every} (milestones at "
                f"{every}, {2 * every}, ...); use multiples of {every} or set the cadence to a divisor of every rung"
            )
    if total_steps is not None:
        late = [r for r in selection.rungs if r >= total_steps]
        if late:
            out.append(
                f"select.rungs {late} are not before the run's last step ({total_steps} steps): a rung at or beyond "
                "the end prunes nothing; use earlier milestones"
            )
    return out


@dataclass(frozen=True)
class Ranked:
    run_id: str
    value: float
    rank: int  # 1 = best; tied values share a rank (1, 2, 2, 4)
    kept: bool


def kept_count(live: int, keep: float) -> int:
    """How many of `live` runs a rung keeps: ceil(keep x live), at least 1. The epsilon keeps float
    products such as 0.3 x 10 = 3.0000000000000004 from rounding up."""
    return max(1, math.ceil(keep * live - 1e-9))


def value_key(value: float | None, mode: str) -> tuple[bool, float]:
    """The order of metric values, best first: a missing or NaN value after every number."""
    bad = value is None or math.isnan(value)
    return (bad, 0.0 if bad else (-value if mode == "max" else value))


def rank_runs(values: Mapping[str, float], mode: str, keep: float) -> list[Ranked]:
    """Rank the runs of one rung by their metric (`values`: run id -> value) best first and keep the
    best kept_count(len(values), keep), plus any run tied with the last kept one. Ties are ordered
    by run id so the listing is stable; they never decide who is pruned."""
    if mode not in MODES:
        raise ValueError(f"mode ({mode!r}) must be one of {', '.join(MODES)}")

    def key(item: tuple[str, float]) -> tuple[bool, float, str]:
        return (*value_key(item[1], mode), item[0])

    order = sorted(values.items(), key=key)
    if not order:
        return []
    threshold = key(order[kept_count(len(order), keep) - 1])[:2]
    out: list[Ranked] = []
    for position, (run, value) in enumerate(order):
        tied = out and key((run, value))[:2] == key((out[-1].run_id, out[-1].value))[:2]
        rank = out[-1].rank if tied else position + 1
        out.append(Ranked(run, value, rank, key((run, value))[:2] <= threshold))
    return out
