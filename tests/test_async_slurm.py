"""Asynchronous promotion on the real local SLURM cluster (issue 28's target): 8 runs as one job
array with array_parallelism=2. Every run stops at the first rung and ends `paused`, its array task
ending so the next task starts; the rule promotes the best early (after 4 values) and closes the rung
once all 8 reported, keeping 1 and pruning 7 where they wait; sacct shows no allocation of a run
while it is paused, and never more than 2 allocations of the sweep at once (array tasks and the
resubmitted job together: launch/sweeps/slots.py); at least 40% of the grid's training compute is
saved by sacct's own figures; and the run that finishes, resumed from its rung checkpoint, is
bitwise equal to the same run never stopped."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario

from launch.config import absolutize, compose, train_config
from launch.cost import accounting
from launch.rundir import PruneMarker, RunDirectory
from launch.slurm_queries import slurm_states
from launch.status import render
from launch.steplog import read_trace
from launch.sweeps.promotion import replay
from launch.sweeps.pruned_jobs import end_pruned_without_jobs
from launch.sweeps.rungs import Decision, SweepDirectory
from launch.sweeps.slots import array_of, read_records
from testkit.launching import explain, halving_sweep_file, most_at_once, submit, wait_for
from testkit.training import assert_same_training_state

pytestmark = pytest.mark.slurm

STEPS, RUNG = 320, 80  # the rung at a quarter of the run: a pruned run skips 3/4 of its steps
LRS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)
ASYNC = ", promotion: async, min_reports: 4"
KEEP = 0.125  # one run of eight goes on
# the step-0 milestone stays: without it the saving measured 39-44% against the 40% asserted
TINY_RUNS = ("cluster.array_parallelism=2", "checkpoint.every_steps=40", "evaluation.time_minutes=10")
TEARDOWN_S = 60  # a paused task's allocation ends this soon after its attempt (the teardown, on a busy machine)


def runs_of(root: Path) -> list[RunDirectory]:
    return [RunDirectory(p.parent) for p in sorted(root.glob("*/run.json"))]


def step_seconds(run: RunDirectory) -> float:
    """The run's seconds per training step, from its first attempt's step log (no start-up)."""
    trace = read_trace(run.step_log_path(run.attempts()[0]))
    (first_step, first_time), (last_step, last_time) = trace.first, trace.last
    return (last_time - first_time) / (last_step - first_step)


@slurm_scenario
def async_sweep(env: ScenarioEnv) -> tuple[RunDirectory, str]:
    """The sweep end to end; returns the run that finished and the status table (pooled: a thread)."""
    root = env.tmp / "runs"
    sweep_file = halving_sweep_file(env.tmp, env.videos, root, "slurm", STEPS, RUNG, LRS, ASYNC, TINY_RUNS)
    sweep_file.write_text(sweep_file.read_text().replace("keep: 0.5", f"keep: {KEEP}"))
    rc, out = submit([f"sweep={sweep_file}"])
    assert rc == 0 and "submitted 8 run(s) of sweep halving_test as 1 slurm submission(s)" in out, out
    runs = runs_of(root)
    directory = SweepDirectory(root, "halving_test")
    why = lambda: render(root, "halving_test") + "\n" + "\n".join(map(explain, runs))  # noqa: E731
    # The array's last two tasks are held until the early promotion has taken its slot, so that the
    # promotion meets an array with tasks left to run whatever the machine's load: on a busy machine
    # the evaluation jobs (queued behind the older array tasks) can otherwise lag the whole array.
    gated = [f"{array_of(runs[0])}_{task}" for task in (len(LRS) - 2, len(LRS) - 1)]
    subprocess.run(["scontrol", "hold", *gated], check=True, capture_output=True, timeout=60)
    try:
        promotion = directory.path / "promotion"
        wait_for(lambda: any(r.get("receiver_job") for r in read_records(promotion)), 1500, "the early promotion", why)
    finally:
        subprocess.run(["scontrol", "release", *gated], check=True, capture_output=True, timeout=60)
    wait_for(lambda: all(r.final_state() in ("finished", "pruned") for r in runs), 1500, "every run to end", why)

    # Every run paused at the rung; the close kept one and pruned seven.
    decision = Decision.read(directory.decision_path(RUNG))
    assert decision.live == 8 and len(decision.kept) == 1 and len(decision.pruned) == 7, decision
    assert all((r.attempts()[0].end_reason, r.attempts()[0].end_step) == ("paused", RUNG) for r in runs), why()
    states = {r.info().run_id: r.final_state() for r in runs}
    assert states == {rid: "finished" if rid in decision.kept else "pruned" for rid in states}, why()
    records = [json.loads(p.read_text()) for p in sorted((directory.path / "promotion" / "records").glob("*.json"))]
    assert all(replay(r).to_dict() == r["outcome"] for r in records), records
    (kept,) = (r for r in runs if r.info().run_id in decision.kept)

    # sacct: no allocation of a run while it is paused; each paused task's allocation ended with it.
    wait_for(lambda: all(a.end is not None for rows in accounting(runs).values() for a in rows), 300, "sacct to close", why)
    allocations = accounting(runs)
    used = grid = 0.0
    lags = []  # how long each paused task's allocation outlived its pause (the batch script's teardown)
    for run in runs:
        held = sorted((a for s in run.submissions() for a in allocations.get(s.job_id, [])), key=lambda a: a.start)
        attempts = run.attempts()
        assert len(held) == len(attempts), (run.path.name, held, attempts)
        for allocation, attempt, after in zip(held, attempts, [*held[1:], None], strict=True):
            if attempt.end_reason == "paused":
                lags.append(allocation.end - attempt.end_time)
                assert lags[-1] < TEARDOWN_S, (run.path.name, allocation, attempt)
                assert after is None or after.start >= allocation.end, (run.path.name, held)
        used += sum(a.elapsed_s * a.cpus for a in held)
        # the grid: this run's first allocation, then its remaining steps at its own step rate, no restart
        first = held[0]
        grid += first.elapsed_s * first.cpus + (STEPS - attempts[0].end_step) * step_seconds(run) * first.cpus
    saved = 1 - used / grid
    # array_parallelism holds at every moment, array tasks and resubmitted jobs together (the slot
    # hand-off of launch/sweeps/slots.py): never more than 2 of the sweep's allocations overlap
    held = [(a.start, a.end, a.job_id) for run in runs for s in run.submissions() for a in allocations.get(s.job_id, [])]
    peak, at = most_at_once([(start, end) for start, end, _ in held])
    hand_offs = [json.loads(p.read_text()) for p in sorted((directory.path / "promotion" / "slots").glob("*.json"))]
    print(f"[async] at most {peak} of the sweep's allocations at once; slot records: {hand_offs}")
    assert peak <= 2, (peak, time.ctime(at), sorted(held), hand_offs, why())
    # the early promotion (after 4 of 8 values) came while the array still had tasks to run: it took
    # a slot from the array, and every slot taken was given back by the end
    taken = [r["lane"] for r in hand_offs if r["kind"] == "handoff" and r["from_array"] and r["receiver_job"]]
    assert taken and sorted(taken) == sorted(x for r in hand_offs if r["kind"] == "return" for x in r["lanes"]), hand_offs
    print(f"[async] training CPU-s used {used:.0f} of the grid's ~{grid:.0f}: {100 * saved:.0f}% saved")
    print(f"[async] a paused task's allocation ended {max(lags):.1f} s after its pause at most (teardown)")
    assert saved >= 0.4, (used, grid, why())
    return kept, render(root, "halving_test")


def test_an_async_slurm_sweep_pauses_without_allocations_saves_compute_and_resumes_bitwise(async_sweep, reference_runs):
    kept, table = async_sweep.result()
    assert "paused@" not in table and f"pruned@{RUNG}" in table and "async promotion: promoted" in table, table
    assert "slot hand-offs: " in table, table
    resumed = kept.attempts()[-1]
    assert (resumed.start_step, resumed.end_reason, resumed.end_step) == (RUNG, "finished", STEPS), explain(kept)
    assert_same_training_state(kept.path, reference_runs.get(train_config(kept.config())))


def test_a_pruned_run_whose_job_waits_in_the_queue_is_cancelled_at_once(slurm_cluster, tmp_path):
    """The job is held in the queue (sbatch --hold), so it is queued when the prune lands."""
    cfg = absolutize(compose(["experiment=smoke", f"output_root={tmp_path / 'runs'}", "cluster=slurm"]), tmp_path)
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    held = ["sbatch", "--hold", "--parsable", "-o", str(tmp_path / "held.out"), "--wrap", "true"]
    job = subprocess.run(held, capture_output=True, text=True, check=True).stdout.strip()
    run.record_submission("slurm", job, "test", None)
    sweep = SweepDirectory(cfg.output_root, "queued")
    sweep.write_record(None, {run.info().run_id: run.path.name})
    run.mark_pruned(PruneMarker("queued", 20, 2, 2, "davis:J&F-Mean", "max", 1.0, "by hand", time.time()))

    assert end_pruned_without_jobs(sweep) == [f"{run.path.name} job {job}"]
    assert slurm_states([job])[job] == "CANCELLED" and run.final_state() == "pruned", run.status()
    assert end_pruned_without_jobs(sweep) == []  # once
