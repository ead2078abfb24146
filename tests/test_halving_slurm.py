"""Successive halving on the real local SLURM cluster: a 3-run sweep with one rung, its evaluation
jobs on SLURM, the decision made by the evaluation job that completes the rung, the right run
stopped cooperatively with its checkpoints kept, a resubmission that starts nothing, costs that
agree with sacct and the attempt records, and --unprune resuming the run bitwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario

from eval.records import parse_record
from launch.config import train_config
from launch.cost import accounting, run_cost
from launch.rundir import RunDirectory
from launch.status import render
from launch.sweeps.rungs import Decision, SweepDirectory, record_dir
from testkit.launching import explain, halving_sweep_file, sacct_rows, squeue_ids, submit, wait_for
from testkit.training import assert_same_training_state

pytestmark = pytest.mark.slurm

STEPS, RUNG = 240, 80  # the rung is the only milestone before the end; runs still train when it is decided
LRS = (0.0001, 0.001, 0.01)


def runs_of(root: Path) -> list[RunDirectory]:
    return [RunDirectory(p.parent) for p in sorted(root.glob("*/run.json"))]


def sacct_cpu_seconds(job_ids: list[str]) -> float:
    """sacct's own CPU time (AllocCPUS x Elapsed) of every allocation of these jobs."""
    return sum(int(cpu) for _, cpu in sacct_rows(job_ids, "JobID,CPUTimeRAW") if cpu.isdigit())


@slurm_scenario
def pruned_sweep(env: ScenarioEnv) -> RunDirectory:
    """The sweep end to end, through the unpruned run's end; returns that run (pooled: runs in a thread)."""
    tmp_path = env.tmp
    root = tmp_path / "runs"
    sweep_file = halving_sweep_file(tmp_path, env.videos, root, "slurm", STEPS, RUNG, LRS)
    rc, out = submit([f"sweep={sweep_file}"])
    assert rc == 0 and "submitted 3 run(s) of sweep halving_test as 1 slurm submission(s)" in out, out
    runs = runs_of(root)
    directory = SweepDirectory(root, "halving_test")
    wait_for(
        lambda: directory.decision_path(RUNG).is_file(),
        1500,
        "the rung to be decided",
        lambda: render(root, "halving_test") + "\n" + "\n".join(explain(r) for r in runs),
    )

    # The right run: the lowest J&F at the rung, read from the records themselves.
    decision = Decision.read(directory.decision_path(RUNG))
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
            assert c.start <= a.start_time and a.end_time <= c.end + 5
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
