"""The first code of every task of a SLURM training job: `srun ... python -u -m launch.start FOLDER`.

Stop signals are safe from the first instruction (docs/requeue.md). The batch script starts
Python with SIGUSR2 and SIGTERM blocked (coreutils `env --block-signal`, where it exists), so a
signal that arrives while the interpreter starts waits instead of killing the task; the first
lines below install handlers that only set this process's stop request, then unblock, which
delivers whatever arrived meanwhile. Only then is anything slow imported (submitit, the pickled
job, torch). TrainingJob reads the same stop request (rsp.lifecycle.early_stop_request).

The rest is submitit's job entry point (submitit.core.submission.process_job): load the pickled
call, run it, pickle its result or error next to it, without submitit's signal handlers, which
would checkpoint and requeue inside the handler; a signal landing between theirs and ours would
let submitit requeue by itself.
"""

from rsp.lifecycle import ignore_stop_signals, install_early_stop_signals

install_early_stop_signals()  # before anything slow: nothing above imports more than the standard library

import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

PICKLE_WAIT_S = 60  # submitit writes the pickle right after sbatch returns; a fast job may start first


def run_pickled_job(folder: str) -> None:
    # submitit, and through the pickle torch, only now: the stop handlers are in place
    from submitit.core import job_environment, utils

    os.environ["SUBMITIT_FOLDER"] = folder
    paths = job_environment.JobEnvironment().paths
    deadline = time.monotonic() + PICKLE_WAIT_S
    while not paths.submitted_pickle.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    delayed = utils.DelayedSubmission.load(paths.submitted_pickle)
    try:
        result = delayed.result()
    except Exception:
        with utils.temporary_save_path(paths.result_pickle) as tmp:
            utils.cloudpickle_dump(("error", traceback.format_exc()), tmp)
        raise
    with utils.temporary_save_path(paths.result_pickle) as tmp:
        utils.cloudpickle_dump(("success", result), tmp)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(f"usage: python -m launch.start SUBMITIT_FOLDER (got {argv})", file=sys.stderr)
        return 2
    try:
        run_pickled_job(argv[0])
    finally:
        ignore_stop_signals()  # the work is done (or failed): a late stop signal must not turn the exit into a kill
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
