"""The state of runs at a glance: one table, one batched squeue/sacct call per refresh (plus one
sacct call for what they cost, when any ran on SLURM).

    python launch/status.py                      # every run under ./runs
    python launch/status.py /scratch/me/runs     # another output root
    python launch/status.py sweep=kl_weight      # one sweep, its axis values as columns
    python launch/status.py --watch 30           # refresh every 30 s
    python launch/status.py --attempts           # one row per attempt: allocation, elapsed, queue wait, redone work

Columns: run, id, state (pruned runs: the step, rank and metric value that pruned them), step/total,
attempts and how they ended, last checkpoint, time lost to requeues (gaps between an attempt's end
and the next one's start, a paused wait excepted, plus the steps redone after a non-cooperative end and the time they took,
measured from each attempt's step log), evaluations done/expected, GPU-hours (CPU-hours where no GPU
was allocated) of training and evaluation. Below the table: every expected evaluation without a
record and its state (pending, running, failed, lost, invalid, not submitted); each sweep's
successive-halving rungs (decided, or what they wait for), an asynchronous sweep's promotions and
paused runs (state `paused@STEP`: waiting at a rung with no job), its cost and what pruning saved.

Before the table, status advances what it shows (launch/advance.py, the one owner of state
transitions): it decides the rungs that are due and resubmits lost evaluations (their job vanished
without a record) within their budget, and says what it did. --no-recover: decide rungs, only report
lost evaluations. --no-advance: read only; nothing on disk changes (`render` is pure).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("launch/status.py", "nothing was left half-done")

from core.atomicio import writable
from core.commandline import HintingArgumentParser
from core.schema import ConfigError
from launch.advance import Report, advance, damaged_runs, runs_under
from launch.cost import RunCost, accounting, hours, projected_to_end, redone, run_cost, unit_of
from launch.evaluations.recovery import EvaluationState, evaluation_states
from launch.rundir import Attempt, RunDirectory, output_root_problem, sweep_name
from launch.runstate import RunState, reconcile
from launch.slurm_queries import Allocation
from launch.sweeps.async_rungs import load_promotion, promotion_dir
from launch.sweeps.expand import SWEEPS_DIR
from launch.sweeps.rungs import SweepDirectory, rung_views, sweep_directories
from launch.sweeps.slots import summary as slot_summary

log = logging.getLogger(__name__)

SHORT = {
    "timeout": "T",
    "preempted": "P",
    "stopped": "S",
    "requeued": "Q",
    "cancelled": "X",
    "crashed": "C",
    "interrupted": "K",
    "finished": "F",
    "pruned": "H",  # successive halving
    "paused": "W",  # waited at a rung of an asynchronous sweep, holding nothing
}


def lost_time(run: RunDirectory, attempts: Sequence[Attempt]) -> tuple[float, int, float]:
    """(seconds between attempts, steps redone, seconds spent on the steps redone) over a run's
    attempts (RunDirectory.attempts()). Steps redone after an attempt: the last step it completed
    minus the step the next one resumed from; their time comes from its step log (launch.cost.redone,
    which the GPU-hour columns price too). A cooperative stop checkpoints the step it stops at:
    nothing is redone."""
    # a run paused at an asynchronous rung waits on purpose, holding nothing: not time lost
    gap = sum(max(0.0, b.start_time - a.end_time) for a, b in pairwise(attempts) if a.end_time and a.end_reason != "paused")
    work = redone(run, attempts)
    return gap, sum(steps for steps, _ in work), sum(seconds for _, seconds in work)


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def describe_state(state: RunState) -> str:
    marker = state.run.prune_marker() if state.run.exists else None
    text = state.state + (f" [{state.job_id}]" if state.job_id and state.state in ("pending", "running") else "")
    if state.state == "paused" and (attempts := state.run.attempts()):
        text += f"@{attempts[-1].end_step}"
    if marker and state.state == "pruned":
        text += f"@{marker.rung} ({marker.rank}/{marker.of}, {marker.value:.3g})"
    elif marker and state.state in ("pending", "running"):
        text += f", pruned@{marker.rung}: stopping"
    return text


def row(
    state: RunState, axis_keys: Sequence[str], axes: dict[str, Any], cost: RunCost | None, unit: str, evals: str = "-"
) -> list[str]:
    """One line of the table; `axes`: the run's sweep axis values (RunDirectory.sweep_axes)."""
    run = state.run
    if not run.exists:
        return [run.path.name, "-", state.state, "-", "-", "-", "-", "-", "-", *["-"] * len(axis_keys)]
    info = run.info()
    attempts = run.attempts()
    ends = Counter(SHORT.get(a.end_reason or "", "R") for a in attempts)
    manifests = run.manifests()
    last = f"{manifests[-1].step} ({human(time.time() - manifests[-1].created)} ago)" if manifests else "-"
    gap, redone, redone_s = lost_time(run, attempts)
    total = run.total_steps()
    step = max(run.latest_logged_step(), manifests[-1].step if manifests else 0)
    return [
        info.name,
        info.run_id,
        describe_state(state),
        f"{step}/{total or '?'}",
        f"{len(attempts)} " + "".join(f"{k}{v}" for k, v in sorted(ends.items())),
        last,
        f"{human(gap)}+{redone} steps ({human(redone_s)})" if attempts else "-",
        evals,
        f"{cost.total_s(unit) / 3600:.3g}" if cost is not None else "?",
        *[str(axes.get(k, "-")) for k in axis_keys],
    ]


def evaluation_counts(states: Sequence[EvaluationState]) -> dict[Path, str]:
    """run path -> "recorded/expected" (or "-" when none is expected yet)."""
    out: dict[Path, list[int]] = {}
    for e in states:
        counts = out.setdefault(e.run.path, [0, 0])
        counts[0] += e.state == "recorded"
        counts[1] += 1
    return {path: f"{done}/{expected}" for path, (done, expected) in out.items()}


def evaluation_lines(states: Sequence[EvaluationState]) -> list[str]:
    """Every evaluation without a valid record and its state."""
    lines = []
    missing = [e for e in states if e.state != "recorded"]
    if missing:
        lines.append("evaluations without a record:")
    for e in missing:
        state = "not submitted yet" if e.state == "unclaimed" else e.state
        if e.state == "invalid":
            state = "invalid record, not counted (a backfill moves it aside and evaluates again)"
        job = f" [{e.job_id}]" if e.job_id and e.state in ("pending", "running") else ""
        lines.append(f"  {e.run.path.name} step {e.step} {e.task}: {state}{job}" + (f" ({e.detail})" if e.detail else ""))
    return lines


def find_runs(root: Path, sweep: str | None) -> list[RunDirectory]:
    return runs_under(root, sweep)


def costs_of(runs: Sequence[RunDirectory]) -> tuple[dict[Path, RunCost], str | None]:
    """Each run's cost (one sacct call for all SLURM jobs), and a note when sacct could not answer."""
    note = None
    try:
        allocations: dict[str, list[Allocation]] = accounting(runs)
    except (OSError, RuntimeError) as exc:  # no sacct, or accounting down: price from the attempt records
        allocations, note = {}, f"sacct unavailable ({exc}); costs from the attempt records"
    out = {}
    for run in runs:
        try:
            out[run.path] = run_cost(run, allocations)
        except Exception:  # one unreadable run must not break the table
            log.exception("cannot price %s", run.path.name)
    return out, note


def missing_member_lines(directory: SweepDirectory) -> list[str]:
    """Members of the sweep whose run directory is gone (deleted to free space, or moved): the table,
    built from the run directories, would leave them out without a word."""
    gone = sorted(run.path.name for run in directory.members().values() if not run.path.is_dir())
    if not gone:
        return []
    return [
        f"sweep {directory.name}: {len(gone)} member(s) have no run directory (deleted or moved): {', '.join(gone)}; "
        "submitting the sweep file again trains those it lists from step 0"
    ]


def rung_lines(directory: SweepDirectory) -> list[str]:
    selection = directory.selection()
    if selection is None:
        return []
    names = {rid: run.path.name for rid, run in directory.members().items()}
    lines = [f"sweep {directory.name}: successive halving on {selection.describe()}"]
    for view in rung_views(directory, selection):
        if view.decision is not None:
            d = view.decision
            members, exempt = directory.members(), directory.exempt()
            pruned = ", ".join(
                f"{r.name} ({r.rank}/{d.live}, {r.value:.4g}{late(members.get(r.run_id), r.run_id in exempt)})"
                for r in d.ranking
                if not r.kept
            )
            lines.append(f"  step {view.rung}: kept {len(d.kept)} of {d.live}; pruned {pruned or 'none'}")
        elif view.due:
            n = len(view.values)
            lines.append(f"  step {view.rung}: due ({n} of {n} values in); the next status without --no-advance decides it")
        else:
            waits = "; ".join(f"{names.get(rid, rid)}: {why}" for rid, why in sorted(view.waiting.items()))
            lines.append(f"  step {view.rung}: waiting for {len(view.waiting)} run(s): {waits}")
    return lines


def promotion_lines(directory: SweepDirectory, states: Sequence[RunState]) -> list[str]:
    """An asynchronous sweep's promotions so far, its paused runs, and how long paused runs held no
    allocation (time a synchronous sweep on SLURM spends training them past the rung)."""
    selection = directory.selection()
    if selection is None or selection.promotion != "async":
        return []
    promotion = load_promotion(directory, selection)
    promoted = sum(len(rung.promoted) for rung in promotion.rungs)
    resumed = len(list((promotion_dir(directory) / "resumed").glob("*.json")))
    members = {run.path for run in directory.members().values()}
    paused = sorted(s.run.path.name for s in states if s.state == "paused" and s.run.path in members)
    idle = 0.0
    for run in (s.run for s in states if s.run.path in members and s.run.exists):
        attempts = run.attempts()
        for a, nxt in zip(attempts, [*attempts[1:], None], strict=True):
            if a.end_reason == "paused" and a.end_time:
                idle += (nxt.start_time if nxt is not None else time.time()) - a.end_time
    slots = slot_summary(promotion_dir(directory))
    return [
        f"  async promotion: promoted {promoted} (resubmitted {resumed} from their rung); paused now {len(paused)}"
        + (f" ({', '.join(paused)})" if paused else "")
        + f"; paused runs held no allocation for {human(idle)} in all ({promotion_dir(directory)})",
        *([slots] if slots else []),
    ]


def late(run: RunDirectory | None, exempt: bool) -> str:
    """Why a run a decision pruned is not (or no longer) pruned: it finished first, or --unprune."""
    if exempt:
        return "; unpruned since"
    if run is not None and run.exists and run.final_state() == "finished":
        return "; it finished before it could be stopped"
    return ""


def cost_lines(states: Sequence[RunState], costs: dict[Path, RunCost], unit: str) -> list[str]:
    priced = [costs[s.run.path] for s in states if s.run.path in costs]
    if not priced:
        return []
    total = sum(c.total_s(unit) for c in priced)
    lines = [
        f"cost: {hours(total, unit)} (training {hours(sum(c.train_s(unit) for c in priced), unit)}, evaluation "
        f"{hours(sum(c.eval_s(unit) for c in priced), unit)}, redone {hours(sum(c.redone_s(unit) for c in priced), unit)}; "
        f"queue wait {human(sum(c.queue_s() for c in priced))})" + ("" if unit == "gpu" else "; no GPU was allocated: CPU-hours")
    ]
    saved = 0.0
    for state in states:
        if state.state == "pruned" and state.run.path in costs:
            saved += projected_to_end(state.run, costs[state.run.path], unit)
    if saved > 0:
        lines.append(
            f"pruning saved ~{hours(saved, unit)}: {100 * saved / (total + saved):.0f}% of the "
            f"~{hours(total + saved, unit)} running every run to its end would cost"
        )
    return lines


def render(root: Path, sweep: str | None, report: Report | None = None) -> str:
    """The status table and what is below it; pure: it reads the run and sweep directories and
    asks the scheduler, and writes nothing. `report`: what the advance before it did (shown first)."""
    directories = [d for d in sweep_directories(root) if sweep is None or d.name == sweep]
    runs, damaged = find_runs(root, sweep), damaged_lines(root)
    if not runs:
        return "\n".join([f"no runs under {root}" + (f" in sweep {sweep}" if sweep else ""), *damaged])
    axes = {r.path: r.sweep_axes() for r in runs} if sweep else {}
    axis_keys = sorted({k for values in axes.values() for k in values})
    states = reconcile(runs, root)
    costs, note = costs_of(runs)
    unit = unit_of(list(costs.values()))
    header = ["run", "id", "state", "step", "attempts", "last checkpoint", "lost", "evals", f"{unit.upper()}-h", *axis_keys]
    evals = evaluation_states(runs)
    done = evaluation_counts(evals)
    body = [row(s, axis_keys, axes.get(s.run.path, {}), costs.get(s.run.path), unit, done.get(s.run.path, "-")) for s in states]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, ["-" * w for w in widths], *body]
    ]
    counts = Counter(s.state for s in states)
    lines.append(
        ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + "   (attempts: F finished, T timeout, P preempted, S stopped, Q requeued, X cancelled, C crashed, K killed, "
        "H pruned, W paused, R running)"
    )
    lines += [f"{s.run.path.name} failed: {s.detail}" for s in states if s.state == "failed"]  # why, in its own words
    lines += (report.lines() if report else []) + evaluation_lines(evals)
    for directory in directories:
        lines += missing_member_lines(directory) + rung_lines(directory) + promotion_lines(directory, states)
    lines += cost_lines(states, costs, unit) + ([note] if note else [])
    return "\n".join(lines + damaged)


def damaged_lines(root: Path) -> list[str]:
    """The runs set aside because a record of theirs cannot be read: each named with its file."""
    damaged = damaged_runs(root)
    if not damaged:
        return []
    return [
        f"{len(damaged)} run(s) not shown: a record cannot be read (nothing was changed; restore the file from a copy, "
        "or move the run directory aside and submit again to retrain):",
        *(f"  {name}: {problem}" for name, problem in damaged.items()),
    ]


def target(args: Sequence[str]) -> tuple[Path, str | None, str | None]:
    """(output root, sweep or None, why the arguments cannot be shown or None) of `[OUTPUT_ROOT] [sweep=NAME]`."""
    sweeps = [a.split("=", 1)[1] for a in args if a.startswith("sweep=")]
    others = [a for a in args if "=" in a and not a.startswith("sweep=")]
    roots = [a for a in args if "=" not in a]
    if others:
        return (
            Path("runs"),
            None,
            f"{' '.join(others)}: only sweep=NAME is written key=value; give the output root as a plain path",
        )
    if len(roots) > 1 or len(sweeps) > 1:
        return Path("runs"), None, f"give at most one OUTPUT_ROOT and one sweep=NAME, got {' '.join(args)}"
    root, sweep = Path(roots[0] if roots else "runs").expanduser(), sweep_name(sweeps[0]) if sweeps else None
    if (problem := output_root_problem(root)) is not None:
        return root, sweep, problem
    if sweep is not None and not find_runs(root, sweep):
        known = sorted({p.stem for p in root.glob("*/sweeps/*.json")})
        return (
            root,
            sweep,
            (
                f"sweep={sweep} matches no run under {root}; sweeps with runs there: {', '.join(known) or 'none'} "
                f"(sweep files: {', '.join(sorted(p.stem for p in SWEEPS_DIR.glob('*.yaml')))}; "
                "a sweep's runs are listed once it was submitted)"
            ),
        )
    return root, sweep, None


def render_attempts(root: Path, sweep: str | None) -> str:
    """One row per attempt (allocation): what it held, for how long, how long it queued, and the
    work the next attempt redid."""
    runs = find_runs(root, sweep)
    costs, note = costs_of(runs)
    header = ["run", "attempt", "job", "GPUs", "CPUs", "elapsed", "queue wait", "redone", "GPU-h", "CPU-h", "source"]
    body = []
    for run in runs:
        cost = costs.get(run.path)
        for a in cost.attempts if cost else []:
            elapsed = a.elapsed_s(cost.now)
            body.append(
                [
                    run.path.name,
                    "-" if a.number is None else str(a.number),
                    a.job_id,
                    str(a.gpus),
                    str(a.cpus),
                    human(elapsed),
                    human(a.queue_s),
                    f"{a.redone_steps} steps ({human(a.redone_s)})",
                    f"{elapsed * a.gpus / 3600:.3g}",
                    f"{elapsed * a.cpus / 3600:.3g}",
                    a.source,
                ]
            )
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]]
    return "\n".join(lines + ([note] if note else []) + damaged_lines(root))


def show(root: Path, sweep: str | None, no_advance: bool = False, no_recover: bool = False) -> str:
    """`status`: advance what is shown (unless `no_advance`), then render it."""
    if not no_advance and (reason := writable(root)) is not None:  # e.g. a read-only copy: show it as it is
        return render(root, sweep, None) + f"\n{root} cannot be written ({reason}): nothing was decided or resubmitted"
    report = None if no_advance else advance(root, sweep, role="status", recover_lost=not no_recover)
    return render(root, sweep, report)


def main(argv: Sequence[str] | None = None) -> int:
    p = HintingArgumentParser(prog="launch/status.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", help="[OUTPUT_ROOT] [sweep=NAME]")
    p.add_argument("--watch", type=float, default=0, help="refresh every this many seconds")
    p.add_argument("--attempts", action="store_true", help="one row per attempt: allocation, elapsed, queue wait, redone work")
    p.add_argument("--no-recover", action="store_true", help="report lost evaluations, do not resubmit them")
    p.add_argument("--no-advance", action="store_true", help="read only: decide no rung, resubmit nothing, write nothing")
    ns = p.parse_args(argv)
    root, sweep, problem = target(ns.args)
    if problem:
        p.error(problem)
    if ns.watch < 0 or ns.watch != ns.watch:  # nan too: time.sleep raised on it after the first table
        p.error(f"--watch ({ns.watch}) must be >= 0 seconds (0: print once)")
    while True:
        try:
            print(render_attempts(root, sweep) if ns.attempts else show(root, sweep, ns.no_advance, ns.no_recover), flush=True)
        except ConfigError as exc:  # a damaged sweep record (a run's own are set aside by damaged_lines): named, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not ns.watch:
            return 0
        time.sleep(ns.watch)
        print()


if __name__ == "__main__":
    raise SystemExit(main())
