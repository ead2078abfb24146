"""The quickstart's sweep against the quickstart's single run, end to end on this machine's local
backend: wall time of `python launch/submit.py experiment=smoke` and of `... sweep=smoke` (4 runs,
successive halving at step 40), each until its results table is printed; how long after the rung's
last evaluation record its decision landed; how long after its prune marker each pruned run stopped;
and the CPU-hours the sweep used and pruning saved.

    python bench/sweep_smoke.py [--out-root DIR]

Targets: the sweep under 3x the single run's wall time; the decision under 30 s after the rung's
last record. Both commands run from the repository root in fresh output roots; the generated data
both read (data/smoke/) is made before either is timed, so neither pays for it. The load average
before and after each is recorded, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_io import report  # noqa: E402
from eval.records import parse_record  # noqa: E402
from launch.config import absolutize, compose  # noqa: E402
from launch.cost import accounting, projected_to_end, run_cost  # noqa: E402
from launch.dispatch import ensure_generated_data  # noqa: E402
from launch.plan import plan_sweep  # noqa: E402
from launch.rundir import RunDirectory  # noqa: E402
from launch.sweeps.expand import load_sweep  # noqa: E402
from launch.sweeps.rungs import SweepDirectory  # noqa: E402


def timed(command: list[str], log: Path) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    return {"rc": rc, "wall_s": time.perf_counter() - start, "load_before": load, "load_after": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-root", default=None, help="default: a temporary directory")
    args = p.parse_args()
    tmp = Path(args.out_root or tempfile.mkdtemp(prefix="rsp-sweep-smoke-"))
    tmp.mkdir(parents=True, exist_ok=True)
    ensure_generated_data(absolutize(compose(["experiment=smoke"]), REPO))
    for row in plan_sweep(load_sweep("smoke"), [], REPO).rows:
        ensure_generated_data(row.run.cfg)
    submit = [sys.executable, "launch/submit.py"]
    single = timed([*submit, "experiment=smoke", f"output_root={tmp / 'single'}"], tmp / "single.log")
    sweep = timed([*submit, "sweep=smoke", f"output_root={tmp / 'sweep'}"], tmp / "sweep.log")
    directory = SweepDirectory(tmp / "sweep", "smoke")
    decisions = directory.decisions()
    rows = [{"command": "experiment=smoke", **single}, {"command": "sweep=smoke", **sweep}]
    extra: dict = {"ratio": sweep["wall_s"] / single["wall_s"], "target_ratio": 3.0, "output_root": str(tmp)}
    for rung, decision in sorted(decisions.items()):
        last = max(parse_record(Path(e.record)).created for e in decision.ranking)
        extra[f"decision_after_last_record_s_step{rung}"] = decision.time - last
        extra[f"decided_by_step{rung}"] = decision.decided_by.role
    runs = [RunDirectory(tmp / "sweep" / name) for name in (directory.record().runs.values() if directory.record() else [])]
    stops = {}
    for run in runs:
        status = run.status()
        marker = status.pruned if status else None
        if marker:
            stops[run.path.name] = run.attempts()[-1].end_time - marker.time
    extra["stop_after_marker_s"] = stops
    costs = {run.path: run_cost(run, accounting(runs)) for run in runs}
    used = sum(c.total_s("cpu") for c in costs.values())
    saved = sum(projected_to_end(run, costs[run.path], "cpu") for run in runs if run.final_state() == "pruned")
    extra.update(sweep_cpu_h=used / 3600, saved_cpu_h=saved / 3600, saved_share=saved / (used + saved) if used else 0.0)
    report("sweep_smoke", rows, extra)


if __name__ == "__main__":
    main()
