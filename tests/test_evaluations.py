"""Evaluation jobs without a scheduler or a real evaluation: the job's evaluate (eval.run.evaluate) is
replaced, so these tests check the launcher's bookkeeping (records, failures, the teardown's
decisions, lost evaluations and their pins), not the metrics. tests/test_eval_kills_slurm.py kills
real evaluation jobs on the local cluster."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import launch.evaluations.job
from eval.records import ResultRecord, parse_record
from launch.config import compose
from launch.evaluations.claims import FAILED, claim_and_pin, failure, mark_stopped, mark_submitted
from launch.evaluations.expected import expected
from launch.evaluations.job import EvaluationJob
from launch.evaluations.recovery import evaluation_states, recover
from launch.evaluations.teardown import settle
from launch.rundir import RunDirectory
from rsp.manifest import Manifest, checkpoint_name


def run_with_checkpoint(root: Path, name: str, step: int, extra: tuple[str, ...] = (), weights: str = "") -> RunDirectory:
    """A run directory holding one committed (fake) milestone checkpoint at `step` (`weights`: its weights digest)."""
    cfg = compose(["cluster=debug", f"output_root={root}", f"name={name}", "evaluation.tasks=[davis,vip]", *extra])
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    checkpoints = run.path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / checkpoint_name(step)).write_bytes(b"weights")
    name = checkpoint_name(step)
    manifest = Manifest(step, name, "0" * 64, 7, "c" * 64, True, cfg.model.name, "abc", 0.0, weights_sha256=weights)
    (checkpoints / f"step_{step:08d}.json").write_text(json.dumps(manifest.__dict__))
    return run


def test_a_failed_task_is_reported_even_when_the_run_name_contains_its_name(tmp_path, monkeypatch):
    from eval.run import EvalOutcome

    def fake_evaluate(ecfg):
        if ecfg.task == "davis":
            raise RuntimeError("davis broke")
        return EvalOutcome(ecfg.task, {"mIoU": 0.5}, {"preset": "vip"}, Path(ecfg.output_dir), 0.1)

    monkeypatch.setattr(launch.evaluations.job, "evaluate", fake_evaluate)
    run = run_with_checkpoint(tmp_path, "davis-study", step=2)  # every record path contains "davis"
    with pytest.raises(RuntimeError, match="failed for davis;"):
        EvaluationJob(str(run.path), 2, ["vip", "davis"])()
    assert len(list(run.path.glob(f"evals/step_00000002/davis-*/{FAILED}"))) == 1
    assert len(list(run.path.glob("evals/step_00000002/vip-*/record.json"))) == 1


# --- identical weights are evaluated once -------------------------------------------------------


class CountingEvaluate:
    """eval.run.evaluate's stand-in: counts its calls; each takes `seconds` and gives a new number."""

    def __init__(self, seconds: float = 0.0):
        self.calls, self.seconds, self.lock = [], seconds, threading.Lock()

    def __call__(self, ecfg):
        from eval.run import EvalOutcome

        time.sleep(self.seconds)
        with self.lock:
            self.calls.append(ecfg.checkpoint)
            value = 0.1 * len(self.calls)
        return EvalOutcome(ecfg.task, {"J&F-Mean": value}, {"checkpoint": str(ecfg.checkpoint)}, Path(ecfg.output_dir), 0.1)


def davis_record(run: RunDirectory, step: int) -> ResultRecord:
    return parse_record(next(run.path.glob(f"evals/step_{step:08d}/davis-*/record.json")))


def test_identical_weights_are_evaluated_once_and_the_others_name_that_record(tmp_path, monkeypatch):
    evaluate = CountingEvaluate()
    monkeypatch.setattr(launch.evaluations.job, "evaluate", evaluate)
    a, b = (run_with_checkpoint(tmp_path, f"lr{i}", 0, (f"optim.lr={i}e-3",), weights="w" * 64) for i in (1, 2))
    other = run_with_checkpoint(tmp_path, "seed9", 0, ("runtime.seed=9",), weights="v" * 64)
    old = run_with_checkpoint(tmp_path, "old", 0, ("optim.lr=5e-3",))  # a manifest from before weights digests
    for run in (a, b, other, old):
        EvaluationJob(str(run.path), 0, ["davis"])()
    assert len(evaluate.calls) == 3  # a, other, old: b repeats a
    first, second = davis_record(a, 0), davis_record(b, 0)
    assert first.same_as == "" and second.same_as == str(next(a.path.glob("evals/step_00000000/davis-*/record.json")))
    assert second.metrics == first.metrics and second.protocol_hash == first.protocol_hash
    assert second.run_id != first.run_id and second.protocol["checkpoint"] == str(b.path / "checkpoints" / checkpoint_name(0))
    assert davis_record(other, 0).metrics != first.metrics and davis_record(old, 0).same_as == ""
    # a record named by the index that vanished (or was rewritten) is never trusted: evaluated again
    next(a.path.glob("evals/step_00000000/davis-*/record.json")).unlink()
    c = run_with_checkpoint(tmp_path, "lr3", 0, ("optim.lr=3e-3",), weights="w" * 64)
    EvaluationJob(str(c.path), 0, ["davis"])()
    assert len(evaluate.calls) == 4 and davis_record(c, 0).same_as == ""
    # numbers computed by other code are not reused: a fixed evaluation evaluates again
    monkeypatch.setattr(launch.evaluations.job, "code_version", lambda: "a-fixed-evaluation")
    d = run_with_checkpoint(tmp_path, "lr4", 0, ("optim.lr=4e-3",), weights="w" * 64)
    EvaluationJob(str(d.path), 0, ["davis"])()
    assert len(evaluate.calls) == 5 and davis_record(d, 0).same_as == ""


def test_concurrent_evaluations_of_identical_weights_compute_once(tmp_path, monkeypatch):
    evaluate = CountingEvaluate(seconds=1.0)
    monkeypatch.setattr(launch.evaluations.job, "evaluate", evaluate)
    runs = [run_with_checkpoint(tmp_path, f"lr{i}", 0, (f"optim.lr={i}e-3",), weights="w" * 64) for i in range(1, 5)]
    threads = [threading.Thread(target=EvaluationJob(str(r.path), 0, ["davis"])) for r in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(evaluate.calls) == 1  # the other three waited on the key's lock, then reused it
    records = [davis_record(r, 0) for r in runs]
    assert len({json.dumps(r.metrics) for r in records}) == 1 and sum(r.same_as == "" for r in records) == 1


# --- evaluation jobs that end without a word: their teardown and the recovery --------------------


def claimed(run: RunDirectory, step: int, task: str, job_id: str, backend: str = "slurm", stopped: bool = False) -> Path:
    """Claim the `task` evaluation of checkpoint `step` for job `job_id`, pinning the checkpoint."""
    directory = next(d for s, t, d in expected(run) if s == step and t == task)
    assert claim_and_pin(run, step, directory)
    mark_submitted(directory, job_id, backend)
    if stopped:
        mark_stopped(directory, "SIGUSR2")
    return directory


def pins(run: RunDirectory) -> list[str]:
    return sorted(p.name for p in (run.path / "checkpoints" / "pins").glob("*"))


def test_every_death_of_an_evaluation_job_leaves_failed_json_and_releases_the_pin(tmp_path):
    run = run_with_checkpoint(tmp_path, "r", step=2)
    davis = claimed(run, 2, "davis", "77")
    assert pins(run)
    assert settle(run, "77", 1, [], 0, tmp_path) == "nothing"  # died while importing: no record, no error of its own
    error = failure(davis).error
    assert "exited with status 1 before recording a result or an error" in error and "77_0_log.err" in error
    assert pins(run) == []


def test_a_stopped_evaluation_job_is_requeued_within_its_budget_then_given_up(tmp_path):
    run = run_with_checkpoint(tmp_path, "r", step=2)  # evaluation.max_requeues = 3 (the default)
    davis = claimed(run, 2, "davis", "78", stopped=True)
    assert settle(run, "78", 1, [], 0, tmp_path) == "requeue" and not (davis / FAILED).exists()
    assert settle(run, "78", 1, [("USR2", 1.0)], 2, tmp_path) == "requeue"  # the batch shell got the time limit's signal
    assert settle(run, "78", 1, [("USR2", 1.0)], 3, tmp_path) == "nothing"  # the 4th stop
    assert "more than evaluation.max_requeues (3); raise evaluation.time_minutes" in (davis / FAILED).read_text()
    assert pins(run) == []


def test_an_evaluation_job_the_scheduler_ended_is_left_to_the_scheduler_and_the_recovery(tmp_path):
    run = run_with_checkpoint(tmp_path, "r", step=2)
    davis = claimed(run, 2, "davis", "79")
    assert settle(run, "79", 0, [("TERM", 1.0)], 0, tmp_path) == "nothing"  # scancel, scontrol requeue, the limit's kill
    assert not (davis / FAILED).exists() and pins(run)


def test_lost_evaluations_are_found_and_given_up_after_their_budget(tmp_path):
    cfg = ["evaluation.max_resubmissions=0"]
    run = run_with_checkpoint(tmp_path, "r", step=2, extra=cfg)
    davis = claimed(run, 2, "davis", "999999999", backend="local")  # a local job (pid) that is gone: lost
    vip = next(d for s, t, d in expected(run) if t == "vip")
    states = {e.task: e for e in evaluation_states([run])}
    assert states["davis"].state == "lost" and "ended" in states["davis"].detail
    assert states["vip"].state == "unclaimed" and not vip.exists()
    resubmitted, given_up = recover(list(states.values()))
    assert resubmitted == [] and given_up == [f"{run.path.name} step 2 davis"]
    assert "lost 1 times: its jobs (999999999)" in (davis / FAILED).read_text() and pins(run) == []
    assert {e.task: e.state for e in evaluation_states([run])} == {"davis": "failed", "vip": "unclaimed"}
    assert recover(evaluation_states([run])) == ([], [])  # nothing lost any more
