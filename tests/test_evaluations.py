"""Evaluation jobs without a scheduler or a real evaluation: the job's evaluate (eval.run.evaluate) is
replaced, so these tests check the launcher's bookkeeping (records, failures), not the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch.evaluations.job
from launch.config import compose
from launch.evaluations.claims import FAILED
from launch.evaluations.job import EvaluationJob
from launch.rundir import RunDirectory
from rsp.manifest import Manifest, checkpoint_name


def run_with_checkpoint(root: Path, name: str, step: int) -> RunDirectory:
    """A run directory holding one committed (fake) milestone checkpoint at `step`."""
    cfg = compose(["cluster=debug", f"output_root={root}", f"name={name}", "evaluation.tasks=[davis,vip]"])
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
