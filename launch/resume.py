"""Resubmit runs that resume from their newest checkpoint, whatever their recorded state: what the
asynchronous promotion runtime (launch/sweeps/async_rungs.py) runs for a paused run it promoted.
Its caller decides, under the sweep's lock, that the run is to go on; this step clears the run's
`paused` status and submits it to the backend of its last submission, with its own configuration
(run.json), holding the run's submit claim (launch/dispatch.py).

    python -m launch.resume RUN_DIR [RUN_DIR ...]      # prints "resubmitted RUN as job ID" per run
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from launch.backends import LOCAL_SLOTS, backend_class
from launch.dispatch import claimed, resources_for, submit_runs
from launch.rundir import RunDirectory


def resume(run: RunDirectory, after: Sequence[str] = ()) -> str:
    """Clear the run's status (paused) and submit it again; returns the new job id. On a backend
    that holds jobs for others (SLURM), the new job starts only after the run's last job ended
    (afterany): the paused job's teardown may still be closing its attempt; and after `after` (the
    job whose slot of the sweep's array it takes: launch/sweeps/slots.py). On the local backend it
    waits for one of the slots of the run's first submission (the sweep's array_parallelism)."""
    cfg = run.config()
    resources = resources_for(cfg)
    last = run.last_submission()
    slot_folder = None
    if last is not None and backend_class(last.backend).holds_for_dependencies:
        jobs = [last.job_id, *(j for j in after if j != last.job_id)]
        resources = dataclasses.replace(resources, dependency="afterany:" + ":".join(jobs))
    first = run.submissions()[0] if run.submissions() else None
    if first is not None and first.folder and backend_class(first.backend).shares_local_slots:
        slot_folder = Path(first.folder) / LOCAL_SLOTS
    with claimed([cfg]):
        run.clear_status()
        (job_id,) = submit_runs([cfg], [run], [resources], run.backend(), Path(cfg.output_root), slot_folder)
    return job_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.resume", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--after", action="append", default=[], help="also wait for this job (afterany; repeatable)")
    ns = parser.parse_args(argv)
    for path in ns.runs:
        run = RunDirectory(path)
        print(f"resubmitted {run.path.name} as job {resume(run, ns.after)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
