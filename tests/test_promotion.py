"""Asynchronous promotion (launch/sweeps/promotion.py): the rule on hand-made cases, its final state against
the synchronous decision on random arrival orders, records that replay to the same outcome, and the
select block's promotion keys (one test per rule)."""

from __future__ import annotations

import json
import random

import pytest

from launch.config import ClusterConfig
from launch.plan import plan_sweep
from launch.requeue import decide
from launch.rundir import Attempt
from launch.sweeps.expand import load_sweep
from launch.sweeps.promotion import Promotion, Rung, replay
from launch.sweeps.selection import Selection, parse_selection, rank_runs, sweep_size_problems

ASYNC = Selection("davis:J&F-Mean", "max", 0.5, (20, 40, 80), "async", 2)


def test_a_run_goes_on_when_it_ranks_in_the_top_fraction_of_the_reports_so_far():
    rung = Rung(20, ASYNC)
    assert rung.report("a", 0.1).paused == ["a"]  # 1 report < min_reports 2: wait
    out = rung.report("b", 0.5)  # 2 reports, keep ceil(0.5 x 2) = 1: b
    assert (out.promoted, out.paused) == (["b"], [])
    assert rung.report("c", 0.3).promoted == ["c"]  # 3 reports keep 2: b, c
    assert rung.report("d", 0.9).promoted == ["d"]  # 4 reports keep 2, but promotions stand until the close
    closed = rung.close()  # the synchronous decision: d, b
    assert (closed.promoted, closed.demoted, closed.pruned) == ([], ["c"], ["a"])
    assert rung.promoted == {"b", "d"}


def test_a_paused_run_is_promoted_when_enough_weaker_results_arrive():
    rung = Rung(20, ASYNC)
    rung.report("a", 0.3)
    assert rung.report("b", 0.5).promoted == ["b"] and "a" not in rung.promoted
    out = rung.report("c", 0.1)  # 3 reports keep 2: a now ranks second
    assert (out.promoted, out.paused) == (["a"], ["c"])


def test_ties_with_the_last_kept_value_are_promoted_as_the_ranking_keeps_them():
    rung = Rung(20, ASYNC)
    rung.report("a", 0.4)
    assert rung.report("b", 0.4).promoted == ["a", "b"]


def test_synchronous_promotion_waits_for_the_close():
    sync = Selection("davis:J&F-Mean", "max", 0.5, (20,))
    rung = Rung(20, sync)
    assert [rung.report(r, v).paused for r, v in (("a", 0.1), ("b", 0.5), ("c", 0.3))] == [["a"], ["b"], ["c"]]
    assert rung.close().promoted == ["b", "c"]


def sync_cascade(selection: Selection, values: dict[str, list[float]], failed: set[str]) -> list[set[str]]:
    """The synchronous decisions: each rung ranks the runs the previous one kept."""
    live, out = set(values) - failed, []
    for index in range(len(selection.rungs)):
        ranked = rank_runs({r: values[r][index] for r in live}, selection.mode, selection.keep)
        live = {r.run_id for r in ranked if r.kept}
        out.append(live)
    return out


def drive(selection: Selection, values: dict[str, list[float]], rng: random.Random, failed: set[str]) -> Promotion:
    """Feed a sweep's reports in a random order; a run reports at a rung once promoted at the one
    before; a demoted run's later reports never arrive. Failures arrive at random times too."""
    promotion = Promotion(selection, sorted(values))
    pending = {(r, 0) for r in values if r not in failed} | {(r, "fail") for r in failed}
    while pending:
        run, index = rng.choice(sorted(pending, key=str))
        pending.discard((run, index))
        if index == "fail":
            changes = promotion.exclude(run)
        else:
            changes = promotion.report(run, selection.rungs[index], values[run][index])
        for change in changes:
            assert replay(json.loads(json.dumps(change.record))) == change.outcome
            at = promotion.rung_index(change.rung)
            for promoted in change.outcome.promoted:
                if at + 1 < len(selection.rungs):
                    pending.add((promoted, at + 1))
            pending -= {(r, i) for r, i in pending if r in change.outcome.demoted}
    return promotion


@pytest.mark.parametrize("seed", range(40))
def test_once_every_run_has_reported_the_state_is_the_synchronous_decision(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 24)
    keep = rng.choice([0.25, 1 / 3, 0.5, 0.7])
    selection = Selection("davis:J&F-Mean", rng.choice(["max", "min"]), keep, (20, 40, 80), "async", rng.randint(1, n))
    # few distinct values: ties are common
    values = {f"run{i:02d}": [rng.randint(0, 6) / 6 for _ in selection.rungs] for i in range(n)}
    failed = set(rng.sample(sorted(values), rng.randint(0, 2)))
    promotion = drive(selection, values, rng, failed)
    assert all(rung.closed for rung in promotion.rungs)
    expected = sync_cascade(selection, values, failed)
    assert [promotion.kept(step) - failed for step in selection.rungs] == [e - failed for e in expected]
    last = selection.rungs[-1]
    assert {r for r in values if promotion.state(r) == ("training", last)} == expected[-1] - failed
    # the sweep's log, stored and read back, rebuilds the same state
    rebuilt = Promotion.from_log(selection, sorted(values), json.loads(json.dumps(promotion.log)))
    assert {r: rebuilt.state(r) for r in values} == {r: promotion.state(r) for r in values}


def test_replaying_a_record_gives_the_same_promotions_and_a_tampered_one_does_not():
    promotion = Promotion(ASYNC, ["a", "b", "c"])
    promotion.report("a", 20, 0.3)
    change = promotion.report("b", 20, 0.5)[0]
    record = json.loads(json.dumps(change.record))
    assert record["inputs"] == [["report", "a", 0.3], ["report", "b", 0.5]]
    assert replay(record) == change.outcome and change.outcome.promoted == ["b"]
    record["inputs"][0][2] = 0.9  # a's value changed: a, not b, goes on
    assert replay(record).promoted == ["a"]
    with pytest.raises(ValueError, match="not an asynchronous promotion record"):
        replay({"format": "rsp-rung-decision/1"})
    with pytest.raises(ValueError, match=r"input 1 of the record \(\['promote', 'a'\]\) is not report, withdraw or close"):
        replay({**record, "inputs": [["report", "a", 0.3], ["promote", "a"]]})
    with pytest.raises(ValueError, match="select block is not valid: select.keep"):
        replay({**record, "select": {**record["select"], "keep": 2}})


def test_a_run_reports_at_a_rung_only_once_promoted_at_the_one_before():
    promotion = Promotion(ASYNC, ["a", "b", "c"])
    with pytest.raises(ValueError, match="a is not live at rung 40"):
        promotion.report("a", 40, 0.1)


def test_the_state_of_each_run_paused_promoted_pruned_or_demoted():
    promotion = Promotion(ASYNC, ["a", "b", "c", "d"])
    for run, value in (("a", 0.1), ("b", 0.5), ("c", 0.3)):
        promotion.report(run, 20, value)
    assert [promotion.state(r) for r in "abcd"] == [("paused", 20), ("training", 20), ("training", 20), ("training", None)]
    promotion.report("c", 40, 0.2)  # c goes on to rung 40, then d's report closes rung 20 without it
    promotion.report("d", 20, 0.9)
    assert [promotion.state(r) for r in "abcd"] == [("pruned", 20), ("training", 20), ("pruned", 20), ("training", 20)]
    assert "c" not in promotion.rungs[1].values  # the demoted run's value at 40 was withdrawn
    with pytest.raises(ValueError, match="entry 0 of the promotion log"):
        Promotion.from_log(ASYNC, ["a"], [["promote", "a"]])


# --- the select block's promotion keys: one test per rule ----------------------------------------------

BASE = {"metric": "davis:J&F-Mean", "rungs": [20]}


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"promotion": "asha"}, "select.promotion ('asha') must be sync"),
        ({"promotion": "async"}, "select.min_reports (None) must be a whole number >= 1 with promotion: async"),
        ({"promotion": "async", "min_reports": 0}, "select.min_reports (0) must be a whole number >= 1"),
        ({"min_reports": 4}, "select.min_reports (4) applies to promotion: async only"),
    ],
)
def test_promotion_rule(extra, expected):
    selection, problems = parse_selection({**BASE, **extra})
    assert selection is None and any(expected in p for p in problems), problems


def test_async_with_a_minimum_count_larger_than_the_sweep_is_refused():
    selection, problems = parse_selection({**BASE, "promotion": "async", "min_reports": 9})
    assert problems == [] and sweep_size_problems(selection, 9) == []
    (message,) = sweep_size_problems(selection, 8)
    assert message.startswith("select.min_reports (9) is larger than the sweep (8 runs)") and "at most 8" in message


def test_a_synchronous_block_records_as_before_the_promotion_keys():
    sync, _ = parse_selection(BASE)
    assert sync.to_dict() == {"metric": "davis:J&F-Mean", "mode": "max", "keep": 0.5, "rungs": [20]}
    early, _ = parse_selection({**BASE, "promotion": "async", "min_reports": 3})
    assert early.to_dict()["promotion"] == "async" and parse_selection(early.to_dict())[0] == early


def write_sweep(tmp_path, select: str) -> str:
    """A three-run sweep file of the smoke experiment with `select`."""
    path = tmp_path / "halving.yaml"
    overrides = ["evaluation.tasks=[davis]", f"output_root={tmp_path / 'runs'}", f"data.root={tmp_path / 'videos'}"]
    path.write_text(
        f"experiment: smoke\noverrides: {json.dumps(overrides)}\nname: 'lr{{optim.lr}}'\n"
        f"axes:\n  - key: optim.lr\n    values: [0.001, 0.002, 0.003]\nselect: {select}\n"
    )
    return str(path)


def test_the_plan_refuses_a_minimum_count_larger_than_the_sweep(tmp_path):
    sweep = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', rungs: [20], promotion: async, min_reports: 4}")
    problems = plan_sweep(load_sweep(sweep), [], tmp_path).problems
    assert any(p.startswith("select.min_reports (4) is larger than the sweep (3 runs)") for p in problems), problems
    fits = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', rungs: [20], promotion: async, min_reports: 3}")
    assert not any("larger than the sweep" in p for p in plan_sweep(load_sweep(fits), [], tmp_path).problems)


def test_async_promotion_is_refused_only_on_a_backend_that_runs_inside_the_submitting_process(tmp_path):
    sweep = write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', rungs: [20], promotion: async, min_reports: 2}")
    local = plan_sweep(load_sweep(sweep), ["cluster=local"], tmp_path).problems
    assert not any("select.promotion" in p for p in local), local
    debug = plan_sweep(load_sweep(sweep), ["cluster=debug"], tmp_path).problems
    assert any(p.startswith("select.promotion: async needs runs in jobs of their own") for p in debug), debug


def test_the_simulator_drives_the_rule_to_the_synchronous_kept_runs_and_prices_pausing():
    """bench/sweep_sim.py on a small sweep: async ends with the runs the synchronous rule keeps,
    every strategy's compute is counted step by step, and pausing is what saves it."""
    from argparse import Namespace

    from bench.sweep_sim import TOTAL_STEPS, Curves, Simulation

    steps = [TOTAL_STEPS // 27, TOTAL_STEPS // 9, TOTAL_STEPS // 3, TOTAL_STEPS]
    curves = Curves.draw(60, steps, Namespace(quality_low=0.25, quality_high=1.25, speed_spread=0.5), seed=3)
    kept, compute = {}, {}
    for strategy, promotion, pauses in (("async", "async", True), ("sync-pause", "sync", True), ("sync", "sync", False)):
        selection = Selection("davis:J&F-Mean", "max", 1 / 3, tuple(steps[:-1]), promotion, 8 if promotion == "async" else None)
        sim = Simulation(curves, strategy, 8, selection)
        out = sim.run()
        assert sim.pauses == pauses and all(rung.closed for rung in sim.promotion.rungs)
        kept[strategy], compute[strategy] = sim.promotion.kept(steps[-2]), out["compute"]
        assert kept[strategy] <= {str(i) for i in out["finished"]}  # every run kept at the last rung trained to its end
    assert kept["async"] == kept["sync-pause"] == kept["sync"]
    # sync-pause trains each run exactly to where the synchronous rule stops it
    survivors = [60, 20, 7, 3]  # ceil(n / 3) per rung (ties aside)
    exact = sum(n * (b - a) for n, a, b in zip(survivors, [0, *steps], steps, strict=False))
    assert compute["sync-pause"] == exact < compute["async"] < compute["sync"] < 60 * TOTAL_STEPS


def test_a_paused_attempt_is_never_requeued_and_its_status_stays_the_jobs():
    paused = Attempt(0, "1", "1/0", ["node"], 0.0, 0, end_time=5.0, end_step=20, end_reason="paused")
    decision = decide([paused], ClusterConfig())
    assert (decision.requeue, decision.final_state) == (False, None), decision
    assert "paused at rung 20" in decision.reason


def test_resubmitting_an_async_sweep_starts_nothing_paused(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, "{metric: 'davis:J&F-Mean', rungs: [20], promotion: async, min_reports: 2}"))
    first = plan_sweep(sweep, ["cluster=local"], tmp_path).rows[0]
    first.rundir.create(first.run.cfg)
    first.rundir.set_status("paused", "paused at rung 20 of its asynchronous sweep")
    rows = plan_sweep(sweep, ["cluster=local"], tmp_path).rows
    assert [(r.state.state, r.action) for r in rows] == [("paused", "nothing"), ("missing", "submit"), ("missing", "submit")]
