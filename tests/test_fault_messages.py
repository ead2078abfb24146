"""Known failures reach the terminal as a one-line cause and a next step, never a raw traceback
(its tail stays in the attempt record): a local run whose loss turns non-finite, a full disk."""

from __future__ import annotations

import errno

import pytest
import torch

from rsp.checkpoint import CheckpointStore, disk_full_message
from testkit.launching import TINY, merged, only_run, submit


@pytest.mark.slow  # a tiny local training run followed to its end: ~20 s quiet
def test_a_non_finite_loss_ends_the_run_at_once_with_the_cause_and_the_learning_rate(train_videos, tmp_path):
    args = merged(
        *TINY,
        "cluster=local",
        f"data.root={train_videos}",
        f"output_root={tmp_path / 'out'}",
        "optim.lr=1e30",
        "schedule.total_steps=6",
        "schedule.warmup_steps=0",
        "checkpoint.every_steps=3",
        "cluster.max_failures=3",
    )
    rc, out = submit(args)
    assert rc == 1, out
    assert "run did not finish: non-finite loss at step" in out and "The learning rate was" in out, out
    assert "would fail the same way" in out and "Traceback" not in out, out
    run = only_run(tmp_path / "out")
    assert [a.end_reason for a in run.attempts()] == ["crashed"]  # not retried
    assert run.final_state() == "failed"
    assert "Traceback" in run.attempts()[0].error  # kept in the attempt record, where the terminal points


def test_a_full_disk_says_where_how_much_is_free_and_what_was_kept(tmp_path):
    """The message a checkpoint write that ran out of space raises (rsp.checkpoint.DiskFullError),
    over a directory with two committed checkpoints; the error it answers is the OSError a write
    to a full device raises (/dev/full: the real ENOSPC)."""
    store = CheckpointStore(tmp_path / "checkpoints")
    for step in (10, 20):
        store.commit(
            step, {"model": {"w": torch.zeros(3)}, "config_hash": "h", "model_name": "m", "code_version": "v"}, milestone=False
        )
    with pytest.raises(OSError) as full, open("/dev/full", "wb") as device:
        torch.save({"w": torch.zeros(100_000)}, device)
    assert full.value.errno == errno.ENOSPC
    text = disk_full_message(store.dir, f"checkpoint step 30 in {store.dir}")
    assert text.startswith(f"no space left on device writing checkpoint step 30 in {store.dir} (") and "iB free)" in text
    assert "kept: 2 committed checkpoint(s) (steps 10, 20)" in text and "it resumes from step 20" in text and "\n" not in text
