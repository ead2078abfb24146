"""The launcher against the real local SLURM cluster (started once per session by tests/conftest.py).

The runs are submitted together when the suite's SLURM tests start (the pooled scenario `launch_runs`,
tests/slurm_pool.py) and run concurrently on the two fake nodes with the other pooled scenarios; each
test then waits for its own run. Preemption preempts every job of the preemptible partition, so it
runs last, alone (`cluster_wide`). Exactness is checked against uninterrupted reference runs of the
same training config, bitwise (trained once per pytest run: `reference_runs`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario

from launch.config import train_config
from launch.rundir import RunDirectory
from launch.submit import main as submit_main
from testkit.chaos import last_logged_step, rank_exists, rank_process
from testkit.launching import (
    Driver,
    explain,
    hydra_quote,
    job_id,
    only_run,
    overrides,
    run_command,
    squeue_ids,
    steps_lost,
    submit,
    wait_finished,
    wait_for,
)
from testkit.training import assert_same_training_state

pytestmark = pytest.mark.slurm
# Steps: a run still training when the test interferes with it (~10 s here after the interference at
# step 3 or at its first checkpoint, EVERY; the signals and kills land within a second or two). Every
# step of these runs is paid twice, by the job and by its reference: the suite's largest CPU item.
# testkit/chaos.py's runs train the same 150 steps, so their references are these.
LONG, EVERY = 150, 25
# The upstream run must outlast its resubmission, which waits for the main thread (testkit.launching.run_command)
# while that thread may be training a reference: its job is suspended meanwhile (scontrol suspend) and
# resumed as the resubmission starts, with ~200 steps (10-40 s) left to outlast it.
UPSTREAM = 200
WORKERS = ("data.num_workers=2", "data.prefetch_factor=1")  # loader workers: the scheduler's signals reach them too


@slurm_scenario
def launch_runs(env: ScenarioEnv) -> dict:
    """Submit the concurrent runs and start their drivers; returns their output roots and drivers."""
    base, train_videos = env.tmp, env.videos
    plan = {
        "single": overrides(train_videos, base / "single", 12, 4),
        "two_nodes": overrides(train_videos, base / "two_nodes", 12, 4, "cluster.nodes=2"),
        "usr2": overrides(train_videos, base / "usr2", LONG, EVERY),
        "startup_usr2": overrides(train_videos, base / "startup_usr2", 40, 10, "model.kl_scale=0.02"),
        "requeue": overrides(train_videos, base / "requeue", LONG, EVERY, *WORKERS),
        "kill9": overrides(train_videos, base / "kill9", LONG, EVERY, "cluster.nodes=2"),  # same training as "preempt"
        "timeout": overrides(train_videos, base / "timeout", 600, 100, "cluster.time_minutes=1", "cluster.signal_delay_s=45"),
        "upstream": overrides(train_videos, base / "upstream", UPSTREAM, 100),
    }
    interventions = {  # name -> (ready(run), action(run), poll_s)
        "usr2": (lambda r: r.latest_logged_step() >= 3, scancel_usr2, 1.0),
        # the moment the rank's Python exists: it is starting and importing
        "startup_usr2": (lambda r: r.exists and rank_exists(job_id(r), 0, 0), scancel_usr2, 0.05),
        "requeue": (
            trained_checkpoint,
            lambda r: subprocess.run(["scontrol", "requeue", job_id(r)], check=True),
            1.0,
        ),  # workers run
        "kill9": (trained_checkpoint, lambda r: os.kill(rank_process(job_id(r), rank=1), signal.SIGKILL), 1.0),
        # resubmitted while it trains: the check has to happen then, not when its test runs
        "upstream": (lambda r: r.latest_logged_step() >= 1, lambda r: resubmit_while_running(r, plan["upstream"]), 1.0),
    }
    roots, drivers = {}, {}
    for name, args in plan.items():
        rc, out = submit(args)
        assert rc == 0 and "submitted slurm job" in out, out
        roots[name] = Path([a for a in args if a.startswith("output_root=")][0].split("=", 1)[1])
        if name in interventions:  # at once: the next submits may wait for the main thread (testkit.launching)
            ready, action, poll_s = interventions[name]
            drivers[name] = Driver(roots[name], ready, action, poll_s=poll_s)
    return {"roots": roots, "drivers": drivers}


def resubmit_while_running(run: RunDirectory, args: list[str]) -> tuple:
    """(the run's status then, the resubmission's exit status and output). The job waits suspended
    until the main thread takes the resubmission, then runs again while it is made."""
    subprocess.run(["scontrol", "suspend", job_id(run)], check=True, capture_output=True, timeout=60)
    status_then = run.status()

    def resumed_then_submitted(argv: list[str]) -> int:
        subprocess.run(["scontrol", "resume", job_id(run)], check=True, capture_output=True, timeout=60)
        return submit_main(argv)

    return (status_then, *run_command(resumed_then_submitted, args))


def scancel_usr2(run: RunDirectory) -> None:
    subprocess.run(["scancel", "--signal=USR2", job_id(run)], check=True)


@pytest.fixture(scope="module")
def submitted(launch_runs) -> dict:
    return launch_runs.result()


def trained_checkpoint(run: RunDirectory) -> bool:
    """A checkpoint after the first step exists (step 0, the initialization, is committed before training)."""
    return any(m.step > 0 for m in run.manifests())


def reference(run: RunDirectory, reference_runs) -> Path:
    """The same training config trained uninterrupted in this process (one rank)."""
    return reference_runs.get(train_config(run.config()))


def reference_two_ranks(run: RunDirectory, reference_runs) -> Path:
    """The same training config trained uninterrupted with two ranks under torchrun."""
    return reference_runs.get(train_config(run.config()), ranks=2, timeout=600)


def test_single_node_run_finishes_and_resubmitting_starts_nothing(submitted, reference_runs):
    run = only_run(submitted["roots"]["single"])
    wait_finished(run)
    attempts = run.attempts()
    assert [a.end_reason for a in attempts] == ["finished"] and attempts[0].exit_code == 0
    before = squeue_ids(submitted["roots"]["single"], evaluations=False)
    rc, out = submit(overrides(run.config().data.root, submitted["roots"]["single"], 12, 4))
    assert rc == 0 and "nothing submitted" in out and "finished" in out and str(run.path) in out
    assert not squeue_ids(submitted["roots"]["single"], evaluations=False) - before and len(run.submissions()) == 1
    assert_same_training_state(run.path, reference(run, reference_runs))


def test_resubmitting_a_running_run_starts_nothing(submitted):
    run = only_run(submitted["roots"]["upstream"])
    status_then, rc, out = submitted["drivers"]["upstream"].result()
    if status_then is not None:
        pytest.fail(f"{run.path} ended before it could be resubmitted while running; make it longer")
    assert rc == 0 and "nothing submitted" in out and ("running" in out or "pending" in out), out
    assert len(run.submissions()) == 1


def test_two_node_gloo_ddp(submitted, reference_runs):
    run = only_run(submitted["roots"]["two_nodes"])
    wait_finished(run)
    state = run.checkpoints.load(run.checkpoints.manifests()[-1])
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert len(run.attempts()[0].hosts) == 2
    assert_same_training_state(run.path, reference_two_ranks(run, reference_runs))


def test_scancel_signal_usr2_stops_checkpoints_and_requeues(submitted, reference_runs):
    run = only_run(submitted["roots"]["usr2"])
    submitted["drivers"]["usr2"].result()
    wait_finished(run)
    attempts = run.attempts()
    assert attempts[0].end_reason in ("preempted", "stopped") and len(attempts) >= 2, explain(run)
    assert attempts[1].start_step == attempts[0].end_step > 0 and steps_lost(run) == 0
    assert_same_training_state(run.path, reference(run, reference_runs))


def test_a_stop_signal_while_the_ranks_start_is_a_stop_not_a_crash(submitted, reference_runs):
    run = only_run(submitted["roots"]["startup_usr2"])
    submitted["drivers"]["startup_usr2"].result()
    wait_finished(run)
    attempts = run.attempts()
    assert attempts[0].end_reason == "stopped" and attempts[0].stop_signal == "SIGUSR2", explain(run)
    assert attempts[0].stop_time - attempts[0].start_time < 5  # it came while Python started
    assert attempts[1].start_step == attempts[0].end_step and steps_lost(run) == 0, explain(run)
    assert_same_training_state(run.path, reference(run, reference_runs))


def test_external_scontrol_requeue_with_loader_workers_is_a_requeue_with_the_redone_steps_measured(submitted, reference_runs):
    run = only_run(submitted["roots"]["requeue"])
    submitted["drivers"]["requeue"].result()
    wait_finished(run)
    attempts = run.attempts()
    assert len(attempts) >= 2 and attempts[0].end_reason == "requeued", explain(run)
    assert "DataLoader worker" not in all_logs(run)
    assert attempts[1].start_step >= EVERY and attempts[0].end_step >= attempts[1].start_step
    assert last_logged_step(run, attempts[0].key) in (attempts[0].end_step, attempts[0].end_step - 1), explain(run)
    assert steps_lost(run) >= attempts[0].end_step - attempts[1].start_step  # the lost column counts what was redone
    assert_same_training_state(run.path, reference(run, reference_runs))


def test_kill_minus_9_of_one_rank_resumes_from_the_newest_valid_checkpoint(submitted, reference_runs):
    run = only_run(submitted["roots"]["kill9"])
    submitted["drivers"]["kill9"].result()
    wait_finished(run)
    attempts = run.attempts()
    assert attempts[0].end_reason == "interrupted" and attempts[-1].end_reason == "finished", explain(run)
    redone = attempts[0].end_step - attempts[1].start_step  # measured: the last step attempt 0 completed
    assert last_logged_step(run, attempts[0].key) in (attempts[0].end_step, attempts[0].end_step - 1), explain(run)
    assert redone >= 0 and steps_lost(run) == redone
    assert_same_training_state(run.path, reference_two_ranks(run, reference_runs))


def all_logs(run: RunDirectory) -> str:
    folder = Path(run.last_submission().folder)
    return "".join(p.read_text(errors="replace") for p in [*folder.glob("**/*_log.*"), *run.path.glob("logs/*/*.log")])


def test_time_limit_requeue_resumes_exactly(submitted, reference_runs):
    run = only_run(submitted["roots"]["timeout"])
    wait_finished(run, timeout=900)
    attempts = run.attempts()
    assert any(a.end_reason == "timeout" for a in attempts), explain(run)
    assert attempts[-1].end_reason == "finished" and steps_lost(run) == 0, explain(run)
    assert len({a.key for a in attempts}) == len(attempts) and len({a.job_id for a in attempts}) == 1  # same job id
    assert_same_training_state(run.path, reference(run, reference_runs))


def test_dependency_chain_waits_for_its_upstream_job(submitted, train_videos, tmp_path):
    upstream = only_run(submitted["roots"]["upstream"])
    root = tmp_path / "downstream"
    rc, out = submit(overrides(train_videos, root, 12, 4, f"cluster.after={job_id(upstream)}", "model.kl_scale=0.02"))
    assert rc == 0, out
    downstream = only_run(root)
    if upstream.status() is None:  # still running: the downstream job must be held back
        reason = subprocess.run(
            ["squeue", "-h", "-j", job_id(downstream), "-o", "%r"], capture_output=True, text=True
        ).stdout.strip()
        assert reason in ("Dependency", "None", ""), reason
    wait_finished(upstream)
    wait_finished(downstream)
    assert downstream.attempts()[0].start_time >= upstream.attempts()[-1].end_time


def test_names_and_paths_with_quotes_spaces_and_newlines(slurm_cluster, train_videos, tmp_path):
    root = tmp_path / 'it\'s a "root" with spaces'
    name = 'it\'s a "quoted"\nrun; echo pwned'
    args = overrides(train_videos, Path("PLACEHOLDER"), 4, 2)
    args = [a for a in args if not a.startswith("output_root=")]
    rc, out = submit([*args, f"output_root={hydra_quote(str(root))}", f"name={hydra_quote(name)}"])
    assert rc == 0, out
    run = only_run(root)
    wait_finished(run)
    assert run.info().name == name and "\n" not in run.path.name and "'" not in run.path.name
    assert not Path("pwned").exists() and not (root / "pwned").exists()
    rc, out = submit([*args, f"output_root={hydra_quote(f'{tmp_path}/line{chr(10)}break')}"])
    assert rc == 2 and "contains a line break" in out, out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["experiment=rsp_vitz_k400"], "experiment='rsp_vitz_k400' is not one of: cpu_study, natural_study, rsp_vitb16_k400"),
        (["model.kl_scal=0.1"], "did you mean model.kl_scale?"),
        (["cluster.nodes=3"], "SLURM rejects the requested resources"),
        (["cluster.cpus_per_task=64"], "SLURM rejects the requested resources"),
        (["data.root=/nonexistent/k400"], "data.root (/nonexistent/k400) does not exist"),
        (["output_root=/sys/rsp-runs"], "output_root (/sys/rsp-runs) is not writable"),
        (["cluster.after=abc"], "cluster.after ('abc') must be SLURM job ids"),
    ],
)
def test_bad_input_fails_at_submit_before_anything_is_queued(slurm_cluster, train_videos, tmp_path, extra, message):
    before = squeue_ids(tmp_path)
    rc, out = submit(overrides(train_videos, tmp_path / "bad", 4, 2, *extra))
    assert rc == 2 and message in out, out
    assert not squeue_ids(tmp_path) - before and not (tmp_path / "bad").exists()  # nothing new queued, nothing created


@pytest.mark.cluster_wide
def test_preemption_of_a_two_node_run_resumes_bitwise_identically(submitted, train_videos, tmp_path, reference_runs):
    """Last: it preempts everything on the preemptible partition."""
    for root in submitted["roots"].values():
        wait_finished(only_run(root), timeout=900)
    root = tmp_path / "preempt"
    rc, out = submit(overrides(train_videos, root, LONG, 2 * EVERY, "cluster.nodes=2"))
    assert rc == 0, out
    run = only_run(root)
    wait_for(lambda: run.latest_logged_step() >= 5, 300, "the run to train", lambda: explain(run))
    high = subprocess.run(
        ["sbatch", "--parsable", "-p", "high", "-N2", "-n16", f"--output={tmp_path / 'high-%j.out'}", "--wrap", "sleep 8"],
        capture_output=True,
        text=True,
        check=True,
    )
    wait_finished(run, timeout=600)
    attempts = run.attempts()
    assert attempts[0].end_reason == "preempted" and attempts[-1].end_reason == "finished", explain(run)
    assert steps_lost(run) == 0 and attempts[1].start_step == attempts[0].end_step
    state = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", high.stdout.strip(), "-o", "State"], capture_output=True, text=True
    ).stdout
    assert "COMPLETED" in state
    assert_same_training_state(run.path, reference_two_ranks(run, reference_runs))
