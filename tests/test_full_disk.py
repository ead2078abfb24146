"""A real device that fills up during a run (a tmpfs mounted as the run's output_root): the
terminal gets the one-line cause, the run ends failed and is not retried while the disk stays full,
what was kept on the disk is intact, and once space is made the same command resumes from the
newest kept checkpoint and ends bitwise equal to a run never interrupted.

Mounting needs root (CI runs as root); a failed mount is a failure in CI (CI=true), a skip elsewhere."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fixtures_data import unavailable

import launch.evaluations.job
from core.atomicio import SpaceReserve, atomic_write_json, out_of_space
from eval.records import parse_record
from launch.config import absolutize, compose, train_config
from launch.evaluations.__main__ import main as evaluations_main
from launch.evaluations.claims import claim_and_pin, mark_submitted
from launch.evaluations.expected import expected
from launch.evaluations.job import EvaluationJob
from launch.evaluations.recovery import evaluation_states
from launch.job import RESERVE_FILE, disk_full
from launch.rundir import RunDirectory
from launch.runstate import reconcile
from launch.status import render
from rsp.checkpoint import CheckpointStore, DiskFullError
from rsp.manifest import FORMAT
from testkit.launching import TINY, merged, only_run, submit
from testkit.training import assert_same_training_state

MiB = 2**20
PAGE = 4096  # tmpfs allocates whole pages


@contextlib.contextmanager
def small_disk(where: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` MiB mounted at `where`: a real device with a real ENOSPC, unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a {size_mib} MiB tmpfs at {where} (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Another writer grows into the disk until `leave_bytes` are free, or until the disk is full
    when the run's own writes take the rest meanwhile."""
    filler = disk / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        while (free := shutil.disk_usage(disk).free - leave_bytes) > 0:
            try:
                f.write(b"\0" * min(free, MiB))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


class FillOnce(threading.Thread):
    """Fills the disk under `root` as soon as a file matching `when` exists there. By default the
    run's record (submit's free-space check has passed by then, the job has not started): the run
    meets a disk that filled up after it was accepted."""

    def __init__(self, root: Path, leave_bytes: int, when: str = "*/run.json", timeout_s: float = 300):
        super().__init__(daemon=True)
        self.root, self.leave_bytes, self.when, self.timeout_s = root, leave_bytes, when, timeout_s
        self.filler: Path | None = None
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not any(self.root.glob(self.when)) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.filler = fill(self.root, self.leave_bytes)

    def result(self) -> Path:
        self.join(self.timeout_s)
        assert self.filler is not None, f"nothing matched {self.when} under {self.root}"
        return self.filler


def committed_intact(store: CheckpointStore) -> list[int]:
    """The steps of every committed checkpoint, each loaded and verified against its manifest."""
    steps = []
    for manifest in store.manifests():
        assert store.verify(manifest) is None, manifest
        assert store.load(manifest)["step"] == manifest.step
        steps.append(manifest.step)
    return steps


def tiny_run(videos: Path, root: Path) -> list[str]:
    """A 6-step local run checkpointing every 2 steps, keeping 1 besides its milestones (steps 0 and 6)."""
    steps = ("schedule.total_steps=6", "schedule.warmup_steps=2", "checkpoint.every_steps=2", "checkpoint.keep_last=1")
    return merged(*TINY, "cluster=local", f"data.root={videos}", f"output_root={root}", *steps)


@pytest.mark.slow  # a tiny local run that fails, and its resumption: ~30 s quiet
def test_a_disk_full_during_a_run_says_so_keeps_what_was_committed_and_resumes_bitwise(train_videos, tmp_path, reference_runs):
    root = tmp_path / "disk"
    args = tiny_run(train_videos, root)
    reference = reference_runs.get(train_config(absolutize(compose(args), Path.cwd())))
    first, *_, last = CheckpointStore(reference / "checkpoints").manifests()
    # Room for the step-0 checkpoint (weights only), the step-2 one (weights and the optimizer's
    # moments, as large as the last one) and the run's small records; not for the step-4 one beside them.
    room = first.bytes + last.bytes + last.bytes // 2
    with small_disk(root, 80):  # submit checks room for 4 checkpoints of the run (12 MiB each) at both submissions
        filler = FillOnce(root, room)
        rc, out = submit(args)
        filled = filler.result()
        run = only_run(root)
        assert rc == 1, out
        line = next((text for text in out.splitlines() if "no space left on device" in text), "")
        assert f"writing checkpoint step 4 in {run.path / 'checkpoints'}" in line and "MiB free" in line, out
        assert "kept: 2 committed checkpoint(s) (steps 0, 2)" in line and "Traceback" not in out, out
        assert [a.end_reason for a in run.attempts()] == ["crashed"], out  # not retried while the disk stays full
        assert run.final_state() == "failed" and "no space left on device" in run.status().reason
        assert f"{run.path.name} failed: no space left on device writing checkpoint step 4" in render(root, None)  # status
        assert "Traceback" in run.attempts()[0].error and "DiskFullError" in run.attempts()[0].error
        assert committed_intact(CheckpointStore(run.path / "checkpoints")) == [0, 2]
        assert not [p for p in run.path.joinpath("checkpoints").iterdir() if p.name.startswith("step_00000004")]

        filled.unlink()  # space is made: the same command (with --retry-failed) resumes from step 2
        rc, out = submit([*args, "--retry-failed"])
        assert rc == 0, out
        assert [(a.start_step, a.end_reason) for a in run.attempts()] == [(0, "crashed"), (2, "finished")], out
        assert_same_training_state(run.path, reference)


@pytest.mark.slow  # a tiny local run that fails: ~12 s quiet
def test_a_disk_filled_to_the_last_byte_during_a_run_still_gets_its_end_recorded(train_videos, tmp_path):
    """Filled to the last byte once the step-0 checkpoint is committed: the next write of the run,
    whichever it is (TensorBoard events, metrics or step log, the step-6 checkpoint), meets ENOSPC.
    The attempt's end, its traceback and the run's status are still written (the job's 1 MiB reserve),
    and the terminal says it in one line (resuming once space is made: the test above)."""
    root = tmp_path / "disk"
    args = merged(*tiny_run(train_videos, root), "checkpoint.every_steps=6")  # no checkpoint between 0 and 6
    with small_disk(root, 80):
        filler = FillOnce(root, 0, when="*/checkpoints/step_00000000.json")
        rc, out = submit(args)
        filler.result()
        run = only_run(root)
        line = next((text for text in out.splitlines() if "no space left on device writing" in text), "")
        assert rc == 1 and "(0.0 MiB free); kept: 1 committed checkpoint(s) (steps 0)" in line and "Traceback" not in out, out
        assert [a.end_reason for a in run.attempts()] == ["crashed"] and "DiskFullError" in run.attempts()[0].error
        assert run.final_state() == "failed" and "--retry-failed" in run.status().reason
        assert committed_intact(CheckpointStore(run.path / "checkpoints")) == [0]
        assert not (run.path / RESERVE_FILE).exists()


@pytest.mark.slow  # a local job that starts (imports torch) and fails at once: ~8 s under load
def test_a_run_whose_disk_is_full_before_it_records_anything_says_so_and_stays_resubmittable(train_videos, tmp_path):
    """Full before the job starts: it can write nothing, not even that it failed. The terminal says
    why from what it can see (the free space under the run), and the run is left incomplete (the
    same command resubmits it), never failed nor retried."""
    root = tmp_path / "disk"
    with small_disk(root, 80):
        filler = FillOnce(root, 0)
        rc, out = submit(tiny_run(train_videos, root))
        filler.result()
        run = only_run(root)
        assert rc == 1 and "Traceback" not in out, out
        assert f"run did not finish: no status recorded: the disk of {run.path} is full (" in out, out
        assert "submit the same command again" in out, out
        assert run.attempts() == [] and len(run.submissions()) == 1 and run.status() is None
        assert [state.state for state in reconcile([run])] == ["incomplete"]  # submittable as it is


def test_a_space_reserve_makes_room_for_the_records_on_a_full_disk(tmp_path):
    """The 1 MiB a training job holds while it trains (launch/job.py): on a real disk filled to the
    last byte, a record cannot be written until the reserve is released."""
    with small_disk(tmp_path / "disk", 4) as disk:
        reserve = SpaceReserve(disk / ".space-reserve")
        assert (disk / ".space-reserve").stat().st_blocks * 512 >= MiB  # real blocks, not a sparse file
        fill(disk, 0)
        with pytest.raises(OSError) as full:
            atomic_write_json(disk / "status.json", {"state": "failed"})
        assert full.value.errno == errno.ENOSPC and not (disk / "status.json").exists()
        assert reserve.release() and not reserve.release()
        atomic_write_json(disk / "status.json", {"state": "failed"})
        assert json.loads((disk / "status.json").read_text()) == {"state": "failed"}


def test_any_write_of_an_attempt_that_met_a_full_disk_ends_it_as_a_full_disk(tmp_path):
    """A step log or metrics append that met ENOSPC (not only a checkpoint) is recorded as the
    DiskFullError the requeue policy does not retry, its own error kept as the cause; the reserve is freed."""
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    reserve = SpaceReserve(run.path / ".space-reserve")
    appended = OSError(errno.ENOSPC, "No space left on device")
    full = disk_full(run, appended, reserve)
    assert isinstance(full, DiskFullError) and full.__cause__ is appended and not reserve.path.exists()
    assert str(full).startswith(f"no space left on device writing the run's records under {run.path} (")
    assert disk_full(run, OSError(errno.EIO, "I/O error"), reserve) is None


def test_an_evaluation_that_meets_a_full_disk_fails_whole_and_is_evaluated_again_once_space_is_made(tmp_path, monkeypatch):
    """Another writer fills the disk while the evaluation computes (its numbers are stood in for:
    the evaluation is not what is tested, its records are): no record.json, failed.json with the
    one-line cause, the evaluation failed (never counted as done); backfill --retry-failed records it
    once space is made."""
    from test_advance import run_with_checkpoint

    from eval.run import EvalOutcome

    def evaluation(fills_the_disk: bool):
        def evaluate(ecfg):
            if fills_the_disk:
                fill(root, 0)
            return EvalOutcome(ecfg.task, {"J&F-Mean": 0.25}, {"preset": "rsp"}, Path(ecfg.output_dir), 0.1)

        return evaluate

    with small_disk(tmp_path / "disk", 8) as root:
        run = run_with_checkpoint(root, "r", 2)
        (_, _, directory), *_ = expected(run)
        assert claim_and_pin(run, 2, directory)
        mark_submitted(directory, "1", "debug")
        monkeypatch.setattr(launch.evaluations.job, "evaluate", evaluation(fills_the_disk=True))
        with pytest.raises(RuntimeError, match="evaluation of step 2 failed for davis"):
            EvaluationJob(str(run.path), 2, ["davis"])()
        assert not (directory / "record.json").exists() and not list(directory.glob(".*"))  # no temporary, no reserve
        (state,) = evaluation_states([run])
        assert state.state == "failed" and "no space left on device writing the davis evaluation of step 2" in state.detail
        assert f"in {directory} (0.0 MiB free); nothing was recorded for it" in state.detail, state.detail
        assert f"backfill {root} --retry-failed" in state.detail, state.detail

        (root / "filler.bin").unlink()
        monkeypatch.setattr(launch.evaluations.job, "evaluate", evaluation(fills_the_disk=False))
        assert evaluations_main(["backfill", str(root), "--backend", "debug", "--retry-failed"]) == 0
        (state,) = evaluation_states([run])
        assert state.state == "recorded" and parse_record(directory / "record.json").metrics == {"J&F-Mean": 0.25}


def test_a_checkpoint_whose_manifest_does_not_fit_is_removed_whole(tmp_path):
    """Room for the checkpoint file to the last page, none for its manifest: the .pt is in, but
    never committed. It is removed at once (it would hold the space), and the error is the full disk's."""
    payload = {"model": {"w": torch.arange(3000.0)}, "config_hash": "h", "model_name": "m", "code_version": "v"}
    written = io.BytesIO()
    torch.save({**payload, "format": FORMAT}, written)
    pages = -(-len(written.getvalue()) // PAGE) * PAGE
    with small_disk(tmp_path / "disk", 4) as disk:
        store = CheckpointStore(disk / "checkpoints")
        store.dir.mkdir()
        fill(disk, pages)
        with pytest.raises(DiskFullError, match=r"writing checkpoint step 5 in .* kept: 0 committed checkpoint\(s\)") as full:
            store.commit(5, payload, milestone=False)
        assert isinstance(full.value.__cause__, OSError)  # the manifest's write (torch.save's would be a RuntimeError)
        assert out_of_space(full.value.__cause__) and list(store.dir.iterdir()) == []


def test_a_disk_that_fills_while_submit_generates_data_is_one_line(tmp_path):
    """Generating a smoke set onto a full device used to end in PyAV's OSError traceback."""
    with small_disk(tmp_path / "disk", 1) as disk:
        (disk / "filler").write_bytes(bytes(shutil.disk_usage(disk).free - 24 * PAGE))  # room for a video or two
        args = ["experiment=smoke", "evaluation.tasks=[]", "data.synthetic_scene=shapes", "data.synthetic_videos=64"]
        rc, out = submit([*args, f"data.root={disk / 'videos'}", f"output_root={tmp_path / 'runs'}", "--no-wait"])
    assert rc == 2 and "Traceback" not in out, out
    assert f"writing data.synthetic_videos=64 under data.root {disk / 'videos'} failed: No space left on device" in out, out
    assert "point data.root at another folder, then submit again" in out and "nothing was submitted" in out
    assert not list((tmp_path / "runs").glob("*/run.json"))  # nothing queued
