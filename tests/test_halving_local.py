"""Successive halving on the local backend, end to end through launch/submit.py: the runs of a local
sweep pause at the rung until it is decided (their CPU goes to the evaluations the decision waits
for), the decision is made by the evaluation job that completes the rung or by the follow loop
(launch/advance.py, whichever sees the rung's last record first) within seconds, the pruned run stops
one step past the rung instead of training on until its marker is seen, and the runs' identical
step-0 weights are evaluated once."""

from __future__ import annotations

import pytest

from eval.records import parse_record
from launch.rundir import RunDirectory
from launch.sweeps.rungs import Decision, SweepDirectory, record_dir
from testkit.launching import explain, halving_sweep_file, submit

STEPS, RUNG = 40, 20
LRS = (0.0001, 0.01)


@pytest.mark.slow  # a local sweep of two runs with evaluation jobs: ~50 s
def test_a_local_sweep_pauses_at_the_rung_and_its_pruned_run_stops_there(train_videos, tmp_path):
    root = tmp_path / "runs"
    # 32 px, batch 2 (TINY): the runs pause at the rung until it is decided, so no step needs to
    # outlast an evaluation (the SLURM sweeps' 64 px, batch 8 steps)
    sweep_file = halving_sweep_file(tmp_path, train_videos, root, "local", STEPS, RUNG, LRS, extra=())
    rc, out = submit([f"sweep={sweep_file}"])  # follows the sweep until every run and evaluation ended
    runs = [RunDirectory(p.parent) for p in sorted(root.glob("*/run.json"))]
    why = out + "\n".join(map(explain, runs))
    assert rc == 0 and len(runs) == 2, why

    decision = Decision.read(SweepDirectory(root, "halving_test").decision_path(RUNG))
    values = {r.info().run_id: parse_record(record_dir(r, RUNG, "davis") / "record.json").metrics["J&F-Mean"] for r in runs}
    worst = min(values, key=values.get)
    assert decision.pruned == [worst], (decision, values)
    assert decision.decided_by.role.startswith("evaluation job") or decision.decided_by.role == "follow", decision
    last_record = max(parse_record(record_dir(r, RUNG, "davis") / "record.json").created for r in runs)
    assert decision.time - last_record < 30, (decision, last_record)  # decided as soon as the rung is complete

    # the two runs start from one seed: their step-0 weights are identical and evaluated once
    step0 = [parse_record(record_dir(r, 0, "davis") / "record.json") for r in runs]
    assert sorted(bool(record.same_as) for record in step0) == [False, True] and step0[0].metrics == step0[1].metrics

    for run in runs:
        log = "".join(p.read_text() for p in run.path.glob("logs/*/rank_0.log"))
        assert f"paused at step {RUNG} until the decision of rung {RUNG} of sweep halving_test" in log, why
        assert f"resumed at step {RUNG} after" in log, why
        last = run.attempts()[-1]
        if run.info().run_id == worst:
            # one step past the rung: the decision was in when the run resumed, and that step carried the stop
            assert (run.final_state(), last.end_reason, last.end_step) == ("pruned", "pruned", RUNG + 1), why
            assert [m.step for m in run.manifests()][-2:] == [RUNG, RUNG + 1]  # the rung's milestone and the stop's checkpoint
        else:
            assert (run.final_state(), last.end_step) == ("finished", STEPS), why
