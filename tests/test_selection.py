"""Successive halving without a scheduler: the select block's rules (one test each), the ranking,
rung decisions on real run directories and records (waiting, deciding once under racing deciders,
applying, unpruning, a changed select block), when a local run pauses at a rung, how a pruned run
ends, and the plan's problems."""

from __future__ import annotations

import copy
import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from core.atomicio import create_json_exclusive
from core.schema import ConfigError, to_dict
from eval.records import ResultRecord, write_record
from launch.config import ClusterConfig, absolutize, compose
from launch.evaluations.claims import FAILED, SUBMITTED
from launch.job import PAUSE_POLL_S, PRUNE_POLL_S, PruneWatch, RungPause
from launch.plan import plan_sweep, print_plan
from launch.requeue import decide
from launch.rundir import Attempt, PruneMarker, RunDirectory
from launch.runstate import reconcile
from launch.sweeps.expand import load_sweep
from launch.sweeps.file import TOP_LEVEL, read_sweep_file
from launch.sweeps.rungs import (
    Decision,
    SweepDirectory,
    apply,
    build_decision,
    decide_due,
    pause_reason,
    record_dir,
    rung_views,
    unprune,
)
from launch.sweeps.selection import Selection, kept_count, parse_selection, rank_runs, run_problems
from launch.validation.run import known_total_steps
from rsp.lifecycle import StopRequest

SELECT = Selection("davis:J&F-Mean", "max", 0.5, (20, 40))


# --- the select block: one test per rule ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"metric": "davis:J&F", "rungs": [20]}, "select.metric ('davis:J&F') is not a metric any registered evaluation task"),
        ({"metric": "davis:J&F", "rungs": [20]}, "valid: davis:J&F-Mean, davis:J-Mean"),
        ({"metric": "davis:J&F-Mean", "mode": "maximum", "rungs": [20]}, "select.mode ('maximum') must be max"),
        ({"metric": "davis:J&F-Mean", "keep": 1, "rungs": [20]}, "select.keep (1) must lie strictly between 0 and 1"),
        ({"metric": "davis:J&F-Mean", "keep": 0, "rungs": [20]}, "select.keep (0) must lie strictly between 0 and 1"),
        ({"metric": "davis:J&F-Mean", "keep": "half", "rungs": [20]}, "select.keep ('half') must lie strictly"),
        ({"metric": "davis:J&F-Mean", "rungs": []}, "select.rungs ([]) must be a non-empty list"),
        ({"metric": "davis:J&F-Mean", "rungs": [40, 20]}, "select.rungs ([40, 20]) must increase strictly, e.g. rungs: [20, 40]"),
        ({"metric": "davis:J&F-Mean", "rungs": [2.5]}, "must be positive whole training steps"),
        ({"metric": "davis:J&F-Mean", "rungs": [20], "patience": 2}, "select.patience is not a key of select; valid: metric"),
        ("davis", "select ('davis') must be a mapping"),
    ],
)
def test_select_block_rule(raw, expected):
    selection, problems = parse_selection(raw)
    assert selection is None and any(expected in p for p in problems), problems


def test_a_bad_select_block_fails_the_sweep_file_with_every_problem(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "experiment: smoke\naxes:\n  - key: optim.lr\n    values: [0.001]\n"
        "select: {metric: 'davis:nope', mode: up, keep: 2, rungs: [20]}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_sweep(str(path))
    assert len(err.value.problems) == 3 and "nothing was planned or submitted" in str(err.value)
    # select: is one entry of the sweep-file reader's table of top-level keys, reported with the file's other problems
    path.write_text("experiment: smoke\naxes: {optim.lr: [0.001]}\nselect: {metric: 'davis:J&F-Mean', keep: 0}\n")
    parsed, problems = read_sweep_file(path)
    assert "select" in TOP_LEVEL and parsed["select"] is None
    assert any(p.startswith("axes: must be a list") for p in problems), problems
    assert any("select.keep (0)" in p for p in problems) and any("select.rungs (None)" in p for p in problems), problems


def smoke_cfg(tmp_path: Path, *extra: str):
    tasks = [] if any(e.startswith("evaluation.tasks=") for e in extra) else ["evaluation.tasks=[davis]"]
    base = ["experiment=smoke", *tasks, f"output_root={tmp_path / 'runs'}", *extra]
    return absolutize(compose(base), tmp_path)


def test_rungs_must_be_milestones_before_the_last_step_of_runs_that_evaluate_the_metric(tmp_path):
    cfg = smoke_cfg(tmp_path)  # 60 steps, milestones every 20
    assert run_problems(SELECT, cfg, known_total_steps(cfg)) == []
    off = run_problems(Selection("davis:J&F-Mean", "max", 0.5, (25, 40)), cfg, 60)
    assert off == [
        "select.rungs [25] are not milestones: checkpoint.milestone_every_steps is 20 (milestones at 20, 40, ...); "
        "use multiples of 20 or set the cadence to a divisor of every rung"
    ]
    late = run_problems(Selection("davis:J&F-Mean", "max", 0.5, (20, 60)), cfg, known_total_steps(cfg))
    assert late and "select.rungs [60] are not before the run's last step (60 steps)" in late[0]
    cfg.checkpoint.milestone_every_steps = 0
    assert "only the last step is a milestone); set it to a divisor of every rung, e.g. 20" in run_problems(SELECT, cfg, 60)[0]
    other = smoke_cfg(tmp_path, "evaluation.tasks=[jhmdb]")
    message = run_problems(SELECT, other, 60)[0]
    assert "needs the davis evaluation, but evaluation.tasks is ['jhmdb']" in message and "jhmdb:PCK@0.1" in message


def test_total_steps_come_from_the_data_when_the_schedule_counts_epochs(tmp_path, train_videos):
    cfg = smoke_cfg(
        tmp_path, f"data.root={train_videos}", "data.synthetic_videos=0", "schedule.total_steps=null", "schedule.epochs=4"
    )
    # 16 videos / batch 8 = 2 steps per pass; 4 nominal epochs / repeated sampling 2 = 2 passes
    assert known_total_steps(cfg) == 2 * 4 // cfg.data.repeated_sampling
    cfg.data.root = str(tmp_path / "nothing-here")
    assert known_total_steps(cfg) is None


# --- ranking ---------------------------------------------------------------------------------------


def test_ranking_keeps_the_best_fraction_and_every_tie_with_the_last_kept():
    assert [kept_count(n, 0.5) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]
    assert kept_count(10, 0.3) == 3  # 0.3 x 10 is 3.0000000000000004 in floating point
    ranked = rank_runs({"a": 0.1, "b": 0.4, "c": 0.3, "d": 0.2}, "max", 0.5)
    assert [(r.run_id, r.rank, r.kept) for r in ranked] == [("b", 1, True), ("c", 2, True), ("d", 3, False), ("a", 4, False)]
    tied = rank_runs({"a": 0.5, "b": 0.4, "c": 0.4, "d": 0.1}, "max", 0.5)
    assert [(r.run_id, r.rank, r.kept) for r in tied] == [("a", 1, True), ("b", 2, True), ("c", 2, True), ("d", 4, False)]
    low = rank_runs({"a": 0.1, "b": 0.4, "c": 0.3}, "min", 0.34)
    assert [(r.run_id, r.kept) for r in low] == [("a", True), ("c", True), ("b", False)]
    assert rank_runs({"x": 1.0}, "max", 0.1)[0].kept


# --- decisions on real run directories ----------------------------------------------------------------


def make_sweep(tmp_path: Path, n: int = 4, selection: Selection = SELECT) -> tuple[SweepDirectory, list[RunDirectory]]:
    base = smoke_cfg(tmp_path)
    runs = []
    for i in range(n):
        cfg = copy.deepcopy(base)
        cfg.optim.lr, cfg.name = 0.001 * (i + 1), f"run{i}"
        run = RunDirectory.for_config(cfg)
        run.create(cfg)
        run.record_sweep("s", {"optim.lr": cfg.optim.lr})
        runs.append(run)
    sweep = SweepDirectory(tmp_path / "runs", "s")
    sweep.write_record(selection, {r.info().run_id: r.path.name for r in runs})
    return sweep, runs


def write_metric(run: RunDirectory, step: int, value: float) -> Path:
    info = run.info()
    path = record_dir(run, step, "davis") / "record.json"
    record = ResultRecord(
        info.run_id, info.name, info.config_hash, step, "davis", "p" * 64, {}, {"J&F-Mean": value},
        "s" * 64, "/x.pt", "v", "1", 1.0,
    )  # fmt: skip
    return write_record(path, record)


def test_a_rung_waits_for_every_live_run_then_prunes_the_worse_half_once(tmp_path):
    sweep, runs = make_sweep(tmp_path)
    for run, value in zip(runs[:3], (0.3, 0.6, 0.5), strict=True):
        write_metric(run, 20, value)
    assert decide_due(sweep, "test") == []
    (view,) = rung_views(sweep)
    assert set(view.waiting) == {runs[3].info().run_id} and "training" in next(iter(view.waiting.values()))
    write_metric(runs[3], 20, 0.4)
    (decision,) = decide_due(sweep, "test")
    ids = [r.info().run_id for r in runs]
    assert decision.kept == [ids[1], ids[2]] and sorted(decision.pruned) == sorted([ids[3], ids[0]])
    assert {r.run_id: r.value for r in decision.ranking} == dict(zip(ids, (0.3, 0.6, 0.5, 0.4), strict=True))
    assert all(Path(r.record).is_file() for r in decision.ranking)  # its inputs, by file
    assert Decision.read(sweep.decision_path(20)) == decision  # written and read back as the same record
    marker = runs[0].prune_marker()
    assert (marker.rung, marker.rank, marker.of, marker.value) == (20, 4, 4, 0.3)
    assert runs[1].prune_marker() is None and runs[3].prune_marker().rank == 3
    assert decide_due(sweep, "again") == [] and len(sweep.decisions()) == 1  # idempotent
    (decided, nxt) = rung_views(sweep)
    assert decided.decision == decision and set(nxt.waiting) == {ids[1], ids[2]}  # step 40 ranks the two kept


def _decide(args) -> int:
    root, barrier_at = args
    while time.time() < barrier_at:  # all processes start deciding together
        time.sleep(0.001)
    return len(decide_due(SweepDirectory(root, "s"), "racer"))


def test_racing_deciders_make_one_decision(tmp_path):
    sweep, runs = make_sweep(tmp_path, n=3)
    for run, value in zip(runs, (0.2, 0.9, 0.5), strict=True):
        write_metric(run, 20, value)
    start = time.time() + 1.0
    with multiprocessing.get_context("fork").Pool(6) as pool:
        made = pool.map(_decide, [(str(sweep.output_root), start)] * 6)
    assert sum(made) == 1 and len(list((sweep.path / "decisions").iterdir())) == 1
    assert [r.prune_marker() is not None for r in runs] == [True, False, False]


def test_a_failed_run_is_excluded_and_a_failed_evaluation_is_waited_for(tmp_path):
    sweep, runs = make_sweep(tmp_path, n=3)
    write_metric(runs[0], 20, 0.2)
    runs[1].set_status("failed", "breaker: two crashes at step 12")
    failed_eval = record_dir(runs[2], 20, "davis")
    failed_eval.mkdir(parents=True)
    (failed_eval / FAILED).write_text("{}")
    (view,) = rung_views(sweep)
    rid = [r.info().run_id for r in runs]
    assert "breaker" in view.excluded[rid[1]] and "--retry-failed" in view.waiting[rid[2]] and not view.due
    (failed_eval / FAILED).unlink()
    write_metric(runs[2], 20, 0.8)
    (decision,) = decide_due(sweep, "test")
    assert decision.live == 2 and decision.pruned == [rid[0]] and decision.excluded[0].run_id == rid[1]


def test_unprune_exempts_the_run_from_later_rungs_and_its_marker_is_not_rewritten(tmp_path):
    sweep, runs = make_sweep(tmp_path, n=4)
    for run, value in zip(runs, (0.1, 0.2, 0.3, 0.4), strict=True):
        write_metric(run, 20, value)
    decide_due(sweep, "test")
    assert runs[0].prune_marker() is not None
    runs[0].set_status("pruned", "pruned at step 20")
    marker = unprune(sweep, runs[0])
    assert marker.rung == 20 and runs[0].prune_marker() is None and runs[0].status() is None
    assert json.loads((runs[0].path / "unpruned" / "000.json").read_text())["rung"] == 20
    decide_due(sweep, "test")  # re-applying step 20 leaves the exempt run alone
    assert runs[0].prune_marker() is None
    (_, step40) = rung_views(sweep)
    assert set(step40.waiting) == {runs[2].info().run_id, runs[3].info().run_id}
    with pytest.raises(ValueError, match="is not pruned"):
        unprune(sweep, runs[3])


# --- pausing at a rung (the local backend) -------------------------------------------------------------


def submit_evaluation(run: RunDirectory, step: int) -> Path:
    directory = record_dir(run, step, "davis")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SUBMITTED).write_text('{"job_id": "1"}')
    return directory


def test_a_run_pauses_at_a_rung_only_while_its_decision_is_coming(tmp_path):
    sweep, runs = make_sweep(tmp_path, n=3)
    me, paths = runs[0], [r.path for r in runs]

    def everyone(run):
        return True

    assert pause_reason(me, 10, everyone) is None  # not a rung
    assert pause_reason(me, 20, everyone) == "rung 20 of sweep s (0 of 3 values in)"
    write_metric(runs[1], 20, 0.5)
    assert pause_reason(me, 20, everyone) == "rung 20 of sweep s (1 of 3 values in)"
    # a member still training toward the rung is waited for only while its job lives (a run queued
    # for a slot, or one that crashed for good, would keep the rung open for long)
    assert pause_reason(me, 20, lambda run: run.path != paths[2]) is None
    # a member whose evaluation is submitted is coming, whatever its training job does
    directory = submit_evaluation(runs[2], 20)
    assert pause_reason(me, 20, lambda run: False) is not None  # this run's own evaluation is on its way
    (directory / FAILED).write_text("{}")  # a failed evaluation waits for a retry by hand: do not wait for it
    assert pause_reason(me, 20, everyone) is None
    (directory / FAILED).unlink()
    write_metric(runs[2], 20, 0.9)
    write_metric(me, 20, 0.1)
    (decision,) = decide_due(sweep, "test")
    assert decision.pruned == [me.info().run_id] and pause_reason(me, 20, everyone) is None  # decided
    assert pause_reason(me, 40, everyone) is None  # pruned at 20: not live at 40
    assert pause_reason(runs[1], 40, everyone) == "rung 40 of sweep s (0 of 2 values in)"


def test_a_paused_run_resumes_when_its_rung_is_decided_and_stops_there_when_pruned(tmp_path):
    sweep, runs = make_sweep(tmp_path, n=2)
    me, other = runs
    submit_evaluation(other, 20)  # coming: the pause waits for it
    stop, kicks = StopRequest(), []
    watch = PruneWatch(me, stop)
    try:
        pause = RungPause(me, stop, watch, ClusterConfig(), max_wait_s=120)
        assert pause.rungs == {20, 40}
        pause(19, kicks.append)  # not a rung: returns at once
        assert kicks == []

        def evaluations_end():
            write_metric(me, 20, 0.1)
            write_metric(other, 20, 0.9)
            decide_due(sweep, "evaluation job")

        threading.Timer(2.5, evaluations_end).start()
        started = time.monotonic()
        pause(20, lambda: kicks.append(time.monotonic()))
        waited = time.monotonic() - started
        assert 2.5 <= waited < 30 and kicks, waited  # it kept the progress watchdog alive meanwhile
        assert stop.requested and stop.reason == "pruned"  # at once, not a prune-watch poll later
    finally:
        watch.close()
    # a sweep with more runs than run at once never pauses: a paused run could hold the slot of one it waits for
    assert RungPause(other, StopRequest(), watch, ClusterConfig(array_parallelism=1), 120).rungs == set()


def test_a_paused_run_sees_the_prune_marker_of_a_decision_that_is_slow_to_apply(tmp_path):
    """A decider writes the decision, then (on a busy machine, seconds later) the prune markers, all
    under the sweep's lock: the paused run waits for that lock, so the stop lands at the rung."""
    sweep, (me, other) = make_sweep(tmp_path, n=2)
    submit_evaluation(other, 20)
    stop = StopRequest()
    watch = PruneWatch(me, stop)

    def slow_decider():
        write_metric(me, 20, 0.1)
        write_metric(other, 20, 0.9)
        with sweep.lock():
            decision = build_decision(sweep, sweep.selection(), rung_views(sweep)[-1], "a slow decider")
            create_json_exclusive(sweep.decision_path(20), to_dict(decision))
            time.sleep(3 * PAUSE_POLL_S + 1)  # the paused run sees the decision meanwhile
            apply(sweep, decision)

    try:
        threading.Timer(1.0, slow_decider).start()
        RungPause(me, stop, watch, ClusterConfig(), max_wait_s=120)(20, lambda: None)
        assert stop.requested and stop.reason == "pruned"
    finally:
        watch.close()


def test_a_stop_request_ends_a_pause_at_once(tmp_path):
    _, (me, other) = make_sweep(tmp_path, n=2)
    submit_evaluation(other, 20)
    stop = StopRequest()
    watch = PruneWatch(me, stop)
    try:
        threading.Timer(1.0, stop.request, ["SIGTERM"]).start()
        started = time.monotonic()
        RungPause(me, stop, watch, ClusterConfig(), max_wait_s=120)(20, lambda: None)
        assert time.monotonic() - started < 20 and stop.reason == "SIGTERM"
    finally:
        watch.close()


# --- how a pruned run ends ---------------------------------------------------------------------------


def test_a_pruned_run_is_never_requeued_whatever_ended_its_attempt():
    marker = PruneMarker("s", 20, 3, 4, "davis:J&F-Mean", "max", 0.4, "decisions/step_00000020.json", 0.0)
    for reason in ("pruned", "preempted", "timeout", "stopped", "requeued", "cancelled", "crashed", "interrupted"):
        attempt = Attempt(0, "1", "1/0", [], 0.0, 0, 10.0, 23, reason)
        decision = decide([attempt], ClusterConfig(), marker)
        assert not decision.requeue and decision.final_state == "pruned" and "rank 3 of 4" in decision.reason
    assert decide([Attempt(0, "1", "1/0", [], 0.0, 0, 10.0, 60, "finished")], ClusterConfig(), marker).final_state == "finished"
    unpruned = decide([Attempt(0, "1", "1/0", [], 0.0, 0, 10.0, 23, "pruned")], ClusterConfig(), None)
    assert unpruned.requeue  # pruned, then --unprune before the teardown ran: carry on
    # a prune is a cooperative stop, never a failure and outside every budget: with no preemption or
    # failure budget left, a run pruned and unpruned twice is still requeued, and a crash after a
    # prune at the same step does not trip the breaker
    broke = ClusterConfig(max_preemptions=0, max_failures=1)
    twice = [Attempt(i, "1", f"1/{i}", [], 0.0, 0, 10.0, 23, "pruned") for i in range(2)]
    assert decide(twice, broke, None).requeue
    crash = Attempt(2, "1", "1/2", [], 0.0, 23, 10.0, 23, "crashed", error="Traceback\nValueError: x")
    assert decide([*twice, crash], broke, None).requeue


def test_a_pruned_run_without_a_live_job_is_pruned_not_incomplete(tmp_path):
    sweep, runs = make_sweep(tmp_path, n=2)
    runs[0].mark_pruned(PruneMarker("s", 20, 2, 2, "davis:J&F-Mean", "max", 0.1, "decisions/step_00000020.json", 0.0))
    states = reconcile(runs, sweep.output_root)
    assert [s.state for s in states] == ["pruned", "missing" if not runs[1].exists else "incomplete"]
    assert "rank 2 of 2 by davis:J&F-Mean" in states[0].detail


def test_the_prune_watch_turns_a_marker_into_a_cooperative_stop(tmp_path):
    _, runs = make_sweep(tmp_path, n=1)
    stop = StopRequest()
    watch = PruneWatch(runs[0], stop)
    try:
        assert not stop.requested
        marker = PruneMarker("s", 20, 2, 2, "davis:J&F-Mean", "max", 0.1, "decisions/step_00000020.json", 0.0)
        threading.Timer(0.2, runs[0].mark_pruned, [marker]).start()
        deadline = time.monotonic() + 10 * PRUNE_POLL_S
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stop.requested and stop.reason == "pruned"
    finally:
        watch.close()


# --- the plan -------------------------------------------------------------------------------------


def write_sweep(tmp_path: Path, select: str, *extra: str) -> str:
    path = tmp_path / "halving.yaml"
    overrides = ["evaluation.tasks=[davis]", f"output_root={tmp_path / 'runs'}", f"data.root={tmp_path / 'videos'}", *extra]
    path.write_text(
        "experiment: smoke\n"
        f"overrides: {json.dumps(overrides)}\n"
        "name: 'lr{optim.lr}'\naxes:\n  - key: optim.lr\n    values: [0.001, 0.002, 0.003]\n"
        f"select: {select}\n"
    )
    return str(path)


def test_plan_lists_select_problems_under_the_plan_and_a_submission_queues_nothing(tmp_path, capsys):
    from launch.submit import main

    sweep = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', rungs: [30, 60]}")
    plan = plan_sweep(load_sweep(sweep), [], tmp_path)
    assert len(plan.problems) == 2 and all(p.endswith("(all runs)") for p in plan.problems)
    assert main([f"sweep={sweep}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 problem(s); a submission would queue nothing" in out and "select.rungs [30] are not milestones" in out
    assert main([f"sweep={sweep}"]) == 2
    assert "nothing was submitted" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_pruned_sweep_resubmitted_with_another_select_is_refused(tmp_path):
    sweep_file = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', keep: 0.5, rungs: [20]}")
    plan = plan_sweep(load_sweep(sweep_file), [], tmp_path)
    assert plan.problems == []
    for row in plan.rows:
        row.rundir.create(row.run.cfg)
    plan.record_membership(plan.rows)
    directory = SweepDirectory(tmp_path / "runs", "halving")
    for row, value in zip(plan.rows, (0.1, 0.5, 0.3), strict=True):
        write_metric(row.rundir, 20, value)
    assert len(decide_due(directory, "test")) == 1
    changed = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', keep: 0.7, rungs: [20]}")
    problems = plan_sweep(load_sweep(changed), [], tmp_path).problems
    assert len(problems) == 1 and "select changed: sweep halving was pruned under select" in problems[0]
    assert "'keep': 0.5" in problems[0] and "'keep': 0.7" in problems[0] and "--unprune RUN" in problems[0]
    write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', keep: 0.5, rungs: [20]}")  # the select block restored
    again = plan_sweep(load_sweep(sweep_file), [], tmp_path)
    assert again.problems == [] and [r.state.state for r in again.rows].count("pruned") == 1
    assert [r.action for r in again.rows if r.state.state == "pruned"] == ["nothing"]
    print_plan(again)  # renders a plan that holds a pruned run


def test_runs_added_after_a_rung_was_decided_are_refused_and_removed_runs_reported(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', keep: 0.5, rungs: [20]}")
    plan = plan_sweep(load_sweep(sweep_file), [], tmp_path)
    for row in plan.rows:
        row.rundir.create(row.run.cfg)
    plan.record_membership(plan.rows)
    for row, value in zip(plan.rows, (0.1, 0.5, 0.3), strict=True):
        write_metric(row.rundir, 20, value)
    Path(sweep_file).write_text(Path(sweep_file).read_text().replace("[0.001, 0.002, 0.003]", "[0.001, 0.002, 0.004]"))
    assert plan_sweep(load_sweep(sweep_file), [], tmp_path).problems == []  # nothing decided yet: a new member is ranked too
    assert "1 run(s) of sweep halving are no longer in sweep file halving: lr0.003-" in capsys.readouterr().err
    assert len(decide_due(SweepDirectory(tmp_path / "runs", "halving"), "test")) == 1
    problems = plan_sweep(load_sweep(sweep_file), [], tmp_path).problems
    assert len(problems) == 1 and "runs added to sweep halving after it decided step(s) 20" in problems[0]
    assert "lr0.004 cannot be ranked at rungs already decided" in problems[0] and "halving_2.yaml" in problems[0]
    assert "they stay members (their decisions and prune markers stand)" in capsys.readouterr().err


def test_unprune_names_must_be_pruned_runs_of_the_sweep_and_nothing_is_unpruned_otherwise(tmp_path, capsys):
    from launch.submit import main

    sweep_file = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', keep: 0.5, rungs: [20]}")
    plan = plan_sweep(load_sweep(sweep_file), [], tmp_path)
    for row in plan.rows:
        row.rundir.create(row.run.cfg)
    plan.record_membership(plan.rows)
    for row, value in zip(plan.rows, (0.1, 0.5, 0.3), strict=True):
        write_metric(row.rundir, 20, value)
    decide_due(SweepDirectory(tmp_path / "runs", "halving"), "test")
    pruned = [r for r in plan.rows if r.rundir.prune_marker() is not None]
    assert [r.run.name for r in pruned] == ["lr0.001"]
    assert main([f"sweep={sweep_file}", "--unprune", "lr0.001", "--unprune", "lr0.002"]) == 2
    err = capsys.readouterr().err
    assert "--unprune 'lr0.002' is not pruned; the sweep's pruned runs: lr0.001" in err and "nothing was unpruned" in err
    assert main([f"sweep={sweep_file}", "--unprune", "lr9"]) == 2
    assert "names 0 runs of sweep halving" in capsys.readouterr().err
    assert pruned[0].rundir.prune_marker() is not None  # untouched


def test_cfg_job_prints_the_resolved_config_and_help_lists_the_config_groups(tmp_path, capsys):
    import yaml

    from launch.submit import main

    assert main(["experiment=smoke", "model.kl_scale=0.5", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["kl_scale"] == 0.5 and cfg["schedule"]["total_steps"] == 60
    assert main(["sweep=smoke", "--cfg", "job", f"output_root={tmp_path}"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert len(docs) == 4 and {d["optim"]["lr"] for d in docs} == {0.0003, 0.003}
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for line in (
        "experiment (experiments/experiment/*.yaml):",
        "cluster (experiments/cluster/*.yaml):",
        "sweep (sweeps/*.yaml):",
    ):
        assert line in out
    assert "  smoke " in out and "  kl_weight_halving " in out and "  slurm " in out and "rsp_vits16_k400" in out


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml")))
def test_every_shipped_sweep_plans_on_a_fresh_clone_and_a_submission_with_problems_queues_nothing(
    name, tmp_path, monkeypatch, capsys
):
    from launch.submit import main

    for var in ("RSP_K400_ROOT", "RSP_DAVIS_ROOT", "RSP_JHMDB_ROOT", "RSP_VIP_ROOT"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "runs"
    assert main([f"sweep={name}", "--dry-run", f"output_root={root}"]) == 0
    out = capsys.readouterr().out
    assert f"sweep {name}: " in out and "runs; submit" in out
    if "problem(s)" in out:  # the Kinetics sweeps on a fresh clone: no data roots
        assert "data.root is not set" in out
        assert main([f"sweep={name}", f"output_root={root}"]) == 2
        assert "nothing was submitted" in capsys.readouterr().err and not root.exists()
    else:  # only sweeps whose runs generate their own data (smoke, cpu_study) plan cleanly on a fresh clone
        plan = plan_sweep(load_sweep(name), [f"output_root={root}"], tmp_path)
        assert plan.problems == [] and all(r.run.cfg.data.synthetic_videos > 0 for r in plan.rows), name


def test_another_sweep_of_the_same_name_is_told_how_to_keep_apart(tmp_path, capsys):
    """Two sweep files named alike (in two folders) into one output_root merge into one sweep: the note
    used to read as if the file had been edited."""
    sweep_file = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', keep: 0.5, rungs: [20]}")
    plan = plan_sweep(load_sweep(sweep_file), [], tmp_path)
    for row in plan.rows:
        row.rundir.create(row.run.cfg)
    plan.record_membership(plan.rows)
    Path(sweep_file).write_text(Path(sweep_file).read_text().replace("[0.001, 0.002, 0.003]", "[0.01, 0.02]"))
    assert plan_sweep(load_sweep(sweep_file), [], tmp_path).problems == []
    err = capsys.readouterr().err
    assert "3 run(s) of sweep halving are no longer in sweep file halving" in err
    assert "if this is another sweep that shares the name, give its file another name" in err, err
