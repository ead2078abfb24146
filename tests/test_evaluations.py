"""Evaluation jobs without a scheduler or a real evaluation: the job's evaluate (eval.run.evaluate) is
replaced, so these tests check the launcher's bookkeeping (records, failures, the teardown's
decisions, lost evaluations and their pins), not the metrics. tests/test_eval_kills_slurm.py kills
real evaluation jobs on the local cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch.evaluations.job
from launch.config import compose
from launch.evaluations.claims import FAILED, claim_and_pin, mark_stopped, mark_submitted
from launch.evaluations.expected import expected
from launch.evaluations.job import EvaluationJob
from launch.evaluations.recovery import evaluation_states, recover
from launch.evaluations.teardown import settle
from launch.rundir import RunDirectory
from rsp.manifest import Manifest, checkpoint_name


def run_with_checkpoint(root: Path, name: str, step: int, extra: tuple[str, ...] = ()) -> RunDirectory:
    """A run directory holding one committed (fake) milestone checkpoint at `step`."""
    cfg = compose(["cluster=debug", f"output_root={root}", f"name={name}", "evaluation.tasks=[davis,vip]", *extra])
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    checkpoints = run.path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / checkpoint_name(step)).write_bytes(b"weights")
    manifest = Manifest(step, checkpoint_name(step), "0" * 64, 7, "c" * 64, True, cfg.model.name, "abc", 0.0)
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
    error = json.loads((davis / FAILED).read_text())["error"]
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
