"""GPU-hours on the real local SLURM cluster. Its nodes have counted GPUs (localslurm/scripts/gres.conf.in:
no devices, nothing runs on them), so SLURM schedules and accounts a GPU request like a GPU cluster
does. A run asks for two GPUs and trains on the CPU (runtime.device=cpu); the GPU-hours the status
and the results tables print (launch/cost.py) must agree with sacct's own AllocTRES x ElapsedRaw."""

from __future__ import annotations

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario

from launch.cost import accounting, run_cost
from launch.status import render
from testkit.launching import explain, only_run, overrides, sacct_rows, submit, wait_for

pytestmark = pytest.mark.slurm


def sacct_gpu_seconds(job_ids: list[str]) -> float:
    """sacct's AllocTRES gres/gpu x ElapsedRaw over every allocation of these jobs, read here from
    sacct's own text (not launch.backends' parser)."""
    total = 0.0
    for _, elapsed, tres in sacct_rows(job_ids, "JobID,ElapsedRaw,AllocTRES"):
        gpus = [int(item.split("=")[1]) for item in tres.split(",") if item.startswith("gres/gpu=")]
        total += int(elapsed) * sum(gpus)
    return total


@slurm_scenario
def gpu_run(env: ScenarioEnv) -> None:
    root = env.tmp / "runs"
    gpus = ("cluster.gpus_per_node=2", "cluster.tasks_per_node=2", "runtime.device=cpu")  # two ranks, one per GPU
    rc, out = submit(overrides(env.videos, root, 8, 4, *gpus))
    assert rc == 0, out
    run = only_run(root)
    wait_for(lambda: run.final_state() == "finished", 600, "the run to finish", lambda: explain(run))
    # the status is written by the job's teardown, seconds before SLURM closes the allocation
    wait_for(
        lambda: all(a.end is not None for rows in accounting([run]).values() for a in rows),
        300,
        "sacct to close the allocation",
        lambda: str(accounting([run])),
    )
    assert [a.alloc["gpus"] for a in run.attempts()] == [2]  # SLURM_GPUS_ON_NODE x nodes, as the job saw it
    expected = sacct_gpu_seconds([s.job_id for s in run.submissions()])
    cost = run_cost(run, accounting([run]))
    print(f"[gpu-hours] launch.cost {cost.train_s('gpu'):.1f} GPU-s, sacct AllocTRES x ElapsedRaw {expected:.1f} GPU-s")
    assert expected > 0 and abs(cost.train_s("gpu") - expected) <= 0.01 * expected, (cost, expected)
    assert [a.gpus for a in cost.attempts] == [2] and cost.attempts[0].source == "sacct"
    table = render(root, None)
    assert "GPU-h" in table and "no GPU was allocated" not in table, table


def test_gpu_hours_agree_with_sacct_alloc_tres_times_elapsed(gpu_run):
    gpu_run.result()
