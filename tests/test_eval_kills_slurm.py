"""Evaluation jobs killed on the real local SLURM cluster: each evaluation must still get its record
with no manual step at all (not even a status call), and its checkpoint's pin must be released. The
killed evaluation is the run's last milestone's, so no later milestone comes to recover it: the
watcher job (launch/advance.py, afterany on the evaluation jobs) does.

    scancel          the job is cancelled: the evaluation is lost; the watcher resubmits it
    time limit       the job overruns evaluation.time_minutes (its rank is frozen) and SLURM ends it:
                     lost; the watcher resubmits it
    stop signal      SIGUSR2 to the batch shell (what a preemption sends): the evaluation stops, its
                     teardown requeues the same job, which records it
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario

from launch.evaluations.claims import submission
from launch.evaluations.recovery import evaluation_states
from launch.postmortem import live_job
from launch.status import main as status
from testkit.chaos import rank_process
from testkit.launching import Driver, explain, only_run, run_command, submit, wait_finished, wait_for

pytestmark = pytest.mark.slurm


def smoke(tmp_path: Path, root: Path, *extra: str) -> list[str]:
    return [
        "experiment=smoke",
        "cluster=slurm",
        f"output_root={root}",
        f"data.root={tmp_path / 'videos'}",
        "data.synthetic_videos=16",
        "data.num_workers=0",
        "evaluation.tasks=[davis]",
        f"evaluation.data_roots.davis={tmp_path / 'davis'}",
        "evaluation.cpus_per_task=1",
        "cluster.cpus_per_task=1",
        "schedule.total_steps=4",
        "schedule.warmup_steps=2",
        "checkpoint.every_steps=2",
        "checkpoint.milestone_every_steps=4",
        "checkpoint.initial_milestone=false",  # one evaluation per run: the one this test kills
        *extra,
    ]


def evaluation_job(root: Path) -> str | None:
    """The job id the evaluation's claim names once it is running (its rank process exists)."""
    run = only_run(root)
    claims = list(run.path.glob("evals/step_*/*/submitted.json"))
    job = submission(claims[0].parent).job_id if claims else None
    if not job or live_job(job).get("JobState") != "RUNNING":
        return None
    try:
        rank_process(job, 0)
    except LookupError:
        return None
    return job


def act(root: Path, what: str) -> str:
    """Kill the evaluation job as `what` says; returns its id (a resubmission may replace it at once)."""
    job = evaluation_job(root)
    if what == "scancel":
        subprocess.run(["scancel", job], check=True)
    elif what == "freeze":  # an evaluation that takes longer than its time limit
        os.kill(rank_process(job, 0), signal.SIGSTOP)
    else:
        subprocess.run(["scancel", "--batch", "--signal=USR2", job], check=True)
    return job


@slurm_scenario
def killed_evaluations(env: ScenarioEnv) -> None:
    tmp_path = env.tmp
    cases = {
        "scancel": (),
        "freeze": ("evaluation.time_minutes=2", "evaluation.signal_delay_s=15"),  # its resubmission runs under it too
        "usr2": (),
    }
    roots, drivers = {}, {}
    for what, extra in cases.items():
        roots[what] = tmp_path / what
        rc, out = submit(smoke(tmp_path, roots[what], *extra))
        assert rc == 0, out
        root = roots[what]
        drivers[what] = Driver(
            root, lambda r, root=root: evaluation_job(root) is not None, lambda r, w=what, root=root: act(root, w), poll_s=0.2
        )
    first_jobs = {}
    for what, root in roots.items():
        first_jobs[what] = drivers[what].result()
        wait_finished(only_run(root), timeout=900)
    for what, root in roots.items():
        run = only_run(root)
        wait_for(
            lambda r=run: evaluation_states([r])[0].state in ("recorded", "failed"),
            1200,
            f"{what}: a record",
            lambda r=run: explain(r),
        )
        (state,) = evaluation_states([run])
        assert state.state == "recorded", (what, state, explain(run))
        assert not list(run.path.glob("checkpoints/pins/*")), what  # released
        claim = submission(state.directory)
        if what == "usr2":  # requeued by its own teardown: the same job, restarted once
            assert claim.job_id == first_jobs[what] and claim.lost == []
            assert live_job(first_jobs[what]).get("Restarts") == "1" and not (state.directory / "stopped.json").exists()
        else:  # resubmitted by the watcher job, with no manual step
            assert claim.lost == [first_jobs[what]] and claim.job_id != first_jobs[what], claim
            watchers = list(run.path.glob("evals/.jobs/watchers/*/*_log.out"))
            assert any("resubmitted lost evaluation" in w.read_text() for w in watchers), explain(run)
        rc, printed = run_command(status, [str(root), "--no-advance"])
        assert rc == 0 and "stopped, requeued" not in printed and " 1/1 " in printed, printed


def test_killed_evaluation_jobs_get_their_records_and_release_their_pins(killed_evaluations):
    killed_evaluations.result()
