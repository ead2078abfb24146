"""The main job's experiment (smoke) on the real local SLURM cluster: data generated at submit
time, pretraining, one evaluation job per task submitted by the training job itself when the
milestone checkpoint is committed, result records, and the aggregated table."""

from __future__ import annotations

import subprocess

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario

from launch.evaluations.claims import submission
from launch.results import aggregate_runs
from testkit.launching import explain, only_run, submit, wait_finished, wait_for

pytestmark = pytest.mark.slurm
TASKS = ("davis", "photo_davis", "jhmdb", "vip")  # experiments/experiment/smoke.yaml's


@slurm_scenario
def smoke_pipeline(env: ScenarioEnv) -> None:
    tmp_path = env.tmp
    root = tmp_path / "runs"
    rc, out = submit(
        [
            "experiment=smoke",
            "cluster=slurm",
            f"output_root={root}",
            f"data.root={tmp_path / 'videos'}",
            f"evaluation.data_roots.davis={tmp_path / 'davis'}",
            f"evaluation.data_roots.photo_davis={tmp_path / 'photo_davis'}",
            f"evaluation.data_roots.photo_davis={tmp_path / 'photo_davis'}",
            f"evaluation.data_roots.jhmdb={tmp_path / 'jhmdb'}",
            f"evaluation.data_roots.vip={tmp_path / 'vip'}",
            "data.synthetic_videos=16",
            "schedule.total_steps=10",
            "checkpoint.every_steps=5",
            "checkpoint.milestone_every_steps=10",
            "evaluation.cpus_per_task=1",
            "cluster.cpus_per_task=1",
        ]
    )
    assert rc == 0 and "submitted slurm job" in out, out
    assert (tmp_path / "videos" / "labels.csv").is_file() and (tmp_path / "davis" / "JPEGImages").is_dir()  # generated at submit
    run = only_run(root)
    wait_finished(run, timeout=1200)
    records = lambda: sorted(run.path.glob("evals/step_*/*/record.json"))  # noqa: E731
    wait_for(
        lambda: len(records()) == 2 * len(TASKS),
        1200,
        f"{2 * len(TASKS)} evaluation records (steps 0 and 10)",
        lambda: explain(run) + "\n" + "\n".join(p.read_text()[-1500:] for p in run.path.glob("evals/step_*/*/failed.json")),
    )
    markers = [submission(p.parent) for p in run.path.glob("evals/step_00000010/*/submitted.json")]
    assert len(markers) == len(TASKS) and all(m.backend == "slurm" for m in markers)

    def states() -> list[str]:
        ids = ",".join(m.job_id for m in markers)
        return subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", ids], capture_output=True, text=True
        ).stdout.split()

    wait_for(lambda: states() == ["COMPLETED"] * len(TASKS), 120, "the evaluation jobs to complete", lambda: str(states()))
    report = aggregate_runs(root)
    assert list(report.table["step"]) == [0, 10] and report.table["best"].sum() == 1  # the initialization is a milestone too
    for metric in ("davis:J&F-Mean", "jhmdb:PCK@0.1", "vip:mIoU"):
        assert (0 <= report.table[metric]).all() and (report.table[metric] <= 1).all()
    assert (root / "results" / "paper.md").is_file() and report.plots


def test_smoke_experiment_on_slurm_end_to_end(smoke_pipeline):
    smoke_pipeline.result()
