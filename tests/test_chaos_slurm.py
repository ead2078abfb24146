"""A fixed-seed subset of the chaos schedule (testkit/chaos.py) on the real local SLURM cluster: runs
with loader workers, interrupted by a stop signal inside an attempt's first seconds, scontrol
requeue while the workers run, kill -9 and more, two in a row, on one and two nodes; each must end
bitwise identical to an uninterrupted run with no manual step, with the steps it redid measured.
The full randomized version is bench/chaos.py (N=10)."""

from __future__ import annotations

import pytest
from slurm_pool import ScenarioEnv, slurm_scenario

from launch.config import train_config
from testkit.chaos import KINDS, describe, make_schedule, outcome, submit_schedule, summary
from testkit.launching import explain, only_run, wait_finished
from testkit.training import assert_same_training_state

pytestmark = pytest.mark.slurm
SEED = 11  # replay: python bench/chaos.py --seed 11 --runs 2 --no-preempt
SUBSET = tuple(k for k in KINDS if k != "preempt")  # preemption hits every job of the partition: test_launch_slurm does it alone


@slurm_scenario
def chaos_runs(env: ScenarioEnv) -> list:
    """Every run of the schedule submitted, interrupted as scheduled, and ended."""
    schedule = make_schedule(SEED, 2, SUBSET)
    print(f"chaos seed {SEED}:\n{describe(schedule)}")
    for thread in submit_schedule(schedule, env.videos, env.tmp, SEED):
        thread.join(900)
    for chaos in schedule:
        assert chaos.error is None, chaos.error
        wait_finished(only_run(chaos.root), timeout=900)
    return schedule


def test_interrupted_runs_end_bitwise_identical_with_the_lost_steps_measured(chaos_runs, reference_runs):
    schedule = chaos_runs.result()

    def same_as_reference(run) -> bool:
        assert_same_training_state(run.path, reference_runs.get(train_config(run.config()), run.info().world_size))
        return True

    for chaos in schedule:
        run = only_run(chaos.root)
        chaos.outcome = outcome(chaos, same_as_reference)
        assert chaos.outcome["bitwise"], explain(run)
        assert all(i.sent is not None for i in chaos.interruptions), chaos
        crashes = [a for a in run.attempts() if a.end_reason == "crashed"]
        expected_crashes = sum(i.kind == "kill9_worker" for i in chaos.interruptions)  # a worker's death is a real failure
        assert len(crashes) <= expected_crashes, explain(run)
        assert chaos.outcome["lost_steps"] == chaos.outcome["measured_steps"], (chaos.outcome, explain(run))
    result = summary(schedule, SEED)
    print(result)
    assert not result["unexpected"], result  # each interruption ended its attempt the way it should
    assert result["signal_in_first_5s"] >= 1 and result["requeue_while_workers_run"] >= 1, result
