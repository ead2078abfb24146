"""Concurrent submits of the same run: 0 duplicate jobs in 20 races (target), unforced.

    python bench/submit_races.py [--races 20] [--racers 2] [--backend local]

Each race starts `--racers` `launch/submit.py` processes with the same tiny run (2 steps, its own
output root) at the same moment, with `--no-wait`, then counts the jobs recorded for the run and
waits for the run to finish before the next race. A loser that says "another submit took this run
meanwhile" decided while the winner was submitting: a real race, which without the claim
(launch/dispatch.py `claimed`) would have given a second job; one that says "nothing submitted"
came after the winner had recorded its job. Nothing forces the overlap (tests/test_submit_races.py
does); the table says how many races overlapped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report  # noqa: E402
from rsp.synthetic import generate_dataset  # noqa: E402
from testkit.launching import REPO, SUBMIT, TINY, job_counts, merged  # noqa: E402

RUN = merged(*TINY, "schedule.total_steps=2", "schedule.warmup_steps=1", "checkpoint.every_steps=2")


def one_race(videos: Path, root: Path, racers: int, backend: str) -> dict:
    argv = [*SUBMIT, *RUN, f"cluster={backend}"]
    argv += [f"data.root={videos}", f"output_root={root}", "--no-wait"]
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(racers)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    seconds = time.perf_counter() - start
    runs = [p.parent for p in root.glob("*/run.json")]
    jobs = sum(job_counts(root).values())
    deadline = time.monotonic() + 600
    while runs and not (runs[0] / "status.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    return {
        "runs": len(runs),
        "jobs": jobs,
        "submitted": sum("submitted" in o and "nothing submitted" not in o for o in outputs),
        "overlapped": sum("another submit took this run meanwhile" in o for o in outputs),
        "came_late": sum("nothing submitted:" in o and "meanwhile" not in o for o in outputs),
        "failed": sum(p.returncode != 0 for p in procs),
        "submit_s": round(seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--races", type=int, default=20)
    p.add_argument("--racers", type=int, default=2)
    p.add_argument("--backend", default="local", choices=("local", "slurm"))
    args = p.parse_args()
    if args.races < 1 or args.racers < 2:
        p.error(f"--races ({args.races}) must be >= 1 and --racers ({args.racers}) >= 2 (a race needs two submits)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        generate_dataset(videos, 8, num_classes=2, height=64, width=80, num_frames=40, keyint=30)
        for i in range(args.races):
            rows.append({"race": i, **one_race(videos, Path(tmp) / f"race{i}", args.racers, args.backend)})
            print(rows[-1], flush=True)
    duplicates = sum(max(0, r["jobs"] - r["runs"]) for r in rows)
    extra = {
        "races": args.races,
        "racers": args.racers,
        "backend": args.backend,
        "duplicate_jobs": duplicates,
        "races_with_exactly_one_job": sum(r["jobs"] == 1 == r["runs"] for r in rows),
        "races_that_overlapped": sum(r["overlapped"] > 0 for r in rows),
        "load": os.getloadavg()[0],
    }
    report("submit_races", rows, extra)


if __name__ == "__main__":
    main()
