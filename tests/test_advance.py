"""The one owner of state transitions (launch/advance.py) and the records it trusts: `status
--no-advance` writes nothing (the tree is hashed before and after) while `status` decides a due
rung and gives up a lost evaluation; a truncated, out-of-range or inconsistent record is reported by
name, never counted or ranked, and a backfill moves it aside (never deleting it) and evaluates
again; a resubmitted evaluation is not labelled with the stop of the job it replaces."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import launch.evaluations.job
from eval.records import ResultRecord, parse_record, read_records, write_record
from launch.advance import Missing, Report, advance
from launch.config import compose
from launch.evaluations.claims import claim_and_pin, mark_stopped, mark_submitted
from launch.evaluations.expected import expected
from launch.evaluations.recovery import Resubmission, evaluation_states
from launch.results import aggregate_runs
from launch.rundir import RunDirectory
from launch.status import main as status_main
from launch.status import render
from launch.sweeps.rungs import SweepDirectory, record_dir, rung_views
from launch.sweeps.selection import Selection
from rsp.manifest import Manifest, checkpoint_name

SELECT = Selection("davis:J&F-Mean", "max", 0.5, (20, 40))


def tree_state(root: Path) -> dict[str, tuple]:
    """Every file and directory under `root`: its kind, content hash and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = ("dir", path.stat().st_mtime_ns)
        for name in filenames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


def run_with_checkpoint(root: Path, name: str, step: int, *extra: str) -> RunDirectory:
    """A run directory holding one committed (fake) milestone checkpoint at `step`."""
    cfg = compose(["cluster=debug", f"output_root={root}", f"name={name}", "evaluation.tasks=[davis]", *extra])
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    checkpoints = run.path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / checkpoint_name(step)).write_bytes(b"weights")
    manifest = Manifest(step, checkpoint_name(step), "0" * 64, 7, "c" * 64, True, cfg.model.name, "abc", 0.0)
    (checkpoints / f"step_{step:08d}.json").write_text(json.dumps(manifest.__dict__))
    return run


def sweep_of(root: Path, n: int = 4) -> tuple[SweepDirectory, list[RunDirectory]]:
    base = compose(["experiment=smoke", "evaluation.tasks=[davis]", f"output_root={root}"])
    runs = []
    for i in range(n):
        cfg = copy.deepcopy(base)
        cfg.optim.lr, cfg.name = 0.001 * (i + 1), f"run{i}"
        run = RunDirectory.for_config(cfg)
        run.create(cfg)
        run.record_sweep("s", {"optim.lr": cfg.optim.lr})
        runs.append(run)
    sweep = SweepDirectory(root, "s")
    sweep.write_record(SELECT, {r.info().run_id: r.path.name for r in runs})
    return sweep, runs


def record_for(run: RunDirectory, step: int, value: float, sha: str = "s" * 64) -> ResultRecord:
    info = run.info()
    return ResultRecord(
        info.run_id, info.name, info.config_hash, step, "davis", "p" * 64, {}, {"J&F-Mean": value},
        sha, str(run.path / "checkpoints" / checkpoint_name(step)), "v", "1", 1.0,
    )  # fmt: skip


def test_status_no_advance_changes_nothing_on_disk_and_status_advances(tmp_path, capsys):
    root = tmp_path / "runs"
    sweep, runs = sweep_of(root)
    for i, run in enumerate(runs):  # every live run has its rung-20 value: the rung is due
        write_record(record_dir(run, 20, "davis") / "record.json", record_for(run, 20, 0.1 * (i + 1)))
    lost_run = run_with_checkpoint(root, "lost", 2, "evaluation.max_resubmissions=0", "optim.lr=0.5")
    (_, _, lost), *_ = expected(lost_run)
    assert claim_and_pin(lost_run, 2, lost)
    mark_submitted(lost, "999999999", "local")  # a local job (pid) that is gone: lost
    before = tree_state(root)
    assert status_main([str(root), "--no-advance"]) == 0
    shown = capsys.readouterr().out
    assert tree_state(root) == before  # nothing written, renamed, created or touched
    assert "step 20: due (4 of 4 values in)" in shown and f"{lost_run.path.name} step 2 davis: lost" in shown
    assert sweep.decisions() == {} and not (lost / "failed.json").exists()
    assert status_main([str(root), "sweep=s"]) == 0  # status advances what it shows: this sweep's runs only
    shown = capsys.readouterr().out
    names = [r.path.name for r in runs]
    assert f"decided sweep s step 20 (status): kept {names[3]}, {names[2]}; pruned {names[1]}, {names[0]}" in shown
    assert [r.prune_marker() is not None for r in runs] == [True, True, False, False]
    assert not (lost / "failed.json").exists()  # not a run of sweep s
    assert status_main([str(root)]) == 0
    assert f"gave up on lost evaluation (failed.json): {lost_run.path.name} step 2 davis" in capsys.readouterr().out
    assert (lost / "failed.json").is_file() and tree_state(root) != before


def test_a_second_advance_finds_nothing_to_do(tmp_path):
    root = tmp_path / "runs"
    sweep, runs = sweep_of(root, n=2)
    for i, run in enumerate(runs):
        write_record(record_dir(run, 20, "davis") / "record.json", record_for(run, 20, 0.1 * (i + 1)))
    first = advance(root, role="test")
    assert len(first.decided) == 1 and first.changed
    again = advance(root, role="test")
    assert not again.changed and again.lines() == []


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda text: text[: len(text) // 2], "unreadable"),  # truncated
        (lambda text: text.replace('"J&F-Mean": 0.5', '"J&F-Mean": 1.7'), "J&F-Mean = 1.7 is outside [0, 1]"),
        (lambda text: text.replace('"J&F-Mean": 0.5', '"J&F-Mean": "0.5"'), "metrics must be finite numbers"),
        (lambda text: text.replace("0" * 64, "f" * 64), "is not the sha256 in step 2's checkpoint manifest"),
    ],
    ids=["truncated", "out-of-range", "string", "other-weights"],
)
def test_an_invalid_record_is_named_never_counted_and_backfill_evaluates_again(tmp_path, monkeypatch, damage, reason):
    from eval.run import EvalOutcome

    root = tmp_path / "runs"
    run = run_with_checkpoint(root, "r", 2)
    (_, _, directory), *_ = expected(run)
    assert claim_and_pin(run, 2, directory)
    mark_submitted(directory, "1", "debug")
    path = write_record(directory / "record.json", record_for(run, 2, 0.5, sha="0" * 64))
    assert evaluation_states([run])[0].state == "recorded"
    path.write_text(damage(path.read_text()))
    bad = path.read_text()
    (state,) = evaluation_states([run])
    assert state.state == "invalid" and reason in state.detail and str(path) in state.detail
    shown = render(root, None)  # status: named, counted 0 of 1, no traceback
    assert " 0/1 " in shown and f"{run.path.name} step 2 davis: invalid record, not counted" in shown
    records, warnings = read_records([path])  # aggregation: skipped with a warning naming it
    assert records == [] and any(str(path) in w for w in warnings)

    def evaluate(ecfg):
        return EvalOutcome(ecfg.task, {"J&F-Mean": 0.25}, {"preset": "rsp"}, Path(ecfg.output_dir), 0.1)

    monkeypatch.setattr(launch.evaluations.job, "evaluate", evaluate)
    report = advance(root, role="backfill", missing=Missing("debug"))
    (moved,) = report.set_aside
    assert reason in moved and "record.invalid-000.json" in moved
    assert (directory / "record.invalid-000.json").read_text() == bad  # kept as it was, never deleted
    assert parse_record(path).metrics == {"J&F-Mean": 0.25} and evaluation_states([run])[0].state == "recorded"


def test_an_invalid_record_at_a_rung_waits_with_its_name_instead_of_ranking(tmp_path):
    root = tmp_path / "runs"
    sweep, runs = sweep_of(root, n=2)
    paths = [write_record(record_dir(r, 20, "davis") / "record.json", record_for(r, 20, 0.4)) for r in runs]
    paths[1].write_text(paths[1].read_text().replace('"J&F-Mean": 0.4', '"J&F-Mean": 1.7'))
    (view,) = rung_views(sweep)
    rid = runs[1].info().run_id
    assert not view.due and "1.7 is outside [0, 1]" in view.waiting[rid] and "backfill" in view.waiting[rid]
    assert advance(root, role="test").decided == [] and sweep.decisions() == {}
    assert "waiting for 1 run(s)" in render(root, "s")


def test_a_resubmitted_evaluation_is_not_shown_as_stopped(tmp_path):
    run = run_with_checkpoint(tmp_path / "runs", "r", 2)
    (_, _, directory), *_ = expected(run)
    assert claim_and_pin(run, 2, directory)
    # a live local job: the local backend knows its controller by "submitit" on its command line
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit"])
    try:
        mark_submitted(directory, str(job.pid), "local")
        mark_stopped(directory, "SIGUSR2")
        assert "(stopped, requeued)" in evaluation_states([run])[0].detail  # the same job, stopped and requeued
        mark_submitted(directory, str(job.pid), "local", lost=["123"])  # a new job replaces the lost 123
        (state,) = evaluation_states([run])
    finally:
        job.kill()
        job.wait()
    assert state.state == "running" and "stopped" not in state.detail and "resubmission after lost job(s) 123" in state.detail
    assert (directory / "stopped.lost-001.json").is_file()  # the lost job's stop, kept


def test_generated_is_decided_from_the_data_a_record_was_measured_on(tmp_path):
    generated, real = tmp_path / "generated", tmp_path / "real"
    generated.mkdir(), real.mkdir()
    (generated / ".generated").write_text("generated davis set\n")
    record = record_for(run_with_checkpoint(tmp_path / "runs", "r", 2), 2, 0.5)
    record.protocol = {"data_root": str(generated)}  # written by code older than the generated_set field
    assert record.measured_on_generated is True
    record.protocol = {"data_root": str(real)}
    assert record.measured_on_generated is False
    record.protocol = {}  # neither (a hand-made record): it cannot be told
    assert record.measured_on_generated is None


def test_aggregation_keeps_an_older_generated_record_out_of_paper_md(tmp_path):
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / ".generated").write_text("generated davis set\n")
    run = run_with_checkpoint(tmp_path / "runs", "r", 2)
    for step in (0, 2):
        record = record_for(run, step, 0.3 + step / 10)
        record.protocol = {"data_root": str(generated)}  # no generated_set field: an older record
        write_record(record_dir(run, step, "davis") / "record.json", record)
    report = aggregate_runs(tmp_path / "runs", tmp_path / "results", plots=False, tensorboard=False)
    assert "| ours:" not in (report.out / "paper.md").read_text()
    assert set(report.table["generated"]) == {"davis"}


def test_backfill_counts_the_lost_evaluations_it_resubmitted_with_the_new_ones():
    """Backfill printed "resubmitted lost evaluation: ... as job 7" and then "0 evaluation job(s)
    submitted": its summary now counts every job it submitted, new and resubmitted, by run."""
    report = Report(resubmitted=[Resubmission("r-1", 2, "davis", "7")], submitted={"r-1": [], "q-2": ["8", "9"], "p-3": []})
    assert str(report.resubmitted[0]) == "r-1 step 2 davis as job 7"
    assert report.jobs_of("r-1") == ([], ["7"]) and report.jobs_of("q-2") == (["8", "9"], [])
    assert report.submission_summary() == [
        "q-2: 2 evaluation job(s) submitted (2 new, 0 resubmitted after a lost job) 8 9",
        "r-1: 1 evaluation job(s) submitted (0 new, 1 resubmitted after a lost job) 7",
        "3 evaluation job(s) submitted: 2 new, 1 resubmitted after a lost job",
    ]
    assert Report(submitted={"p-3": []}).submission_summary() == ["no evaluation job submitted"]
