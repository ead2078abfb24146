"""At most once under any concurrency (launch/dispatch.py `claimed`): submits of the same run or
sweep that race give exactly one job per run, on the local backend. The race is made certain: the
test holds the runs' claims while every submitter starts, decides that the runs need a job and
queues on the claim (seen in /proc/locks); then it lets them go. Without the check under the claim
each of them would submit. (bench/submit_races.py runs 20 unforced races; tests/test_sweep_slurm.py
races on SLURM.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.dispatch import CLAIMS_DIR, claimed, still_as_decided
from launch.plan import plan_sweep
from launch.rundir import RunDirectory, run_id
from launch.runstate import reconcile
from launch.submit import prepare
from launch.sweeps.expand import load_sweep
from testkit.launching import SUBMIT, TINY, job_counts, merged, race, wait_finished

REPO = Path(__file__).resolve().parents[1]


def run_overrides(videos: Path, root: Path) -> list[str]:
    return merged(
        *TINY,
        "cluster=local",
        f"data.root={videos}",
        f"output_root={root}",
        "schedule.total_steps=2",
        "schedule.warmup_steps=1",
        "checkpoint.every_steps=2",
    )


@pytest.mark.slow  # 2-3 submit processes and a tiny local training run: 30 s quiet, minutes busy
def test_three_submits_of_one_run_at_once_give_one_job(train_videos, tmp_path):
    argv = run_overrides(train_videos, tmp_path / "out")
    claim = tmp_path / "out" / CLAIMS_DIR / f"{run_id(prepare(argv, REPO))}.lock"
    outputs = race([[*SUBMIT, *argv, "--no-wait"]] * 3, [claim])
    assert sum("submitted local job" in out for out in outputs) == 1, outputs
    assert sum("another submit took this run meanwhile" in out for out in outputs) == 2, outputs
    assert list(job_counts(tmp_path / "out").values()) == [1]
    wait_finished(RunDirectory(next((tmp_path / "out").glob("*/run.json")).parent), timeout=300)


@pytest.mark.slow  # 2-3 submit processes and a tiny local training run: 30 s quiet, minutes busy
def test_two_submits_of_one_sweep_at_once_give_one_job_per_run(train_videos, tmp_path):
    root = tmp_path / "out"
    common = [o for o in run_overrides(train_videos, root) if not o.startswith("experiment=")]
    sweep = tmp_path / "race.yaml"
    sweep.write_text(
        "experiment: smoke\nname: 'lr{optim.lr}'\n"
        f"overrides: {common!r}\n"
        "axes:\n  - key: optim.lr\n    values: [0.001, 0.002]\n"
    )
    claims = [root / CLAIMS_DIR / f"{run_id(row.run.cfg)}.lock" for row in plan_sweep(load_sweep(str(sweep)), [], REPO).rows]
    outputs = race([[*SUBMIT, f"sweep={sweep}", "--no-wait"]] * 2, claims)
    assert sum("submitted 2 run(s) of sweep race" in out for out in outputs) == 1, outputs
    assert sum("left alone: 2 run(s) another submit took meanwhile" in out for out in outputs) == 1, outputs
    assert sorted(job_counts(root).values()) == [1, 1]
    for run in root.glob("*/run.json"):
        wait_finished(RunDirectory(run.parent), timeout=300)


def test_a_submit_that_decided_before_another_recorded_its_job_sees_the_change(train_videos, tmp_path):
    """The check under the claim, without processes: a decision ("missing") taken before another
    submit created the run and recorded its job is no longer current."""
    cfg = prepare(run_overrides(train_videos, tmp_path / "out"), REPO)
    run = RunDirectory.for_config(cfg)
    decided = reconcile([run], tmp_path / "out")
    assert decided[0].state == "missing" and still_as_decided(decided, tmp_path / "out") == [None]
    with claimed([cfg]):
        run.create(cfg)
        run.record_submission("local", str(os.getpid()), "v", None)  # this process stands in for a live job
    now = still_as_decided(decided, tmp_path / "out")[0]
    assert now is not None and now.job_id == str(os.getpid())


def test_a_claim_excludes_another_process_until_released(train_videos, tmp_path):
    cfg = prepare(run_overrides(train_videos, tmp_path / "out"), REPO)
    claim = tmp_path / "out" / CLAIMS_DIR / f"{run_id(cfg)}.lock"
    with claimed([cfg]):
        probe = [
            sys.executable,
            "-c",
            f"import fcntl; f = open({str(claim)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        ]
        assert subprocess.run(probe, capture_output=True).returncode != 0  # BlockingIOError: held
    assert subprocess.run(probe, capture_output=True).returncode == 0
