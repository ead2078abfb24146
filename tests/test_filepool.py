"""rsp/filepool.py and the labels step on it: a native crash or a stall costs one file, never the
batch, and no worker inherits the parent's OpenMP state (docs/data.md#crashes-and-hangs-in-preparation)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from crashing_probe import (
    CRASH_MARK,
    STALL_MARK,
    inherited_modules,
    probe_crashing_in_torchcodec,
    probe_stalling,
    square_or_crash,
    square_or_stall,
)

from rsp import prepare
from rsp.decoders import UNREADABLE
from rsp.filepool import WorkerLost, run_isolated
from rsp.synthetic import generate_dataset
from rsp.video import read_labels

TINY = {"height": 32, "width": 48, "num_frames": 12}
REPO = Path(__file__).resolve().parents[1]


def test_a_native_crash_costs_its_one_item_and_the_others_finish():
    outcomes = {item: (result, error) for item, result, error in run_isolated(square_or_crash, range(20), 2, "t")}
    assert sorted(outcomes) == list(range(20))
    result, error = outcomes.pop(13)
    assert result is None and isinstance(error, WorkerLost) and "SIGSEGV" in error
    assert outcomes == {n: (n * n, "") for n in outcomes}


def test_a_stalled_item_is_killed_after_the_bound_and_reported():
    outcomes = {item: (result, error) for item, result, error in run_isolated(square_or_stall, range(10), 2, "t", 3.0)}
    result, error = outcomes.pop(7)
    assert result is None and isinstance(error, WorkerLost) and "no result after 3 s" in error
    assert outcomes == {n: (n * n, "") for n in outcomes}


def test_an_exception_is_the_items_error_and_the_worker_lives_on():
    outcomes = list(run_isolated(int, ["1", "x", "3"], 1, "t"))
    assert [(i, r) for i, r, _ in outcomes] == [("1", 1), ("x", None), ("3", 3)]
    assert outcomes[1][2].startswith("ValueError") and not isinstance(outcomes[1][2], WorkerLost)


def test_workers_inherit_nothing_from_a_parent_that_ran_torch():
    torch.set_num_threads(2)
    x = torch.randn(256, 256)
    assert torch.isfinite(x @ x).all()  # the parent has run OpenMP code (a forked child could deadlock)
    found = [result for _, result, _ in run_isolated(inherited_modules, range(4), 2, "t")]
    assert found and not any(torch_imported for _, torch_imported in found)


@pytest.mark.slow  # spawned workers importing the decoders: ~20-40 s on 2 busy cores
def test_the_labels_step_after_torch_work_in_the_same_process_finishes(tmp_path):
    """The hang reproduced: torch's OpenMP pool started in the parent, then the labels probe (whose
    torchcodec conversion runs torch's copy_) in a pool; in a child process, bounded in time."""
    generate_dataset(tmp_path, 6, num_classes=2, **TINY)
    script = f"""
        import torch
        from pathlib import Path
        from rsp.prepare import write_labels_file
        torch.set_num_threads(2)
        x = torch.randn(512, 512)
        (x @ x).sum().item()
        root = Path({str(tmp_path)!r})
        report = write_labels_file(root, root / "train", jobs=2)
        print("kept", 6 - len(report.failed))
    """
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "kept 6" in run.stdout


@pytest.mark.slow  # spawned workers importing the decoders: ~20-40 s on 2 busy cores
def test_a_decoder_crash_on_one_file_marks_it_unreadable_by_that_decoder_only(tmp_path):
    generate_dataset(tmp_path, 6, num_classes=2, **TINY)
    victim = next((tmp_path / "train").rglob("*.mp4"))
    crashing = victim.with_name(f"{CRASH_MARK}_{victim.name}")
    shutil.move(victim, crashing)
    report = prepare.write_labels_file(tmp_path, tmp_path / "train", jobs=2, probe_file=probe_crashing_in_torchcodec)
    assert report.failed == [] and report.done == 6
    entries = {e.path: e for e in read_labels(tmp_path / "labels.csv")}
    crashed = entries[crashing.relative_to(tmp_path).as_posix()]
    assert crashed.seek_torchcodec == UNREADABLE and crashed.seek_pyav in ("random", "sequential")
    assert all(e.seek_torchcodec != UNREADABLE for p, e in entries.items() if p != crashed.path)
    cache = (tmp_path / ".labels_probe_cache.jsonl").read_text()
    assert "torchcodec: unreadable: its worker process died by SIGSEGV" in cache


@pytest.mark.slow  # spawned workers importing the decoders: ~20-40 s on 2 busy cores
def test_a_file_that_stalls_every_decoder_is_dropped_with_the_reason(tmp_path):
    generate_dataset(tmp_path, 4, num_classes=2, **TINY)
    victim = next((tmp_path / "train").rglob("*.mp4"))
    shutil.move(victim, victim.with_name(f"{STALL_MARK}_{victim.name}"))
    report = prepare.write_labels_file(tmp_path, tmp_path / "train", jobs=2, stall_timeout=3, probe_file=probe_stalling)
    assert report.done == 4 and len(report.failed) == 1
    path, reason = report.failed[0]
    assert STALL_MARK in path and "no result after 3 s" in reason
    assert len(read_labels(tmp_path / "labels.csv")) == 3


def test_a_script_that_spawns_workers_from_its_top_level_gets_the_fix_not_a_failure_per_file(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text("from rsp.filepool import run_isolated\nprint(list(run_isolated(abs, [-1, -2], 1, 't')))\n")
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode != 0
    assert "WorkerStartError" in run.stderr and "if __name__ == '__main__':" in run.stderr
