"""What happens after an attempt ends: requeue it or declare the run over, by end reason.

Budgets are separate per reason (cluster.max_timeouts / max_preemptions / max_failures) and a
breaker stops a run whose last two attempts both failed at the same step (a crash that resuming
cannot fix, e.g. a corrupt input or a deterministic NaN).

On SLURM this runs as the batch script's teardown, after `srun` returns, whatever happened to the
ranks (cooperative stop, Python exception, kill -9, watchdog exit):

    python -m launch.requeue --folder <submitit folder> --exit-code $?

It closes the attempt record if the job could not, decides, and calls `scontrol requeue` on its
own job (same job id, same run directory; the next attempt resumes from the newest valid
checkpoint). The local backend applies the same `decide()` in-process (launch/job.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.config import ClusterConfig
from launch.rundir import RUNS_FILE, Attempt, RunDirectory, prune_reason

log = logging.getLogger(__name__)

CATEGORY = {
    "timeout": "timeout",
    "preempted": "preemption",
    "stopped": "preemption",  # a stop signal from outside (e.g. scancel --signal=USR2): checkpoint and requeue
    "crashed": "failure",
    "interrupted": "failure",  # killed without a word: SIGKILL, node failure, external requeue
    "pruned": "preemption",  # stopped for a prune marker that --unprune removed since: carry on
}


@dataclass(frozen=True)
class Decision:
    requeue: bool
    reason: str
    final_state: str | None = None  # finished | failed when the run is over


def budget(cluster: ClusterConfig, category: str) -> int:
    return {"timeout": cluster.max_timeouts, "preemption": cluster.max_preemptions, "failure": cluster.max_failures}[category]


def decide(attempts: Sequence[Attempt], cluster: ClusterConfig, pruned: dict | None = None) -> Decision:
    """Requeue after the last (ended) attempt, or finish/fail/prune the run. `pruned`: the run's
    prune marker (RunDirectory.prune_marker): a pruned run is never requeued, however its last
    attempt ended (a stop signal or a crash may have beaten the prune request to it)."""
    last = attempts[-1]
    if last.end_reason == "finished":
        return Decision(False, f"finished at step {last.end_step}", "finished")
    if pruned is not None:
        return Decision(False, f"{prune_reason(pruned)}; stopped at step {last.end_step}, not requeued", "pruned")
    category = CATEGORY[last.end_reason]
    if category == "failure" and len(attempts) >= 2:
        before = attempts[-2]
        if CATEGORY.get(before.end_reason) == "failure" and before.end_step == last.end_step:
            return Decision(
                False,
                f"breaker: attempts {before.number} and {last.number} both failed at step {last.end_step}; "
                "resuming does not help (see their logs and errors)",
                "failed",
            )
    used = Counter(CATEGORY.get(a.end_reason) for a in attempts)[category]
    allowed = budget(cluster, category)
    if used > allowed:
        return Decision(False, f"{category} budget exhausted: {used} {category}s, cluster.max_{category}s={allowed}", "failed")
    return Decision(True, f"{last.end_reason} at step {last.end_step}: requeue ({category} {used} of {allowed})")


def slurm_job_id() -> str:
    """The id that `scontrol requeue` takes: <array job>_<task> inside an array, else the job id."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def attempt_key(job_id: str) -> str:
    return f"{job_id}/{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def finalize_attempt(run: RunDirectory, job_id: str, exit_code: int) -> list[Attempt]:
    """Make sure the attempt that just ran has an end record: the job writes one unless it died
    (kill -9, watchdog exit, segfault) or never got as far as recording its start. Returns all of
    the run's attempts as now recorded (read once; updated in place)."""
    key = attempt_key(job_id)
    attempts = run.attempts()
    step = run.last_checkpoint_step() or 0
    if not attempts or attempts[-1].key != key:
        attempts.append(run.begin_attempt(job_id, key, [], step, previous=attempts))
    last = attempts[-1]
    if last.end_reason is None:
        run.end_attempt(
            last, "crashed", step, exit_code=exit_code, error=f"ranks exited with status {exit_code} before recording an end"
        )
    return attempts


def apply(run: RunDirectory, decision: Decision, requeue_command: list[str] | None) -> None:
    log.info("run %s: %s", run.path.name, decision.reason)
    if decision.requeue:
        if requeue_command:
            subprocess.run(requeue_command, check=True, timeout=60)
        return
    marker = run.prune_marker() if decision.final_state == "pruned" else None
    run.set_status(decision.final_state or "failed", decision.reason, **({"pruned": marker} if marker else {}))


def run_of_this_job(folder: Path) -> RunDirectory:
    """The run directory of this (array task of a) job, from the folder's runs.json."""
    runs = json.loads((folder / RUNS_FILE).read_text())
    return RunDirectory(runs[int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SLURM teardown: record the attempt's end and requeue or finish the run")
    parser.add_argument("--folder", required=True, help="submitit folder of the job")
    parser.add_argument("--exit-code", type=int, required=True, help="srun's exit status")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s requeue %(levelname)s: %(message)s")
    job_id = slurm_job_id()
    run = run_of_this_job(Path(args.folder))
    attempts = finalize_attempt(run, job_id, args.exit_code)
    decision = decide(run.policy_attempts(attempts), run.config().cluster, run.prune_marker())
    apply(run, decision, ["scontrol", "requeue", job_id])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
