"""The job lifecycle without a scheduler: stop signals from the first instruction, loader workers
under the scheduler's signals, step logs, how an unrecorded end is inferred, lost time, and
content-addressed code snapshots. The SLURM side is in test_launch_slurm.py and test_chaos_slurm.py."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.provenance import describe_tree
from core.schema import to_dict
from launch.config import ClusterConfig
from launch.job import peer_vanished
from launch.postmortem import Instance, infer_end, stop_reason, usr2_reason
from launch.rundir import Attempt, RunDirectory
from launch.snapshot import take_snapshot
from launch.status import lost_time
from launch.steplog import RECORD, StepLog, read_trace
from rsp.distributed import DistEnv
from rsp.train import train
from testkit.training import REPO, assert_same_training_state, tiny_config

CLUSTER = ClusterConfig(backend="slurm", time_minutes=60, signal_delay_s=120)


def wait_until(predicate, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def blocked_mask(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    return 0


# --- stop signals from the first instruction --------------------------------------------------------

EARLY = (
    "import time; time.sleep(1.5); from rsp.lifecycle import install_early_stop_signals as i; "
    "s = i(); print(s.requested, s.reason)"
)


def test_a_stop_signal_during_interpreter_start_up_waits_for_the_handler():
    """The batch script starts the ranks under `env --block-signal` (launch.batch): a SIGUSR2 that
    arrives before Python installed its handler is delivered to it, instead of killing the rank."""
    guarded = subprocess.Popen(
        ["env", "--block-signal=USR2", "--block-signal=TERM", sys.executable, "-c", EARLY],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    wait_until(lambda: blocked_mask(guarded.pid) & (1 << (signal.SIGUSR2 - 1)), what="env to block SIGUSR2")
    os.kill(guarded.pid, signal.SIGUSR2)
    out, _ = guarded.communicate(timeout=60)
    assert guarded.returncode == 0 and out.split() == ["True", "SIGUSR2"], (guarded.returncode, out)
    bare = subprocess.Popen([sys.executable, "-c", EARLY], stdout=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(0.3)
    os.kill(bare.pid, signal.SIGUSR2)
    bare.communicate(timeout=60)
    assert bare.returncode == -signal.SIGUSR2  # what the guard prevents


STOPPABLE = """
import json, sys
from pathlib import Path
from rsp.config import TrainConfig
from core.schema import from_dict
from rsp.distributed import DistEnv
from rsp.lifecycle import ignore_stop_signals, install_early_stop_signals
from rsp.train import train
stop = install_early_stop_signals()
result = train(from_dict(TrainConfig, json.loads(Path(sys.argv[1]).read_text())), DistEnv(), Path(sys.argv[2]), stop)
ignore_stop_signals()  # as launch/start.py does: the test's SIGTERM may land while the interpreter exits
print("RESULT", json.dumps({"status": result.status, "step": result.step, "reason": result.stop_reason}), flush=True)
"""


@pytest.mark.slow  # a subprocess run with loader workers, a resume and a reference: ~35 s
def test_loader_workers_outlive_the_schedulers_signals_and_the_run_stops_cooperatively(train_videos, tmp_path, reference_runs):
    """SLURM signals every process of a job, loader workers included (time limit, preemption:
    SIGUSR2; scontrol requeue: SIGTERM). The workers must not die of it; the main process stops at
    a step boundary with a checkpoint, and the resumed run ends bitwise like an uninterrupted one."""
    cfg = tiny_config(
        train_videos,
        data={"num_workers": 2, "prefetch_factor": 1},
        schedule={"total_steps": 40, "warmup_steps": 2},
        checkpoint={"every_steps": 10, "keep_last": 2},
    )
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(to_dict(cfg)))
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE, str(cfg_file), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,  # its own process group, as a job step is
    )
    metrics = run / "metrics.jsonl"
    wait_until(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 300, "three steps")
    os.killpg(proc.pid, signal.SIGUSR2)  # the main process and both workers, as slurmstepd does
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # torch's own worker handler would die of this one
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.split("RESULT", 1)[1])
    assert result["status"] == "stopped" and result["reason"] == "SIGUSR2" and 3 <= result["step"] < 40, result
    assert "DataLoader worker" not in err, err[-3000:]
    manifests = sorted((run / "checkpoints").glob("step_*.json"))
    assert json.loads(manifests[-1].read_text())["step"] == result["step"]  # no step lost
    assert train(cfg, DistEnv(), run).status == "finished"
    # the reference without loader workers: a batch depends on its position only (docs/data.md)
    reference = reference_runs.get(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=0)))
    assert_same_training_state(run, reference)


# --- step logs ----------------------------------------------------------------------------------------


def test_step_log_gives_the_last_completed_step_and_when_each_step_was_done(tmp_path):
    path = tmp_path / "attempts" / "000.steps"
    assert read_trace(path) is None
    log = StepLog(path)
    for step in range(40, 48):
        log.append(step, 1000.0 + step)
    log.close()
    with open(path, "ab") as f:
        f.write(RECORD.pack(48, 1048.0)[:7])  # a torn last record (a node crash mid-write) is ignored
    trace = read_trace(path)
    assert trace.first == (40, 1040.0) and trace.last == (47, 1047.0) and trace.completed == 7
    assert trace.time_of(44) == 1044.0 and trace.time_of(39) is None and trace.time_of(48) is None


# --- inferring an end that was not recorded ---------------------------------------------------------


def attempt_in(run: RunDirectory, number: int, start_step: int, steps: int, signals: str = "", t0: float = 1000.0) -> Attempt:
    """An attempt that began at t0 from `start_step` and completed `steps` steps, one per second."""
    log = run.path / "signals" / f"{number}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(signals)
    attempt = Attempt(number, "77", f"77/{number}", ["n1"], t0, start_step, deadline=t0 + 3600, signal_log=str(log))
    run.save_attempt(attempt)
    steps_log = StepLog(run.step_log_path(attempt))
    for i in range(steps + 1):
        steps_log.append(start_step + i, t0 + 5 + i)
    steps_log.close()
    return attempt


@pytest.mark.parametrize(
    "signals, exit_code, instance, expected",
    [
        ("", 137, None, "interrupted"),  # kill -9: a genuine failure
        ("", 1, None, "crashed"),
        ("", 140, None, "stopped"),  # a rank died of SIGUSR2 sent to the ranks only, before its handler
        ("USR2 1010.5\n", 140, None, "preempted"),  # the batch shell got it an hour before the limit
        ("USR2 4450.25\n", 140, None, "timeout"),  # ... near the limit (deadline 4600, delay 120)
        ("USR2 1010,5\n", None, Instance("PREEMPTED", 1000.0, 1020.0), "preempted"),  # a comma locale
        ("", None, Instance("REQUEUED", 998.0, 1020.0), "requeued"),  # scontrol requeue killed the batch shell
        ("", None, Instance("NODE_FAIL", 998.0, 1020.0), "interrupted"),
        ("USR2 4450\n", None, Instance("REQUEUED", 998.0, 1020.0), "timeout"),  # our own teardown requeued it
    ],
)
def test_an_unrecorded_end_is_inferred_from_the_evidence(tmp_path, signals, exit_code, instance, expected):
    run = RunDirectory(tmp_path / "run")
    attempt = attempt_in(run, 0, start_step=40, steps=7, signals=signals)
    ending = infer_end(run, attempt, CLUSTER, exit_code=exit_code, instance=instance)
    assert ending.reason == expected, ending
    assert ending.step == 47  # the last completed step, not the last checkpoint
    assert "step log: last completed step 47" in ending.evidence
    assert ending.when == (instance.end if instance else 1012.0)


def test_a_stop_signal_means_what_its_path_and_time_say(tmp_path):
    run = RunDirectory(tmp_path / "run")
    assert usr2_reason(4600 - 120 - 89, 4600.0, CLUSTER) == "timeout"
    assert usr2_reason(4600 - 120 - 91, 4600.0, CLUSTER) == "preempted"
    only_ranks = attempt_in(run, 0, 0, 3)
    assert stop_reason(only_ranks, CLUSTER, "slurm", "SIGUSR2", 1002.0) == "stopped"  # scancel --signal=USR2 JOBID
    batch = attempt_in(run, 1, 0, 3, signals="USR2 1002\n")
    assert stop_reason(batch, CLUSTER, "slurm", "SIGUSR2", 1003.0) == "preempted"
    assert stop_reason(batch, CLUSTER, "local", "SIGUSR2", 4500.0) == "timeout"  # submitit's local time limit
    assert stop_reason(batch, CLUSTER, "slurm", "stop_after_steps", 1003.0) == "stopped"


def test_lost_time_is_the_steps_and_seconds_redone_after_each_end(tmp_path):
    run = RunDirectory(tmp_path / "run")
    first = attempt_in(run, 0, start_step=0, steps=7, t0=1000.0)  # steps 1..7 done at 1006..1012
    first.end_time, first.end_step, first.end_reason = 1013.0, 7, "interrupted"
    run.save_attempt(first)
    second = attempt_in(run, 1, start_step=5, steps=5, t0=1020.0)  # resumed from checkpoint 5: 6 and 7 redone
    second.end_time, second.end_step, second.end_reason = 1031.0, 10, "timeout"
    run.save_attempt(second)
    attempt_in(run, 2, start_step=10, steps=2, t0=1040.0)  # a cooperative stop at 10 loses nothing
    gap, steps, seconds = lost_time(run, run.attempts())
    assert (gap, steps, seconds) == (7.0 + 9.0, 2, 1012.0 - 1010.0)


# --- content-addressed snapshots ---------------------------------------------------------------------


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True)


def test_the_code_version_addresses_every_file_a_job_imports_untracked_ones_too(tmp_path):
    repo = tmp_path / "repo"
    (repo / "rsp").mkdir(parents=True)
    (repo / "rsp" / "model.py").write_text("A = 1\n")
    (repo / "notes.txt").write_text("not code\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "c")
    commit = describe_tree(repo)
    assert "+" not in commit and len(commit) == 12
    (repo / "notes.txt").write_text("edited, but no job reads it\n")
    assert describe_tree(repo) == commit
    (repo / "rsp" / "extra.py").write_text("B = 1\n")  # untracked module
    first = describe_tree(repo)
    (repo / "rsp" / "extra.py").write_text("B = 2\n")  # edited: same name, same git status
    second = describe_tree(repo)
    assert first.startswith(commit + "+dirty.") and second.startswith(commit + "+dirty.") and first != second
    snapshot = take_snapshot(tmp_path / "code", repo)
    assert snapshot.version == second and (snapshot.path / "rsp" / "extra.py").read_text() == "B = 2\n"
    (repo / "rsp" / "extra.py").write_text("B = 1\n")
    again = take_snapshot(tmp_path / "code", repo)
    assert again.version == first and (again.path / "rsp" / "extra.py").read_text() == "B = 1\n"
    (repo / "rsp" / "extra.py").unlink()
    assert take_snapshot(tmp_path / "code", repo).version == commit  # back to the commit: its own snapshot


def _all_reduce_after_peer_dies(rank: int, port: int, out: str) -> None:
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timeout)
    tensor = torch.ones(4)
    dist.all_reduce(tensor)
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # like the chaos test's kill -9 of rank 1
    time.sleep(1)
    try:
        dist.all_reduce(tensor)
        Path(out).write_text("no error")
    except RuntimeError as exc:
        Path(out).write_text(f"{peer_vanished(exc)}: {exc}")


@pytest.mark.slow  # two spawned processes importing torch: ~10 s quiet, minutes on a busy machine
def test_a_collective_that_lost_its_peer_to_kill_9_is_an_interruption_not_a_crash(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.txt"
    context = mp.start_processes(_all_reduce_after_peer_dies, args=(port, str(out)), nprocs=2, join=False, start_method="spawn")
    for process in context.processes:
        process.join(120)
    assert out.read_text().startswith("True: "), out.read_text()


def test_a_second_in_process_job_logs_only_to_its_own_rank_log(tmp_path):
    """The debug backend runs a sweep's jobs in one interpreter: the first job's handlers stayed, so the
    second run's lines went into the first run's rank log too (and every line showed once more)."""
    import logging

    from launch.job import configure_logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        configure_logging(tmp_path / "a" / "rank_0.log", 0)
        configure_logging(tmp_path / "b" / "rank_0.log", 0)
        logging.getLogger("rsp.train").info("second run's line")
        assert len(root.handlers) == len(before) + 2
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    assert "second run's line" in (tmp_path / "b" / "rank_0.log").read_text()
    assert "second run's line" not in (tmp_path / "a" / "rank_0.log").read_text()
