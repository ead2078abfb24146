"""A local run followed in the terminal to its end, as the quickstart's first command does: the
command prints its steps and where the run finished, and exits 0."""

from __future__ import annotations

import pytest

from testkit.launching import TINY, merged, only_run, submit


@pytest.mark.slow  # a tiny local training run in its own process, followed to its end: ~15 s quiet
def test_a_followed_local_run_says_where_it_finished(train_videos, tmp_path):
    args = merged(
        *TINY,
        "cluster=local",
        f"data.root={train_videos}",
        f"output_root={tmp_path / 'out'}",
        "schedule.total_steps=4",
        "schedule.warmup_steps=1",
        "checkpoint.every_steps=2",
    )
    rc, out = submit(args)
    run = only_run(tmp_path / "out")
    assert rc == 0, out
    assert f"training finished: finished at step 4 ({run.path})" in out and "Traceback" not in out, out
    assert "step 4/4" in out and run.final_state() == "finished"
