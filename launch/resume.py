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

from launch.backends import backend_class
from launch.dispatch import claimed, resources_for, submit_runs
from launch.rundir import RunDirectory


def resume(run: RunDirectory) -> str:
    """Clear the run's status (paused) and submit it again; returns the new job id. On a backend
    that holds jobs for others (SLURM), the new job starts only after the run's last job ended
    (afterany): the paused job's teardown may still be closing its attempt."""
    cfg = run.config()
    resources = resources_for(cfg)
    last = run.last_submission()
    if last is not None and backend_class(last.backend).holds_for_dependencies:
        resources = dataclasses.replace(resources, dependency=f"afterany:{last.job_id}")
    with claimed([cfg]):
        run.clear_status()
        (job_id,) = submit_runs([cfg], [run], [resources], run.backend(), Path(cfg.output_root))
    return job_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.resume", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories")
    for path in parser.parse_args(argv).runs:
        run = RunDirectory(path)
        print(f"resubmitted {run.path.name} as job {resume(run)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
