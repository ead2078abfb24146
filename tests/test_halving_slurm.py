"""Successive halving on the real local SLURM cluster: a 3-run sweep with one rung, its evaluation
jobs on SLURM, the decision made by the evaluation job that completes the rung, the right run
stopped cooperatively with its checkpoints kept, a resubmission that starts nothing, costs that
agree with sacct and the attempt records, and --unprune resuming the run bitwise.

The runs must still be training when the rung is decided, as on a real cluster, where a rung's
evaluations take a small part of the training. Rather than train on through the evaluations (CPU
the machine's two cores need for them), each training job is suspended (`scontrol suspend`) once
it has handed its rung over to evaluation and resumed once the rung is decided: still running,
with no step trained meanwhile."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario

from eval.records import parse_record
from launch.config import train_config
from launch.cost import accounting, evaluation_jobs, run_cost
from launch.rundir import RunDirectory
from launch.status import render
from launch.steplog import read_trace
from launch.sweeps.rungs import Decision, SweepDirectory, record_dir
from testkit.launching import explain, halving_sweep_file, job_id, sacct_rows, squeue_ids, submit, wait_for
from testkit.training import assert_same_training_state

pytestmark = pytest.mark.slurm

# The rung is the only milestone before the end (STEPS < 2 x RUNG; no step-0 milestone: SLURM_RUN).
# STEPS - RUNG is the margin a job trains on before it is suspended: it must outlast the milestone
# hook (a subprocess that queues the rung's evaluation and its watcher, 1-8 s on a busy machine) and
# a poll, at ~0.3-2.5 s a step; the jobs were suspended 2 steps past the rung, with two CPU hogs too.
STEPS, RUNG = 70, 40
SLURM_RUN = ("model.img_size=64", "data.batch_size=8", "checkpoint.initial_milestone=false")
LRS = (0.0001, 0.001, 0.01)


def runs_of(root: Path) -> list[RunDirectory]:
    return [RunDirectory(p.parent) for p in sorted(root.glob("*/run.json"))]


def handed_over(run: RunDirectory) -> bool:
    """The run's rung evaluation is queued and its milestone hook has ended: its training job holds
    nothing the rung's decision waits for (a frozen hook could hold a lock or an unsent sbatch)."""
    claims = [claim for directory, claim in evaluation_jobs(run) if directory.parent.name == f"step_{RUNG:08d}"]
    hook = subprocess.run(["pgrep", "-f", f"launch.evaluations schedule .*{run.path.name}"], capture_output=True)
    return bool(claims) and all(claim.job_id for claim in claims) and hook.returncode == 1


def last_step(run: RunDirectory) -> int:
    trace = read_trace(run.step_log_path(run.attempts()[-1]))
    return trace.last[0] if trace else -1


def suspend(run: RunDirectory) -> None:
    done = subprocess.run(["scontrol", "suspend", job_id(run)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"scontrol suspend {job_id(run)}: {done.stderr}\n{explain(run)}"


def suspend_after_rung(runs: list[RunDirectory], timeout: float) -> dict[str, int]:
    """Suspend each run's training job as soon as it has handed its rung over (SIGSTOP to its
    processes; SLURM frees its CPUs, and neither its time limit nor sacct's Elapsed counts the
    time); returns the step each one had reached by then."""
    reached: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(reached) < len(runs):
        for run in runs:
            if run.path.name not in reached and handed_over(run):
                suspend(run)
                reached[run.path.name] = last_step(run)
                assert reached[run.path.name] < STEPS, f"trained to the end before it was suspended\n{explain(run)}"
        assert time.monotonic() < deadline, f"runs not at their rung after {timeout:.0f} s\n" + "\n".join(map(explain, runs))
        time.sleep(0.2)
    return reached


def sacct_cpu_seconds(job_ids: list[str]) -> float:
    """sacct's own CPU time (AllocCPUS x Elapsed) of every allocation of these jobs."""
    return sum(int(cpu) for _, cpu in sacct_rows(job_ids, "JobID,CPUTimeRAW") if cpu.isdigit())


@slurm_scenario
def pruned_sweep(env: ScenarioEnv) -> RunDirectory:
    """The sweep end to end, through the unpruned run's end; returns that run (pooled: runs in a thread)."""
    tmp_path = env.tmp
    root = tmp_path / "runs"
    sweep_file = halving_sweep_file(tmp_path, env.videos, root, "slurm", STEPS, RUNG, LRS, extra=SLURM_RUN)
    rc, out = submit([f"sweep={sweep_file}"])
    assert rc == 0 and "submitted 3 run(s) of sweep halving_test as 1 slurm submission(s)" in out, out
    runs = runs_of(root)
    directory = SweepDirectory(root, "halving_test")
    try:
        reached = suspend_after_rung(runs, 1500)
        print(f"[halving] suspended at steps {sorted(reached.values())} (rung {RUNG}, end {STEPS})")
        wait_for(
            lambda: directory.decision_path(RUNG).is_file(),
            1500,
            "the rung to be decided",
            lambda: render(root, "halving_test") + "\n" + "\n".join(explain(r) for r in runs),
        )
        decision = Decision.read(directory.decision_path(RUNG))
        # the deciders write the prune marker after the decision: the pruned run sees it on resuming
        wait_for(lambda: all(r.is_pruned() for r in runs if r.info().run_id in decision.pruned), 300, "the prune marker")
    finally:  # no job stays suspended, even when the scenario fails (every run must end below)
        for run in runs:
            subprocess.run(["scontrol", "resume", job_id(run)], capture_output=True, timeout=60)

    # The right run: the lowest J&F at the rung, read from the records themselves.
    values = {r.info().run_id: parse_record(record_dir(r, RUNG, "davis") / "record.json").metrics["J&F-Mean"] for r in runs}
    worst = min(values, key=values.get)
    assert {e.run_id: e.value for e in decision.ranking} == values
    assert decision.pruned == [worst] and sorted(decision.kept) == sorted(set(values) - {worst}), (decision, values)
    # decided on the cluster, with no status call: by the evaluation job that wrote the rung's last
    # record, or by a watcher job (launch/advance.py) of another run that saw that record first
    assert decision.decided_by.role.startswith(("evaluation job", "watcher job")), decision.decided_by
    last_record = max(parse_record(Path(e.record)).created for e in decision.ranking)
    print(f"[halving] decision {decision.time - last_record:.1f} s after the rung's last record")

    by_id = {r.info().run_id: r for r in runs}
    pruned = by_id[worst]
    wait_for(lambda: all(r.status() is not None for r in runs), 1500, "every run to end", lambda: "\n".join(map(explain, runs)))
    assert {r.info().run_id: r.final_state() for r in runs} == {rid: "pruned" if rid == worst else "finished" for rid in by_id}, (
        "\n".join(map(explain, runs))
    )
    attempts = pruned.attempts()
    stopped_at = attempts[-1].end_step
    assert attempts[-1].end_reason == "pruned" and RUNG <= stopped_at < STEPS, explain(pruned)
    steps = [m.step for m in pruned.manifests()]
    assert RUNG in steps and steps[-1] == stopped_at  # the rung's milestone and the stop's checkpoint are kept
    assert (pruned.path / "checkpoints" / f"step_{stopped_at:08d}.pt").is_file()
    print(f"[halving] pruned run stopped {attempts[-1].end_time - pruned.prune_marker().time:.1f} s after its marker")

    before = squeue_ids(root, evaluations=False)
    rc, out = submit([f"sweep={sweep_file}"])
    assert rc == 0 and "nothing to submit" in out and "submit 0, retry 0, nothing 3" in out, out
    assert not squeue_ids(root, evaluations=False) - before and len(pruned.submissions()) == 1

    # Costs: sacct's own AllocCPUS x Elapsed, attempt by attempt, and the records' cost to each checkpoint.
    # A run's status is written by its job's teardown, seconds before SLURM closes the allocation:
    # compare once sacct has an end for every allocation (its figures are final then).
    wait_for(
        lambda: all(a.end is not None for rows in accounting(runs).values() for a in rows),
        300,
        "sacct to close every allocation",
        lambda: str(accounting(runs)),
    )
    allocations = accounting(runs)
    table = render(root, "halving_test")
    assert "CPU-h" in table and f"pruned@{RUNG}" in table and "pruning saved ~" in table, table
    for run in runs:
        cost = run_cost(run, allocations)
        training_jobs = [s.job_id for s in run.submissions()]
        assert abs(cost.train_s("cpu") - sacct_cpu_seconds(training_jobs)) <= 0.01 * sacct_cpu_seconds(training_jobs)
        assert [c.number for c in cost.attempts] == [a.number for a in run.attempts()]
        assert all(c.cpus == a.alloc["cpus"] >= 1 for c, a in zip(cost.attempts, run.attempts(), strict=True))
        for c, a in zip(cost.attempts, run.attempts(), strict=True):  # sacct's allocation holds the attempt
            (held,) = (x for x in allocations[c.job_id] if x.start == c.start)  # its End: Elapsed leaves out suspension
            assert c.start <= a.start_time and a.end_time <= held.end + 5
        record = parse_record(record_dir(run, RUNG, "davis") / "record.json")
        created = next(m.created for m in run.manifests() if m.step == RUNG)
        assert record.training_cost["source"] == "sacct"
        assert record.training_cost["cpu_hours"] == pytest.approx((created - cost.attempts[0].start) / 3600, rel=0.01)
        assert cost.eval_s("cpu") > 0  # its evaluation jobs, from their sacct allocations

    rc, out = submit([f"sweep={sweep_file}", "--unprune", pruned.info().name])
    assert rc == 0 and "unpruned" in out and "submitted 1 run(s)" in out, out
    wait_for(lambda: pruned.final_state() == "finished", 1200, "the unpruned run to finish", lambda: explain(pruned))
    resumed = pruned.attempts()[-1]
    assert resumed.start_step == stopped_at and resumed.end_reason == "finished"  # from its checkpoint, no step lost
    return pruned


def test_a_pruned_sweep_stops_the_right_run_keeps_it_and_unprune_resumes_it_bitwise(pruned_sweep, reference_runs):
    unpruned = pruned_sweep.result()
    assert_same_training_state(unpruned.path, reference_runs.get(train_config(unpruned.config())))
