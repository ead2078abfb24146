"""The files side of asynchronous promotion (launch/sweeps/async_rungs.py), without jobs: rung values
arrive as result records one by one, each advance feeds the new ones to the rule in the order the
records were created, writes every outcome down so that it replays, and the close is an ordinary
decision; a run pruned while paused is `pruned` at once. The jobs side (pause, resubmission,
bitwise resume) is tests/test_async_local.py's and tests/test_async_slurm.py's."""

from __future__ import annotations

import json

from eval.records import RECORD_NAME, ResultRecord, write_record
from launch.plan import plan_sweep
from launch.sweeps.async_rungs import decide_async, load_promotion
from launch.sweeps.expand import load_sweep
from launch.sweeps.promotion import replay
from launch.sweeps.pruned_jobs import end_pruned_without_jobs
from launch.sweeps.rungs import Decision, SweepDirectory, record_dir

RUNG = 20
SELECT = f"{{metric: 'davis:J&F-Mean', keep: 0.5, rungs: [{RUNG}], promotion: async, min_reports: 2}}"


def four_run_sweep(tmp_path):
    path = tmp_path / "asyncs.yaml"
    overrides = ["evaluation.tasks=[davis]", f"output_root={tmp_path / 'runs'}", f"data.root={tmp_path / 'videos'}"]
    path.write_text(
        f"experiment: smoke\noverrides: {json.dumps(overrides + ['cluster=local'])}\nname: 'lr{{optim.lr}}'\n"
        f"axes:\n  - key: optim.lr\n    values: [0.001, 0.002, 0.003, 0.004]\nselect: {SELECT}\n"
    )
    sweep = load_sweep(str(path))
    rows = plan_sweep(sweep, [], tmp_path).rows
    for row in rows:
        row.rundir.create(row.run.cfg)
        row.rundir.record_sweep(sweep.name, {})
    directory = SweepDirectory(tmp_path / "runs", sweep.name)
    directory.write_record(sweep.selection, {row.rundir.info().run_id: row.rundir.path.name for row in rows})
    return directory, [row.rundir for row in rows]


def report(run, value: float, created: float) -> None:
    """The run's evaluation record at the rung, as an evaluation job writes it."""
    info, directory = run.info(), record_dir(run, RUNG, "davis")
    record = ResultRecord(
        info.run_id, info.name, info.config_hash, RUNG, "davis", directory.name.rsplit("-", 1)[1], {},
        {"J&F-Mean": value}, "0" * 64, str(run.path / "checkpoints"), "test", "1", 1.0, created=created,
    )  # fmt: skip
    write_record(directory / RECORD_NAME, record)


def advance(directory):
    """What launch/advance.py does for an async sweep: decide, then end pruned runs without a job."""
    done = decide_async(directory, "test")
    end_pruned_without_jobs(directory)
    return done


def test_values_are_fed_in_record_order_promoted_early_and_closed_as_a_decision(tmp_path):
    directory, (a, b, c, d) = four_run_sweep(tmp_path)
    a.set_status("paused", "paused at rung 20")  # a stopped at the rung; the others still train
    report(b, 0.5, created=2.0)
    report(a, 0.1, created=1.0)  # written later, created first: it is the first input
    done = advance(directory)
    assert (done.paused, done.promoted) == ([f"{a.path.name} at step {RUNG}"], [f"{b.path.name} at step {RUNG}"])
    assert advance(directory).promoted == []  # every value is fed once

    report(c, 0.3, created=3.0)  # 3 reported: the top 2 (b, c) go on; a stays paused
    assert advance(directory).promoted == [f"{c.path.name} at step {RUNG}"]
    assert not directory.decision_path(RUNG).exists() and a.final_state() == "paused"

    report(d, 0.2, created=4.0)  # the last member: the rung closes with the synchronous ranking
    done = advance(directory)
    assert done.closed and done.resumed == []
    decision = Decision.read(directory.decision_path(RUNG))
    rid = {run.path: run.info().run_id for run in (a, b, c, d)}
    assert sorted(decision.kept) == sorted([rid[b.path], rid[c.path]])
    assert sorted(decision.pruned) == sorted([rid[a.path], rid[d.path]])
    assert a.final_state() == "pruned" and a.status().pruned.rung == RUNG  # paused: no job to stop it
    assert d.prune_marker() is not None and d.final_state() is None  # still training: its job obeys the marker

    log = json.loads((directory.path / "promotion" / "log.json").read_text())
    assert [entry[1] for entry in log] == [rid[r.path] for r in (a, b, c, d)]
    records = [json.loads(p.read_text()) for p in sorted((directory.path / "promotion" / "records").glob("*.json"))]
    assert [replay(r).to_dict() for r in records] == [r["outcome"] for r in records] and records[-1]["outcome"]["closed"]
    rebuilt = load_promotion(directory, directory.selection())
    assert rebuilt.state(rid[b.path]) == ("training", RUNG) and rebuilt.state(rid[a.path]) == ("pruned", RUNG)


def test_a_failed_run_is_excluded_so_the_rung_closes_without_it(tmp_path):
    directory, (a, b, c, d) = four_run_sweep(tmp_path)
    for run in (c, d):
        run.set_status("failed", "crashed twice at step 7")
    report(a, 0.2, created=1.0)
    report(b, 0.4, created=2.0)
    done = advance(directory)
    decision = Decision.read(directory.decision_path(RUNG))
    assert done.closed and decision.live == 2 and decision.kept == [b.info().run_id], decision
    log = json.loads((directory.path / "promotion" / "log.json").read_text())
    assert sorted(entry for entry in log if entry[0] == "exclude") == sorted(["exclude", r.info().run_id] for r in (c, d))
