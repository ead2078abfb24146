"""The state of runs at a glance: one table, one batched squeue/sacct call per refresh.

    python launch/status.py                      # every run under ./runs
    python launch/status.py /scratch/me/runs     # another output root
    python launch/status.py sweep=kl_weight      # one sweep, its axis values as columns
    python launch/status.py --watch 30           # refresh every 30 s

Columns: run, id, state, step/total, attempts and how they ended, last checkpoint, time lost to
requeues (gaps between an attempt's end and the next one's start, plus the steps redone after a
non-cooperative end and the time they took, measured from each attempt's step log), evaluations
done/expected. Below the table, every expected evaluation without a record and its state (pending,
running, failed, lost, not submitted). Lost evaluations (their job vanished without a record) are
resubmitted within their budget, and said so (--no-recover: only report them).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from launch.evaluations.recovery import EvaluationState, evaluation_states, recover
from launch.rundir import Attempt, RunDirectory
from launch.state import RunState, reconcile
from launch.steplog import read_trace
from launch.sweep import SWEEPS_DIR
from rsp.commandline import HintingArgumentParser

SHORT = {
    "timeout": "T",
    "preempted": "P",
    "stopped": "S",
    "requeued": "Q",
    "cancelled": "X",
    "crashed": "C",
    "interrupted": "K",
    "finished": "F",
}


def lost_time(run: RunDirectory, attempts: Sequence[Attempt]) -> tuple[float, int, float]:
    """(seconds between attempts, steps redone, seconds spent on the steps redone) over a run's
    attempts (RunDirectory.attempts()). Steps redone after an attempt: the last step it completed
    minus the step the next one resumed from; their time comes from its step log (launch.steplog).
    A cooperative stop checkpoints the step it stops at: nothing is redone."""
    gap = sum(max(0.0, b.start_time - a.end_time) for a, b in pairwise(attempts) if a.end_time)
    steps, seconds = 0, 0.0
    for a, b in pairwise(attempts):
        redone = max(0, (a.end_step or 0) - b.start_step)
        trace = read_trace(run.step_log_path(a)) if redone else None
        since = trace.time_of(max(b.start_step, trace.first[0])) if trace else None
        steps += redone
        seconds += trace.last[1] - since if since is not None else 0.0
    return gap, steps, seconds


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def row(state: RunState, axis_keys: Sequence[str], axes: dict[str, Any], evals: str = "-") -> list[str]:
    """One line of the table; `axes`: the run's sweep axis values (RunDirectory.sweep_axes)."""
    run = state.run
    if not run.exists:
        return [run.path.name, "-", state.state, "-", "-", "-", "-", "-", *["-"] * len(axis_keys)]
    info = run.info()
    attempts = run.attempts()
    ends = Counter(SHORT.get(a.end_reason or "", "R") for a in attempts)
    manifests = run.manifests()
    last = f"{manifests[-1].step} ({human(time.time() - manifests[-1].created)} ago)" if manifests else "-"
    gap, redone, redone_s = lost_time(run, attempts)
    total = run.total_steps()
    step = max(run.latest_logged_step(), manifests[-1].step if manifests else 0)
    return [
        info["name"],
        info["run_id"],
        state.state + (f" [{state.job_id}]" if state.job_id else ""),
        f"{step}/{total or '?'}",
        f"{len(attempts)} " + "".join(f"{k}{v}" for k, v in sorted(ends.items())),
        last,
        f"{human(gap)}+{redone} steps ({human(redone_s)})" if attempts else "-",
        evals,
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


def evaluation_lines(states: Sequence[EvaluationState], recovered: tuple[list[str], list[str]]) -> list[str]:
    """Every evaluation without a record and its state; what the recovery did."""
    lines = [f"resubmitted lost evaluation: {d}" for d in recovered[0]]
    lines += [f"gave up on lost evaluation (failed.json): {d}" for d in recovered[1]]
    missing = [e for e in states if e.state != "recorded"]
    if missing:
        lines.append("evaluations without a record:")
    for e in missing:
        state = "not submitted yet" if e.state == "unclaimed" else e.state
        job = f" [{e.job_id}]" if e.job_id and e.state in ("pending", "running") else ""
        lines.append(f"  {e.run.path.name} step {e.step} {e.task}: {state}{job}" + (f" ({e.detail})" if e.detail else ""))
    return lines


def find_runs(root: Path, sweep: str | None) -> list[RunDirectory]:
    runs = [RunDirectory(p.parent) for p in sorted(root.glob("*/run.json"))]
    return [r for r in runs if sweep is None or r.in_sweep(sweep)]


def render(root: Path, sweep: str | None, recover_lost: bool = True) -> str:
    runs = find_runs(root, sweep)
    if not runs:
        return f"no runs under {root}" + (f" in sweep {sweep}" if sweep else "")
    axes = {r.path: r.sweep_axes() for r in runs} if sweep else {}
    axis_keys = sorted({k for values in axes.values() for k in values})
    header = ["run", "id", "state", "step", "attempts", "last checkpoint", "lost", "evals", *axis_keys]
    evals = evaluation_states(runs)
    recovered: tuple[list[str], list[str]] = ([], [])
    if recover_lost and any(e.state == "lost" for e in evals):
        recovered = recover(evals)
        evals = evaluation_states(runs)
    counts = evaluation_counts(evals)
    body = [row(s, axis_keys, axes.get(s.run.path, {}), counts.get(s.run.path, "-")) for s in reconcile(runs, root)]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, ["-" * w for w in widths], *body]
    ]
    states = Counter(r[2].split(" [")[0] for r in body)
    lines.append(
        ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + "   (attempts: F finished, T timeout, P preempted, S stopped, Q requeued, X cancelled, C crashed, K killed, R running)"
    )
    return "\n".join(lines + evaluation_lines(evals, recovered))


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
    root, sweep = Path(roots[0] if roots else "runs").expanduser(), sweeps[0] if sweeps else None
    if not root.is_dir():
        return root, sweep, f"output root {root} does not exist; pass the output_root your runs were submitted with"
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


def main(argv: Sequence[str] | None = None) -> int:
    p = HintingArgumentParser(prog="launch/status.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", help="[OUTPUT_ROOT] [sweep=NAME]")
    p.add_argument("--watch", type=float, default=0, help="refresh every this many seconds")
    p.add_argument("--no-recover", action="store_true", help="report lost evaluations, do not resubmit them")
    ns = p.parse_args(argv)
    root, sweep, problem = target(ns.args)
    if problem:
        p.error(problem)
    while True:
        print(render(root, sweep, recover_lost=not ns.no_recover), flush=True)
        if not ns.watch:
            return 0
        time.sleep(ns.watch)
        print()


if __name__ == "__main__":
    raise SystemExit(main())
