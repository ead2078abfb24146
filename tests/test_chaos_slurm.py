"""A fixed-seed subset of the chaos schedule (tests/chaos.py) on the real local SLURM cluster: runs
with loader workers, interrupted by a stop signal inside an attempt's first seconds, scontrol
requeue while the workers run, kill -9 and more, two in a row, on one and two nodes; each must end
bitwise identical to an uninterrupted run with no manual step, with the steps it redid measured.
The full randomized version is bench/chaos.py (N=10)."""

from __future__ import annotations

import pytest
from chaos import KINDS, describe, make_schedule, outcome, submit_schedule, summary
from launch_helpers import explain, only_run, wait_finished
from train_helpers import assert_same_training_state, torchrun

from launch.config import train_config
from rsp.distributed import DistEnv
from rsp.train import train

pytestmark = pytest.mark.slurm
SEED = 11  # replay: python bench/chaos.py --seed 11 --runs 2 --no-preempt
SUBSET = tuple(k for k in KINDS if k != "preempt")  # preemption hits every job of the partition: test_launch_slurm does it alone


def test_interrupted_runs_end_bitwise_identical_with_the_lost_steps_measured(slurm_cluster, train_videos, tmp_path):
    schedule = make_schedule(SEED, 2, SUBSET)
    print(f"chaos seed {SEED}:\n{describe(schedule)}")
    threads = submit_schedule(schedule, train_videos, tmp_path, SEED)
    for thread in threads:
        thread.join(900)
    references = {}

    def same_as_reference(run) -> bool:
        ranks = run.info().world_size
        if ranks not in references:
            references[ranks] = tmp_path / f"reference{ranks}"
            if ranks == 1:
                train(train_config(run.config()), DistEnv(), references[ranks])
            else:
                proc = torchrun(train_config(run.config()), references[ranks], tmp_path, nproc=ranks, timeout=900)
                assert proc.returncode == 0, proc.stderr[-3000:]
        assert_same_training_state(run.path, references[ranks])
        return True

    for chaos in schedule:
        assert chaos.error is None, chaos.error
        run = only_run(chaos.root)
        wait_finished(run, timeout=900)
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
