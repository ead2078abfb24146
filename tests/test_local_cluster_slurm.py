"""The local SLURM cluster itself does what the launcher's tests need.

Plain sbatch / squeue / sacct / scontrol and submitit 1.5.4, no launcher. Timings are printed with
a "[slurm]" prefix (see them with `pytest -rP`); nothing here asserts on time. Waits poll with
generous limits: 2 shared cores, and SLURM's own 30 s ticks (docs/local-slurm.md#timings).
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import cloudpickle
import pytest
import submitit

from localslurm.cluster import DEFAULT_MAX_ARRAY_SIZE, ClusterError, LocalSlurmCluster, running_clusters
from testkit.launching import serve_commands

# The `slurm_cluster` fixture comes from tests/conftest.py (tests/slurm_fixtures.py). Importing
# it here too would define a second session fixture and start the cluster twice.
pytestmark = pytest.mark.slurm

# submitit pickles callables by reference, and this module is not importable inside a job
# (tests/ is not on the job's sys.path): send this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

T = TypeVar("T")
WAIT_S = 90.0

# A job's Python process that logs "<event> <SLURM_RESTART_COUNT> <pid>" lines: start, usr2, alive
# (once after each usr2: the process survived it) and term, on which it exits like a trainer
# whose grace time is over.
SIGNAL_LOGGER = """
import os, signal, sys, time
log_path, attempt = sys.argv[1], os.environ.get("SLURM_RESTART_COUNT", "0")
def log(event):
    with open(log_path, "a") as f:
        f.write(f"{event} {attempt} {os.getpid()}\\n")
usr2_seen = []
def on_usr2(signum, frame):
    usr2_seen.append(1)
    log("usr2")
def on_term(signum, frame):
    log("term")
    sys.exit(0)
signal.signal(signal.SIGUSR2, on_usr2)
signal.signal(signal.SIGTERM, on_term)
log("start")
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    time.sleep(0.1)
    if usr2_seen:
        usr2_seen.clear()
        log("alive")
"""


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A SLURM client command (SLURM_CONF comes from the fixture through os.environ)."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


def sbatch(folder: Path, *args: str) -> str:
    return run("sbatch", "--parsable", f"--output={folder}/%j.out", *args).stdout.strip()


def wait_for(condition: Callable[[], T], what: str, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        serve_commands()  # the pooled scenarios' commands wait for the main thread (testkit.launching)
        time.sleep(0.05)
    return value


def queue_state(job_id: str) -> str:
    """State in squeue ("" once the job left the queue)."""
    return run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()


def sacct_rows(job_id: str) -> dict[str, tuple[str, str]]:
    """JobID -> (State, ExitCode) of the job (or every task of an array) from accounting."""
    out = run("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode").stdout
    return {jid: (state, code) for jid, state, code in (line.split("|") for line in out.splitlines())}


def job_field(job_id: str, key: str) -> str:
    out = run("scontrol", "show", "job", "-o", job_id).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)[key]


def events(log_path: Path) -> list[str]:
    """The signal logger's "<event> <attempt>" lines."""
    if not log_path.exists():
        return []
    return [" ".join(line.split()[:2]) for line in log_path.read_text().splitlines()]


def submit_signal_logger(folder: Path, *sbatch_args: str) -> tuple[str, Path]:
    """A batch job whose srun step is the signal logger; returns (job id, its log)."""
    script, log_path = folder / "signal_logger.py", folder / f"signals-{time.monotonic_ns()}.log"
    script.write_text(SIGNAL_LOGGER)
    step = shlex.join(["srun", "--unbuffered", sys.executable, str(script), str(log_path)])
    job_id = sbatch(folder, *sbatch_args, f"--wrap={step}")
    return job_id, log_path


@contextmanager
def cancelled_at_exit(*job_ids: str) -> Iterator[None]:
    try:
        yield
    finally:
        run("scancel", *job_ids, check=False)


def node_states() -> list[list[str]]:
    """[name, state, CPUs] per node."""
    out = run("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T %c").stdout
    return sorted(line.split() for line in out.splitlines())


@pytest.mark.cluster_wide  # idle nodes: after every pooled scenario
def test_cluster_has_two_idle_nodes_and_both_partitions(slurm_cluster: LocalSlurmCluster) -> None:
    # Polled: jobs of tests that ran before may still be completing.
    idle = [["n1", "idle", "8"], ["n2", "idle", "8"]]
    wait_for(lambda: node_states() == idle, "2 idle nodes with 8 CPUs", timeout_s=60)
    partitions = {}
    for line in run("scontrol", "show", "partition", "-o").stdout.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        partitions[fields["PartitionName"]] = fields
    assert partitions["debug"]["Default"] == "YES"
    # the values of localslurm/scripts/slurm.conf.in (docs/local-slurm.md#what-it-runs)
    assert (partitions["debug"]["PriorityTier"], partitions["debug"]["PreemptMode"]) == ("1", "REQUEUE")
    assert (partitions["high"]["PriorityTier"], partitions["high"]["PreemptMode"]) == ("10", "OFF")
    config = slurm_cluster.show_config()
    assert "preempt_send_user_signal" in config["SlurmctldParameters"]
    assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert slurm_cluster.is_up()
    assert running_clusters() == [slurm_cluster.state_dir]
    slurm_cluster.start()  # idempotent: already up
    assert slurm_cluster.is_up()


def test_start_refuses_while_another_state_dirs_cluster_runs(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    other = Path(tempfile.mkdtemp(prefix="rsp-other-"))  # short: unix socket paths live under it
    with pytest.raises(ClusterError, match=re.escape(f"from {slurm_cluster.state_dir} is running")):
        LocalSlurmCluster(other).start()
    assert slurm_cluster.is_up()


def _node_and_sum(a: int, b: int) -> tuple[int, str, str]:
    return a + b, os.environ["SLURMD_NODENAME"], sys.executable


def test_submitit_job_returns_its_result_using_this_python(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition="debug")
    job = executor.submit(_node_and_sum, 2, 3)
    assert sys.executable in job.paths.submission_file.read_text()
    wait_for(job.done, f"submitit job {job.job_id}", timeout_s=600)  # the pool's jobs share the cluster
    total, node, python = job.result()
    assert (total, python) == (5, sys.executable)
    assert node in {"n1", "n2"}


def _gloo_all_reduce() -> tuple[int, int, float, str]:
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    # The fake node names n1/n2 do not resolve (docs/local-slurm.md#pitfalls, item 1); every "node" is local.
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size, timeout=datetime.timedelta(seconds=60))
    value = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return env.rank, env.world_size, value.item(), os.environ["SLURMD_NODENAME"]


def test_two_node_job_runs_a_gloo_all_reduce(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(timeout_min=5, nodes=2, tasks_per_node=1)
    job = executor.submit(_gloo_all_reduce)
    wait_for(job.done, f"submitit job {job.job_id}", timeout_s=600)
    results = job.results()
    assert sorted(rank for rank, _, _, _ in results) == [0, 1]
    assert {world for _, world, _, _ in results} == {2}
    assert [total for _, _, total, _ in results] == [3.0, 3.0]  # (0 + 1) + (1 + 1)
    assert sorted(node for _, _, _, node in results) == ["n1", "n2"]


def test_sacct_reports_finished_jobs(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    ok = sbatch(tmp_path, "--wrap=true")
    failed = sbatch(tmp_path, "--wrap=exit 3")
    wait_for(lambda: sacct_rows(ok).get(ok) == ("COMPLETED", "0:0"), f"job {ok} COMPLETED in sacct")
    wait_for(lambda: sacct_rows(failed).get(failed) == ("FAILED", "3:0"), f"job {failed} FAILED in sacct")


def test_afterok_dependency_chain(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    parent = sbatch(tmp_path, f"--wrap=sleep 1; echo parent-done > {tmp_path}/parent.txt")
    child = sbatch(
        tmp_path,
        f"--dependency=afterok:{parent}",
        "--kill-on-invalid-dep=yes",
        f"--wrap=cp {tmp_path}/parent.txt {tmp_path}/child.txt",
    )
    failing = sbatch(tmp_path, "--wrap=exit 1")
    orphan = sbatch(tmp_path, f"--dependency=afterok:{failing}", "--kill-on-invalid-dep=yes", "--wrap=true")
    wait_for(lambda: sacct_rows(child).get(child, ("",))[0] == "COMPLETED", f"dependent job {child}")
    assert (tmp_path / "child.txt").read_text() == "parent-done\n"  # it started after its parent ended
    wait_for(
        lambda: sacct_rows(orphan).get(orphan, ("",))[0].startswith("CANCELLED"),
        f"job {orphan} cancelled because its parent {failing} failed",
    )


def test_scancel_signal_usr2_reaches_python_without_killing_the_job(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    submitted = time.perf_counter()
    job_id, log_path = submit_signal_logger(tmp_path)
    with cancelled_at_exit(job_id):
        wait_for(lambda: queue_state(job_id) == "RUNNING", f"job {job_id} RUNNING")
        print(f"[slurm] sbatch -> RUNNING: {time.perf_counter() - submitted:.2f} s")
        wait_for(lambda: "start 0" in events(log_path), "the Python process to start")
        run("scancel", "--signal=USR2", job_id)
        wait_for(lambda: "alive 0" in events(log_path), "the Python process to get USR2 and carry on")
        assert events(log_path) == ["start 0", "usr2 0", "alive 0"]
        assert queue_state(job_id) == "RUNNING"


def test_scontrol_requeue_restarts_the_job_under_the_same_id(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    job_id, log_path = submit_signal_logger(tmp_path)
    with cancelled_at_exit(job_id):
        wait_for(lambda: "start 0" in events(log_path), f"job {job_id} to start")
        requeued = time.perf_counter()
        run("scontrol", "requeue", job_id)
        wait_for(
            lambda: job_field(job_id, "Restarts") == "1" and queue_state(job_id) == "RUNNING",
            f"job {job_id} RUNNING again after the requeue",
        )
        print(f"[slurm] scontrol requeue -> RUNNING: {time.perf_counter() - requeued:.2f} s")
        wait_for(lambda: "start 1" in events(log_path), "the second attempt's Python process")
        # An external requeue sends SIGTERM (srun may forward a second one), never USR2
        # (docs/local-slurm.md#pitfalls, item 6).
        seen = events(log_path)
        assert [event for event in seen if event != "term 0"] == ["start 0", "start 1"]
        assert seen.index("term 0") < seen.index("start 1")


@pytest.mark.cluster_wide  # it preempts whatever runs on n1
def test_high_partition_preempts_debug_job_with_usr2_then_requeues_it(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    # Both jobs need all of n1, so the `high` job can only run by preempting the `debug` one.
    low, log_path = submit_signal_logger(
        tmp_path, "--partition=debug", "--nodelist=n1", "--cpus-per-task=8", "--time=10", "--signal=USR2@60"
    )
    with cancelled_at_exit(low):
        wait_for(lambda: "start 0" in events(log_path), f"job {low} to start")
        preempted = time.perf_counter()
        high = sbatch(tmp_path, "--partition=high", "--nodelist=n1", "--cpus-per-task=8", "--wrap=sleep 1")
        wait_for(lambda: "usr2 0" in events(log_path), "USR2 in the preempted job's Python process")
        wait_for(lambda: sacct_rows(high).get(high) == ("COMPLETED", "0:0"), f"the high job {high}", WAIT_S)
        wait_for(lambda: "start 1" in events(log_path), f"job {low} to run again", WAIT_S)
        print(f"[slurm] preemption -> preempted job RUNNING again: {time.perf_counter() - preempted:.1f} s")
        assert queue_state(low) == "RUNNING"
        assert job_field(low, "Restarts") == "1"
        seen = events(log_path)
        assert seen.index("usr2 0") < seen.index("start 1")


@pytest.mark.cluster_wide  # the setting would split the arrays of sweeps submitted meanwhile
def test_job_arrays_respect_max_array_size(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    try:
        slurm_cluster.set_max_array_size(4)
        too_big = run("sbatch", "--array=0-9", f"--output={tmp_path}/%A_%a.out", "--wrap=true", check=False)
        assert too_big.returncode != 0
        assert "Invalid job array specification" in too_big.stderr
        array = sbatch(tmp_path, "--array=0-3", "--wrap=true")
        wait_for(lambda: sorted(sacct_rows(array).values()) == [("COMPLETED", "0:0")] * 4, f"the 4 tasks of array {array}")
    finally:
        slurm_cluster.set_max_array_size(DEFAULT_MAX_ARRAY_SIZE)


def _processes_holding_files_in(directory: Path) -> set[int]:
    """PIDs with an open file or working directory inside DIRECTORY (zombies hold nothing)."""
    holders = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()] + [os.readlink(proc / "cwd")]
        except OSError:  # the process ended meanwhile
            continue
        if any(link.startswith(f"{directory}/") for link in links):
            holders.add(int(proc.name))
    return holders


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended; its parent reaps it


@pytest.mark.cluster_wide  # it stops the cluster
def test_stop_leaves_no_process_behind_and_start_comes_back(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    job_id, log_path = submit_signal_logger(tmp_path)
    wait_for(lambda: "start 0" in events(log_path), f"job {job_id} to start")
    job_pid = int(log_path.read_text().split()[2])
    slurm_cluster.stop()
    assert not slurm_cluster.is_up()
    assert running_clusters() == []
    assert _processes_holding_files_in(slurm_cluster.state_dir) == set()
    assert not _is_running(job_pid)
    slurm_cluster.start()  # warm: the database and SLURM state are kept
    assert slurm_cluster.is_up()
    wait_for(
        lambda: sacct_rows(job_id).get(job_id, ("",))[0].startswith("CANCELLED"), f"job {job_id} recorded as cancelled by stop"
    )
