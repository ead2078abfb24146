"""Launcher latency on the real local SLURM cluster (started here in a temporary state dir):
submit -> RUNNING, and after a cooperative stop (scancel --signal=USR2) the time from the attempt's
end to RUNNING again, plus the steps lost to it.

    python bench/launch_latency.py [--repeats 2]

Targets: submit to running under 2 s; requeue to running again under 10 s; 0 steps lost.
Needs root and the SLURM Debian packages (python -m localslurm install).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report  # noqa: E402
from launch.status import find_runs  # noqa: E402
from launch.submit import main as submit  # noqa: E402
from localslurm.cluster import LocalSlurmCluster  # noqa: E402
from rsp.synthetic import generate_dataset  # noqa: E402


def scheduler_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def poll(predicate, timeout: float = 300, every: float = 0.05) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(every)
    raise TimeoutError("condition not met")


def one_run(tmp: Path, videos: Path, i: int) -> dict:
    root = tmp / f"runs{i}"
    args = [
        "experiment=smoke",
        "cluster=slurm",
        "evaluation.tasks=[]",
        f"data.root={videos}",
        "data.synthetic_videos=0",
        "data.num_workers=0",
        "model.img_size=32",
        "data.batch_size=2",
        "data.max_gap=8",
        "schedule.total_steps=400",
        "checkpoint.every_steps=100",
        "checkpoint.milestone_every_steps=0",
        f"output_root={root}",
        "cluster.cpus_per_task=1",
        f"runtime.seed={i}",
    ]
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        assert submit(args) == 0
    returned = time.time()
    [run] = find_runs(root, sweep=None)  # one config, one run directory
    job = run.last_submission().job_id
    running = poll(lambda: scheduler_state(job) == "RUNNING")
    poll(lambda: run.latest_logged_step() >= 5)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    poll(lambda: len(run.attempts()) >= 1 and run.attempts()[0].end_time is not None)
    ended = run.attempts()[0].end_time
    poll(lambda: scheduler_state(job) in ("PENDING", "") or len(run.attempts()) >= 2, every=0.02)
    running_again = poll(lambda: scheduler_state(job) == "RUNNING" or len(run.attempts()) >= 2, every=0.02)
    poll(lambda: run.status() is not None, timeout=600)
    attempts = run.attempts()
    return {
        "run": i,
        "submit_returns_s": returned - start,
        "submit_to_running_s": running - start,
        "attempt_end_to_running_s": running_again - ended,
        "stop_reason": attempts[0].end_reason,
        "steps_lost": max(0, (attempts[0].end_step or 0) - attempts[1].start_step),
        "final": run.final_state(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="rsp-bench-") as tmp:
        tmp = Path(tmp)
        cluster = LocalSlurmCluster(tmp / "slurm")
        cluster.start()
        os.environ.update(cluster.env)
        try:
            generate_dataset(tmp / "videos", 8, height=64, width=80, num_frames=40)
            rows = [one_run(tmp, tmp / "videos", i) for i in range(args.repeats)]
        finally:
            cluster.stop()
    report("launch_latency", rows, {"targets": {"submit_to_running_s": "< 2", "requeue_to_running_s": "< 10", "steps_lost": 0}})


if __name__ == "__main__":
    main()
