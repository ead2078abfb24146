"""Asynchronous promotion on the local backend: the training side of a pause in this process (fast),
then end to end (launch/sweeps/async_rungs.py): a two-run
sweep with one local slot. Each run stops at the rung and ends `paused` (its process ends, so the
slot goes to the other run); a resubmission meanwhile starts nothing paused; the rung closes when
the second value arrives; the kept run is resubmitted by the sweep itself (no follow loop, no
status call) and resumes from the rung's checkpoint bitwise equal to a run never stopped; the other
is pruned where it paused; every outcome replays from its record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.records import parse_record
from launch.config import train_config
from launch.job import AsyncRungStop
from launch.rundir import RunDirectory
from launch.status import render
from launch.sweeps.promotion import replay
from launch.sweeps.rungs import Decision, SweepDirectory, record_dir
from rsp.distributed import DistEnv
from rsp.lifecycle import StopRequest
from rsp.train import TrainHooks, train
from testkit.launching import explain, halving_sweep_file, submit, wait_for
from testkit.training import assert_same_training_state, loss_trace, tiny_config

STEPS, RUNG = 20, 10
LRS = (0.0001, 0.01)
ASYNC = ", promotion: async, min_reports: 2"  # no early promotion: the first run waits, paused, for the second
# 32 px (TINY), batch 2: seconds per run; no step-0 milestone (its evaluations serve no assertion here)
TINY_RUNS = ("cluster.array_parallelism=1", "evaluation.time_minutes=10", "checkpoint.initial_milestone=false")


def runs_of(root: Path) -> list[RunDirectory]:
    return [RunDirectory(p.parent) for p in sorted(root.glob("*/run.json"))]


@pytest.mark.slow  # two local runs, three evaluation jobs and a resubmission: about 10 Python processes
def test_an_async_local_sweep_pauses_runs_without_a_slot_and_resumes_the_promoted_one_bitwise(
    train_videos, tmp_path, reference_runs
):
    root = tmp_path / "runs"
    sweep_file = halving_sweep_file(tmp_path, train_videos, root, "local", STEPS, RUNG, LRS, ASYNC, TINY_RUNS)
    rc, out = submit([f"sweep={sweep_file}", "--no-wait"])
    assert rc == 0 and "submitted 2 run(s)" in out, out
    runs = runs_of(root)
    why = lambda: render(root, "halving_test") + "\n" + "\n".join(map(explain, runs))  # noqa: E731

    # The first run to reach the rung pauses there while the second has not reported yet.
    wait_for(lambda: any(r.final_state() == "paused" for r in runs), 600, "a run to pause at the rung", why)
    first = next(r for r in runs if r.final_state() == "paused")
    rc, out = submit([f"sweep={sweep_file}", "--no-wait"])
    resumed_meanwhile = len(first.submissions()) > 1  # the rung closed during this resubmission
    assert rc == 0 and (resumed_meanwhile or "nothing to submit" in out), out
    assert "submitted" not in out.replace("submitted 2 run(s)", ""), out

    directory = SweepDirectory(root, "halving_test")
    wait_for(lambda: all(r.final_state() in ("finished", "pruned") for r in runs), 900, "every run to end", why)
    decision = Decision.read(directory.decision_path(RUNG))
    values = {r.info().run_id: parse_record(record_dir(r, RUNG, "davis") / "record.json").metrics["J&F-Mean"] for r in runs}
    worst, best = min(values, key=values.get), max(values, key=values.get)
    assert decision.pruned == [worst] and decision.kept == [best], (decision, values)
    by_id = {r.info().run_id: r for r in runs}

    # Both ended their first attempt paused at the rung, with its checkpoint; the slot went on:
    # the second run started only once the first one's process had ended.
    first_attempts = sorted((r.attempts()[0] for r in runs), key=lambda a: a.start_time)
    assert [(a.end_reason, a.end_step) for a in first_attempts] == [("paused", RUNG)] * 2, why()
    assert first_attempts[0].end_time <= first_attempts[1].start_time, why()
    pruned, kept = by_id[worst], by_id[best]
    assert (pruned.final_state(), len(pruned.submissions()), len(pruned.attempts())) == ("pruned", 1, 1), why()
    assert [m.step for m in pruned.manifests()][-1] == RUNG
    assert len(kept.submissions()) == 2 and kept.final_state() == "finished", why()
    resumed = kept.attempts()[-1]
    assert (resumed.start_step, resumed.end_reason, resumed.end_step) == (RUNG, "finished", STEPS), why()

    # Every outcome is recorded with its inputs and replays to itself; the log holds both reports.
    records = [json.loads(p.read_text()) for p in sorted((directory.path / "promotion" / "records").glob("*.json"))]
    assert records and all(replay(r).to_dict() == r["outcome"] for r in records)
    assert any(r["outcome"]["promoted"] == [best] for r in records), records  # by the second report
    assert records[-1]["outcome"]["closed"] and records[-1]["outcome"]["pruned"] == [worst], records
    log = json.loads((directory.path / "promotion" / "log.json").read_text())
    assert sorted(entry[1] for entry in log) == sorted(values)

    assert_same_training_state(kept.path, reference_runs.get(train_config(kept.config())))
    table = render(root, "halving_test")
    assert f"pruned@{RUNG}" in table and "promoted 1" in table, table


def test_a_run_stops_exactly_at_each_rung_it_is_not_promoted_at_and_resumes_bitwise(train_videos, tmp_path, reference_runs):
    """The training side of a pause, in this process: the stop lands on the rung's step with its
    checkpoint, a rung already promoted is trained through, and the run pieced together from its
    paused attempts is the uninterrupted one (the reference test_train.py shares)."""
    cfg, run_dir, rungs = tiny_config(train_videos), tmp_path / "paused", {4, 6}
    promoted: dict[int, bool] = {}
    ends = []
    for now in ({}, {4: True}, {4: True, 6: True}):
        promoted.clear()
        promoted.update(now)
        stop = StopRequest()
        result = train(cfg, DistEnv(), run_dir, stop, TrainHooks(before_step=AsyncRungStop(stop, rungs, lambda: promoted)))
        ends.append((result.status, result.step, stop.reason))
    assert ends == [("stopped", 4, "paused"), ("stopped", 6, "paused"), ("finished", 8, None)]
    assert_same_training_state(reference_runs.get(cfg), run_dir)
    assert [r["step"] for r in loss_trace(run_dir)] == list(range(1, 9))
