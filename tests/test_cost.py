"""Cost accounting without a scheduler: sacct's allocation rows parsed and matched to attempt records
(requeued jobs, array tasks, running and pending jobs), the local backend's attempts priced from
their records, the cost to a checkpoint, what a pruned run would still have cost, and the results
table's cost and pruned columns. The real sacct is exercised in tests/test_halving_slurm.py."""

from __future__ import annotations

import copy
import json
from datetime import datetime

import pandas as pd
import pytest

from core.atomicio import atomic_write_json
from eval.records import ResultRecord, write_record
from launch.config import compose
from launch.cost import local_attempt_costs, projected_to_end, redone, run_cost, slurm_attempt_costs
from launch.results import aggregate_runs
from launch.rundir import Attempt, PruneMarker, RunDirectory
from launch.slurm_queries import parse_alloc_tres, parse_sacct_allocations, total_cpus
from launch.status import lost_time
from launch.steplog import RECORD, StepLog
from rsp.manifest import Manifest, checkpoint_name


def ts(text: str) -> float:
    return datetime.fromisoformat(f"2026-11-29T{text}").timestamp()


SACCT = """\
123|REQUEUED|2026-11-29T20:00:00|2026-11-29T20:00:05|2026-11-29T20:01:05|60|billing=1,cpu=1,mem=1G,node=1
123|COMPLETED|2026-11-29T20:01:10|2026-11-29T20:01:20|2026-11-29T20:03:20|120|billing=1,cpu=1,mem=1G,node=1
124_0|RUNNING|2026-11-29T20:00:00|2026-11-29T20:10:00|Unknown|30|billing=8,cpu=8,gres/gpu=2,gres/gpu:a100=2,node=1
125|PENDING|2026-11-29T20:00:00|Unknown|Unknown|0|
"""


def test_sacct_rows_parse_into_allocations_with_gpus_cpus_and_times():
    rows = parse_sacct_allocations(SACCT)
    assert [a.elapsed_s for a in rows["123"]] == [60, 120] and rows["123"][0].state == "REQUEUED"
    assert rows["123"][1].start == ts("20:01:20") and rows["123"][1].submit == ts("20:01:10")
    running = rows["124_0"][0]
    assert (running.gpus, running.cpus, running.end) == (2, 8, None)  # gres/gpu counted once, not per type
    assert rows["125"][0].start is None
    assert parse_alloc_tres("cpu=4,gres/gpu:h100=3,node=1") == {"cpus": 4, "gpus": 3}
    assert total_cpus("4(x2),2") == 10 and total_cpus("") == 0


def attempt(number, job, start, end, start_step, end_step, reason, alloc=None):
    return Attempt(number, job, f"{job}/{number}", ["n1"], start, start_step, end, end_step, reason, alloc=alloc)


@pytest.fixture
def run(tmp_path):
    cfg = compose(["experiment=smoke", "evaluation.tasks=[davis]", f"output_root={tmp_path}", "cluster.cpus_per_task=2"])
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    return run


def test_requeued_allocations_price_the_attempts_they_hold_and_the_redone_steps(run):
    attempts = [
        attempt(0, "123", ts("20:00:08"), ts("20:01:04"), 0, 23, "interrupted"),
        attempt(1, "123", ts("20:01:26"), ts("20:03:18"), 20, 60, "finished"),
    ]
    # no step log (an attempt recorded before step logs): the redone steps at the attempt's mean step time
    assert redone(run, attempts) == [(3, pytest.approx(3 * 56 / 23)), (0, 0.0)]
    # with its step log, the time the redone steps took as measured: time(step 23) - time(step 20)
    log = StepLog(run.step_log_path(attempts[0]))
    for step in range(24):
        log.append(step, ts("20:00:10") + 2.0 * step + (5.0 if step > 20 else 0.0))
    log.close()
    assert redone(run, attempts) == [(3, pytest.approx(11.0)), (0, 0.0)]
    assert lost_time(run, attempts)[1:] == (3, pytest.approx(11.0))  # the status table's lost column: the same figures
    costs = slurm_attempt_costs(run, attempts, parse_sacct_allocations(SACCT)["123"])
    assert [c.number for c in costs] == [0, 1] and [c.source for c in costs] == ["sacct", "sacct"]
    assert [c.queue_s for c in costs] == [5.0, 10.0] and [c.end - c.start for c in costs] == [60.0, 120.0]
    assert costs[0].redone_steps == 3 and costs[1].redone_steps == 0 and costs[0].redone_s == pytest.approx(11.0)
    unmatched = slurm_attempt_costs(run, attempts[:1], parse_sacct_allocations(SACCT)["123"])
    assert [c.number for c in unmatched] == [0, None]  # an allocation that recorded no attempt still costs
    pruned = [attempt(0, "123", 0.0, 50.0, 0, 40, "pruned"), attempt(1, "123", 60.0, 90.0, 40, 60, "finished")]
    assert redone(run, pruned) == [(0, 0.0), (0, 0.0)]  # a prune is a cooperative stop: it checkpoints its step


def test_local_attempts_hold_their_cpus_from_the_spawn_to_their_end(run):
    t0 = 1_000_000.0
    atomic_write_json(run.path / "submissions" / "000.json", {"time": t0, "backend": "local", "job_id": "42"})
    attempts = [
        attempt(0, "42", t0 + 5, t0 + 65, 0, 23, "crashed", {"gpus": 0, "cpus": 2}),
        attempt(1, "42", t0 + 70, t0 + 130, 20, 60, "finished", None),  # no allocation recorded: the request
    ]
    for a in attempts:
        run.save_attempt(a)
    costs = local_attempt_costs(run, run.attempts(), {"gpus": 0, "cpus": 2})
    assert [(c.start, c.end, c.queue_s) for c in costs] == [(t0, t0 + 65, 0.0), (t0 + 65, t0 + 130, 0.0)]
    cost = run_cost(run, now=t0 + 1000)
    assert cost.train_s("cpu") == 130 * 2 and cost.train_s("gpu") == 0 and not cost.uses_gpus
    assert cost.redone_s("cpu") == pytest.approx(3 * 60 / 23 * 2) and cost.steps_trained == 23 + 40
    assert cost.to_step_time(t0 + 30, "cpu") == 60 and cost.to_step_time(t0 + 100, "cpu") == (65 + 35) * 2


def test_a_pruned_run_would_still_have_cost_its_remaining_steps_and_milestone_evaluations(run):
    t0 = 1_000_000.0
    atomic_write_json(run.path / "submissions" / "000.json", {"time": t0, "backend": "local", "job_id": "42"})
    run.save_attempt(attempt(0, "42", t0, t0 + 40, 0, 40, "pruned", {"gpus": 0, "cpus": 2}))
    run.record_progress(0, 100)
    (run.path / "checkpoints").mkdir()
    manifest = Manifest(40, checkpoint_name(40), "0" * 64, 1, "c" * 64, False, "m", "v", t0 + 40)
    (run.path / "checkpoints" / checkpoint_name(40)).write_bytes(b"x")
    (run.path / "checkpoints" / "step_00000040.json").write_text(json.dumps(manifest.__dict__))
    for step in (20, 40):
        path = run.path / "evals" / f"step_{step:08d}" / "davis-x" / "record.json"
        atomic_write_json(path.parent / "submitted.json", {"job_id": "7", "backend": "local"})
        record = ResultRecord("rid", "r", "c", step, "davis", "p" * 64, {}, {"J&F-Mean": 0.5}, "s", "x.pt", "v", "7", 10.0)
        write_record(path, record)  # only a valid record's wall time is counted
    cost = run_cost(run, now=t0 + 50)
    assert cost.eval_s("cpu") == 2 * 10 * 2  # two records x 10 s x evaluation.cpus_per_task (2)
    # 60 steps left at 2 CPU-s per step, and milestones 60, 80, 100 evaluated at 20 CPU-s each
    assert projected_to_end(run, cost, "cpu") == pytest.approx(60 * 2 + 3 * 20)
    # with a step log the rate is the training's own, without the allocation's start-up: 40 steps
    # logged over 20 s (the other 20 s of the attempt were start-up) is 0.5 s x 2 CPUs per step
    log = run.step_log_path(run.attempts()[0])
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(RECORD.pack(1, t0 + 20) + RECORD.pack(40, t0 + 20 + 39 * 0.5))
    assert projected_to_end(run, cost, "cpu") == pytest.approx(60 * 0.5 * 2 + 3 * 20)


def test_the_results_table_has_the_cost_to_each_checkpoint_and_the_rung_that_pruned_a_run(tmp_path):
    base = ResultRecord("r1", "a", "c" * 64, 20, "davis", "p" * 64, {}, {"J&F-Mean": 0.4}, "s" * 64, "/x", "v", "1", 1.0)
    for rid, name, pruned in (("aaaaaaaaaaaa", "a", True), ("bbbbbbbbbbbb", "b", False)):
        for step, hours in ((20, 0.5), (40, 1.0)):
            r = copy.deepcopy(base)
            r.run_id, r.run_name, r.step, r.sweep_axes = rid, name, step, {"optim.lr": 0.1 if pruned else 0.2}
            r.training_cost = {"gpu_hours": 0.0, "cpu_hours": hours, "source": "attempts"}
            write_record(tmp_path / f"{name}-{rid}" / "evals" / f"step_{step:08d}" / "davis-p" / "record.json", r)
        atomic_write_json(tmp_path / f"{name}-{rid}" / "run.json", {"run_id": rid})
        atomic_write_json(tmp_path / f"{name}-{rid}" / "sweeps" / "s.json", {"sweep": "s", "axes": {}})
    marker = PruneMarker("s", 20, 2, 2, "davis:J&F-Mean", "max", 0.4, "decisions/step_00000020.json", 0.0)
    assert RunDirectory(tmp_path / "a-aaaaaaaaaaaa").mark_pruned(marker)
    report = aggregate_runs(tmp_path, sweep="s", plots=False, tensorboard=False)
    assert report.out == tmp_path / "results" / "sweep-s"
    table = pd.read_json(report.out / "results.table.json", orient="table")
    rows = table.set_index(["run", "step"])
    assert rows.loc[("a", 40), "train_cpu_h"] == 1.0 and rows.loc[("b", 20), "train_cpu_h"] == 0.5
    assert rows.loc[("a", 20), "pruned_at"] == 20 and rows.loc[("a", 20), "pruned_rank"] == "2/2"
    assert pd.isna(rows.loc[("b", 20), "pruned_at"])
    assert "train_cpu_h" in report.summary() and "pruned_rank" in report.summary()
    other = aggregate_runs(tmp_path, sweep="other", plots=False, tensorboard=False)
    assert other.table.empty
