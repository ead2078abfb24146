"""Sweeps against the real local SLURM cluster: a 2x2 sweep end to end as one job array,
idempotent resubmission, failed runs retried only when asked, arrays split at MaxArraySize, two
submits of one sweep at the same moment giving one job per run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario
from test_validation import generated_sweep, tree

from launch.dispatch import CLAIMS_DIR
from launch.plan import plan_sweep
from launch.rundir import RunDirectory, run_id
from launch.status import render
from launch.sweeps.expand import load_sweep
from launch.sweeps.rungs import SweepDirectory
from localslurm.cluster import DEFAULT_MAX_ARRAY_SIZE
from testkit.launching import REPO, SUBMIT, TINY, explain, job_counts, race, squeue_ids, submit, wait_for

pytestmark = pytest.mark.slurm


def write_sweep(tmp_path: Path, videos: Path, root: Path, axes: str, steps: int = 6) -> Path:
    common = [
        *TINY,
        "cluster=slurm",
        f"data.root={videos}",
        f"output_root={root}",
        f"schedule.total_steps={steps}",
        "schedule.warmup_steps=1",
        "checkpoint.every_steps=3",
        "cluster.max_failures=0",
    ]
    lines = "\n".join(f"  - {o!r}" for o in common if not o.startswith("experiment="))
    path = tmp_path / "sweep_test.yaml"
    path.write_text(f'experiment: smoke\nname: "kl{{model.kl_scale}}-lr{{optim.lr}}"\noverrides:\n{lines}\naxes:\n{axes}')
    return path


def runs_of(root: Path) -> list[RunDirectory]:
    return [RunDirectory(p.parent) for p in sorted(root.glob("*/run.json"))]


def all_ended(root: Path, n: int) -> bool:
    runs = runs_of(root)
    return len(runs) == n and all(r.status() is not None for r in runs)


@slurm_scenario
def two_by_two_sweep(env: ScenarioEnv) -> None:
    tmp_path = env.tmp
    root = tmp_path / "runs"
    # lr 1e30 diverges at once: with cluster.max_failures=0 those runs fail (deterministically)
    sweep = write_sweep(
        tmp_path,
        env.videos,
        root,
        "  - key: model.kl_scale\n    values: [0.001, 0.01]\n  - key: optim.lr\n    values: [0.001, 1.0e+30]\n",
    )
    rc, out = submit([f"sweep={sweep}"])
    assert rc == 0 and "submitted 4 run(s) of sweep sweep_test as 1 slurm submission(s)" in out, out
    ids = {s.job_id for r in runs_of(root) for s in r.submissions()}
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1  # one array
    wait_for(lambda: all_ended(root, 4), 900, "the 4 runs to end", lambda: "\n".join(explain(r) for r in runs_of(root)))
    states = {r.info().name: r.final_state() for r in runs_of(root)}
    assert states == {
        "kl0.001-lr0.001": "finished",
        "kl0.01-lr0.001": "finished",
        "kl0.001-lr1e+30": "failed",
        "kl0.01-lr1e+30": "failed",
    }, states
    table = render(root, "sweep_test")
    assert "model.kl_scale" in table.splitlines()[0] and "optim.lr" in table.splitlines()[0]
    assert table.count("finished") >= 2 and table.count("failed") >= 2

    before = squeue_ids(root, evaluations=False)
    rc, out = submit([f"sweep={sweep}"])
    assert rc == 0 and "nothing to submit" in out and "submit 0, retry 0, nothing 4" in out, out
    assert not squeue_ids(root, evaluations=False) - before

    failed = [r for r in runs_of(root) if r.final_state() == "failed"]
    attempts_before = {r.path: len(r.attempts()) for r in failed}
    rc, out = submit([f"sweep={sweep}", "--retry-failed"])
    assert rc == 0 and "submit 0, retry 2, nothing 2" in out and "submitted 2 run(s)" in out, out
    wait_for(
        lambda: all(len(r.attempts()) > attempts_before[r.path] and r.status() is not None for r in failed),
        900,
        "the retried runs to end",
        lambda: "\n".join(explain(r) for r in failed),
    )
    counts = {r.info().name: len(r.submissions()) for r in runs_of(root)}
    assert counts == {"kl0.001-lr0.001": 1, "kl0.01-lr0.001": 1, "kl0.001-lr1e+30": 2, "kl0.01-lr1e+30": 2}, counts


def test_two_by_two_sweep_runs_once_and_retries_failures_only_when_asked(two_by_two_sweep):
    two_by_two_sweep.result()


@pytest.mark.cluster_wide  # the setting would split the arrays of sweeps submitted meanwhile
def test_arrays_split_at_the_clusters_max_array_size(slurm_cluster, train_videos, tmp_path):
    slurm_cluster.set_max_array_size(2)
    try:
        root = tmp_path / "runs"
        sweep = write_sweep(tmp_path, train_videos, root, "  - key: model.kl_scale\n    values: [0.001, 0.002, 0.003]\n", steps=2)
        rc, out = submit([f"sweep={sweep}"])
        assert rc == 0 and "submitted 3 run(s) of sweep sweep_test as 2 slurm submission(s)" in out, out
        ids = [s.job_id for r in runs_of(root) for s in r.submissions()]
        arrays = {}
        for job in ids:
            arrays.setdefault(job.split("_")[0], []).append(job)
        assert sorted(len(v) for v in arrays.values()) == [1, 2]  # ceil(3 / 2) sbatch calls
        subprocess.run(["scancel", *arrays], check=True)
    finally:
        slurm_cluster.set_max_array_size(DEFAULT_MAX_ARRAY_SIZE)


def test_two_submits_of_one_sweep_at_once_give_one_slurm_job_per_run(slurm_cluster, train_videos, tmp_path):
    """Both submitters decide the runs are missing while the test holds the runs' claims
    (tests/test_submit_races.py has the local twin); then one array reaches SLURM, not two."""
    root = tmp_path / "runs"
    sweep = write_sweep(tmp_path, train_videos, root, "  - key: optim.lr\n    values: [0.001, 0.002]\n", steps=2)
    claims = [root / CLAIMS_DIR / f"{run_id(row.run.cfg)}.lock" for row in plan_sweep(load_sweep(str(sweep)), [], REPO).rows]
    outputs = race([[*SUBMIT, f"sweep={sweep}"]] * 2, claims)
    assert sum("submitted 2 run(s) of sweep sweep_test as 1 slurm submission(s)" in out for out in outputs) == 1, outputs
    assert sum("left alone: 2 run(s) another submit took meanwhile" in out for out in outputs) == 1, outputs
    assert sorted(job_counts(root).values()) == [1, 1]
    assert len({s.job_id.split("_")[0] for r in runs_of(root) for s in r.submissions()}) == 1  # one array
    wait_for(lambda: all_ended(root, 2), 900, "the 2 runs to end", lambda: "\n".join(explain(r) for r in runs_of(root)))
    assert {r.final_state() for r in runs_of(root)} == {"finished"}


def test_a_sweep_slurm_refuses_writes_nothing(slurm_cluster, tmp_path):
    """Before the one validation, this sweep passed the plan and failed inside the submission, after
    its data, run directories and sweep record were written (tests/test_validation.py has the rules)."""
    sweep = generated_sweep(tmp_path, "cluster=slurm", "cluster.nodes=3")
    before = tree(tmp_path / "runs", tmp_path / "gen", tmp_path / "eval")
    rc, out = submit([f"sweep={sweep}"])
    assert rc == 2 and "SLURM rejects the requested resources" in out and "nothing was submitted" in out, out
    assert tree(tmp_path / "runs", tmp_path / "gen", tmp_path / "eval") == before == {}
    assert not SweepDirectory(tmp_path / "runs", "checked").path.exists()
