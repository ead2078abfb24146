"""Where jobs run: one interface over submitit's SLURM and local executors and an in-process mode.

    backend = make_backend("slurm", folder)
    job_ids = backend.submit([job_a, job_b], resources)     # SLURM: one job array
    states = backend.states(job_ids)                          # one batched squeue + sacct call

This module submits and cancels; launch/slurm_queries.py asks SLURM what it knows (job states,
accounting, configuration). Every sbatch script it produces runs the snapshot's code, kills the
whole step when one rank dies (--kill-on-bad-exit) and is requeueable;
a training job's script (launch.batch) also defers and logs stop signals and ends with
`python -m launch.requeue`, so every way an attempt can end goes through one policy.
Values that reach the script are quoted (shlex) or passed as sbatch flags by submitit.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from core.atomicio import atomic_write_json
from launch.batch import SIGNAL_DIR, LifecycleExecutor, setup_lines, teardown_lines
from launch.rundir import RUNS_FILE
from launch.slurm_queries import max_array_size, slurm_config, slurm_states
from launch.snapshot import Snapshot

PF_KTHREAD = 0x00200000  # /proc/<pid>/stat flags: a kernel thread (linux/sched.h)
LOCAL_SLOTS = "slots"  # the local backend's slot lock files, in a submission's folder


@dataclass(frozen=True)
class Resources:
    """What one job asks for. Jobs with equal Resources can share one SLURM array."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: float | None = None
    time_minutes: int = 60
    signal_delay_s: int = 120
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    extra_sbatch: tuple[tuple[str, str], ...] = ()
    array_parallelism: int = 64
    dependency: str | None = None  # e.g. "afterok:123"
    job_name: str = "rsp"
    # The module run after srun with --folder and --exit-code (launch.batch): launch.requeue for a
    # training job, launch.evaluations.teardown for an evaluation job; None: a plain submitit script.
    teardown: str | None = "launch.requeue"

    @classmethod
    def from_cluster(cls, cluster: Any, job_name: str, **overrides: Any) -> Resources:
        fields = dict(
            nodes=cluster.nodes,
            tasks_per_node=cluster.processes_per_node,
            gpus_per_node=cluster.gpus_per_node,
            cpus_per_task=cluster.cpus_per_task,
            mem_gb=cluster.mem_gb,
            time_minutes=cluster.time_minutes,
            signal_delay_s=cluster.signal_delay_s,
            partition=cluster.partition,
            account=cluster.account,
            qos=cluster.qos,
            constraint=cluster.constraint,
            exclusive=cluster.exclusive,
            extra_sbatch=tuple(sorted(cluster.extra_sbatch.items())),
            array_parallelism=cluster.array_parallelism,
            dependency="afterok:" + ":".join(j.strip() for j in cluster.after.split(",")) if cluster.after else None,
            job_name=job_name,
        )
        fields.update(overrides)
        return cls(**fields)

    def group_key(self) -> tuple:
        """Everything but the name: runs that differ only in name share an array."""
        return tuple((k, v) for k, v in self.__dict__.items() if k != "job_name")


def snapshot_setup(snapshot: Snapshot | None) -> list[str]:
    if snapshot is None:
        return []
    path = shlex.quote(str(snapshot.path))
    return [
        f"export PYTHONPATH={path}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export RSP_CODE_VERSION={shlex.quote(snapshot.version)}",
        f"cd {path}",
    ]


class Backend:
    """Where jobs run. Everything that differs between backends is an attribute or a method of its
    class, so a new backend is one class. The base class answers "none of these", which is also the
    answer for a name that is no backend (an invalid cluster.backend, which validation reports)."""

    name = "base"
    # Where its jobs run
    runs_here = False  # on this machine: one node; SLURM-only keys would be ignored; its GPU and compiler are this one's
    in_process = False  # in the submitting interpreter: one process, its signals left alone, done when submit returns
    counts_gpus_here = False  # a job gets cluster.gpus_per_node of this machine's GPUs (more than it has is refused)
    scheduler_environment = False  # jobs read their hosts, restart count and allocation from the scheduler (SLURM_*)
    holds_for_dependencies = False  # can hold a job until others end (cluster.after)
    # How its jobs end and go on
    tracks_jobs = False  # a job's state can be asked later (`states`); an in-process job ended with its call
    requeues = False  # an attempt that stops is requeued within the cluster.max_* budgets
    requeues_in_process = False  # the job applies the requeue policy itself (SLURM: the batch script's teardown)
    logs_stop_signals = False  # the batch shell logs the job's signals (launch.batch): a stop's cause is read there
    signal_early_s = 0  # how much earlier than signal_delay_s the stop signal can come
    pauses_at_rungs = False  # a single-process run of a sweep waits at a rung for its decision (launch.job.RungPause)
    followed_in_terminal = False  # the submitting terminal follows the run to its end (cluster.wait)
    # Evaluations and cost
    evaluation_job_per_task = False  # each task of a milestone gets its own job (in parallel), else one job per milestone
    accounted_by_sacct = False  # cost comes from the scheduler's accounting (sacct), else from the attempt records
    shares_local_slots = (
        False  # a sweep's jobs take lock-file slots (array_parallelism); a resumed run takes its first submission's
    )
    slot_folder: Path | None = None  # set by the submitter: the slots the next jobs wait for (None: this submission's own)

    def __init__(self, folder: Path, snapshot: Snapshot | None = None):
        self.folder = Path(folder)
        self.snapshot = snapshot

    @classmethod
    def scheduler_config(cls) -> dict[str, str]:
        """The scheduler's configuration, for submit-time warnings ({}: no scheduler to ask)."""
        return {}

    def job_script(self, resources: Resources) -> str | None:
        """The exact script a submission hands to the scheduler, for dry runs (None: no script)."""
        return None

    def max_array_size(self, jobs: int) -> int:
        """How many jobs one submission may hold."""
        return max(1, jobs)

    def submit(self, functions: Sequence[Callable[[], Any]], resources: Resources) -> list[str]:
        raise NotImplementedError

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        raise NotImplementedError

    def cancel(self, job_ids: Sequence[str]) -> None:
        """End these jobs now, queued or running (a pruned run's queued job). Only backends that
        track jobs can."""
        raise NotImplementedError(f"the {self.name} backend cannot cancel jobs")

    def refusals(self, resources: Resources) -> list[str]:
        """Why this backend would refuse a job with `resources`, asked before anything is written
        (submit-time validation). A scheduler judges for itself; this machine's limits are validated
        from the config."""
        return []


class SlurmBackend(Backend):
    name = "slurm"
    scheduler_environment = holds_for_dependencies = tracks_jobs = requeues = logs_stop_signals = True
    signal_early_s = 30  # SLURM checks time limits on a 30 s tick
    evaluation_job_per_task = accounted_by_sacct = True

    @classmethod
    def scheduler_config(cls) -> dict[str, str]:
        return slurm_config()

    def job_script(self, resources: Resources) -> str | None:
        if shutil.which("srun") is None:  # submitit renders the script only where SLURM is installed
            return "# not shown: `srun` is not on PATH here (submitit renders the script only on a SLURM login node)"
        return self.sbatch_script(resources)

    def max_array_size(self, jobs: int) -> int:
        return max_array_size()

    def executor(self, resources: Resources, folder: Path) -> submitit.SlurmExecutor:
        """Jobs with a teardown get the lifecycle batch script of launch.batch."""
        r = resources
        python = shlex.quote(sys.executable)
        cls = LifecycleExecutor if r.teardown else submitit.SlurmExecutor
        ex = cls(folder=folder, python=python)
        setup = snapshot_setup(self.snapshot)
        additional: dict[str, Any] = {"requeue": True, "kill-on-invalid-dep": "yes"}
        if r.teardown:
            setup = setup_lines(folder) + setup  # the traps first: the shell may be signalled at once
            additional["signal"] = f"B:USR2@{r.signal_delay_s}"
        params: dict[str, Any] = dict(
            job_name=r.job_name,
            nodes=r.nodes,
            ntasks_per_node=r.tasks_per_node,
            cpus_per_task=r.cpus_per_task,
            time=r.time_minutes,
            signal_delay_s=r.signal_delay_s,
            array_parallelism=r.array_parallelism,
            setup=setup,
            srun_args=["--kill-on-bad-exit=1"],
            additional_parameters={**additional, **dict(r.extra_sbatch)},
        )
        optional = dict(
            gpus_per_node=r.gpus_per_node or None,
            mem=f"{r.mem_gb:g}GB" if r.mem_gb else None,
            partition=r.partition,
            account=r.account,
            qos=r.qos,
            constraint=r.constraint,
            exclusive=True if r.exclusive else None,
            dependency=r.dependency,
        )
        params.update({k: v for k, v in optional.items() if v is not None})
        if r.teardown:
            params["teardown"] = teardown_lines(python, r.teardown, folder)
        ex.update_parameters(**params)
        return ex

    def submit(self, functions: Sequence[Callable[[], Any]], resources: Resources) -> list[str]:
        """One sbatch call (an array when several functions) in a folder of its own. Its runs.json
        maps array index -> run directory, written before sbatch, so the teardown finds its run
        without unpickling the job (which would import torch on the requeue's critical path)."""
        folder = self.folder / f"{len(list(self.folder.glob('[0-9]*'))) if self.folder.is_dir() else 0:03d}"
        (folder / SIGNAL_DIR).mkdir(parents=True, exist_ok=True)  # the batch script logs stop signals there
        atomic_write_json(folder / RUNS_FILE, [getattr(fn, "run_dir", None) for fn in functions])
        ex = self.executor(resources, folder)
        if len(functions) == 1:
            return [ex.submit(functions[0]).job_id]
        with ex.batch():
            jobs = [ex.submit(fn) for fn in functions]
        return [job.job_id for job in jobs]

    def sbatch_script(self, resources: Resources) -> str:
        """The exact script `submit` would hand to sbatch (for dry runs)."""
        ex = self.executor(resources, self.folder)
        return ex._make_submission_file_text(ex._submitit_command_str, uid="DRYRUN")

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return slurm_states(job_ids)

    def cancel(self, job_ids: Sequence[str]) -> None:
        subprocess.run(["scancel", *job_ids], check=True, capture_output=True, timeout=60)

    def refusals(self, resources: Resources) -> list[str]:
        """Ask SLURM whether it could run the job (`sbatch --test-only` queues nothing)."""
        if shutil.which("sbatch") is None:
            return ["cluster=slurm but `sbatch` is not on PATH; submit from a SLURM login node, or use cluster=local"]
        script = self.sbatch_script(resources)
        proc = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return []
        reason = " ".join(line for line in proc.stderr.splitlines() if "error" in line.lower()) or proc.stderr.strip()
        if any(s in reason for s in ("fetch_config", "Unable to contact", "Zero Bytes were transmitted", "Connection refused")):
            return [
                f"cannot reach the SLURM controller ({reason}); check SLURM_CONF, "
                "or start the local test cluster with `python -m localslurm start`"
            ]
        return [
            "SLURM rejects the requested resources: "
            f"{reason}; adjust cluster.* (partition, nodes, gpus_per_node, time_minutes, ...)"
        ]


class LocalBackend(Backend):
    """This machine: submitit's local executor (one subprocess per task, the timeout signal, and
    restarts on the requeue exit status). Job ids are the controllers' process ids."""

    name = "local"
    runs_here = counts_gpus_here = tracks_jobs = requeues = requeues_in_process = True
    pauses_at_rungs = followed_in_terminal = shares_local_slots = True

    def executor(self, resources: Resources) -> submitit.LocalExecutor:
        ex = submitit.LocalExecutor(folder=self.folder)
        ex.update_parameters(
            timeout_min=resources.time_minutes,
            tasks_per_node=resources.tasks_per_node,
            gpus_per_node=resources.gpus_per_node,
            signal_delay_s=resources.signal_delay_s,
            setup=snapshot_setup(self.snapshot),
        )
        return ex

    def submit(self, functions: Sequence[Callable[[], Any]], resources: Resources) -> list[str]:
        """Start every job now. The single-process jobs of a sweep (several at once, or a resumed run:
        `slot_folder` names its sweep's slots) each wait for one of resources.array_parallelism slots
        first, like the tasks of a SLURM array with %N, and hold it until they end (a paused run's
        process frees it, and its resumed job waits for a slot like any other); a multi-process job
        cannot share one slot between its ranks and is not limited."""
        ex = self.executor(resources)
        if (len(functions) > 1 or self.slot_folder is not None) and resources.tasks_per_node == 1:
            slots = self.slot_folder or self.folder / LOCAL_SLOTS
            functions = [InLocalSlot(fn, str(slots), resources.array_parallelism) for fn in functions]
        with deaf_to_ctrl_c():
            return [ex.submit(fn).job_id for fn in functions]

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return {j: local_state(j) for j in job_ids}


@contextmanager
def deaf_to_ctrl_c() -> Iterator[None]:
    """Ignore SIGINT in this process while submitit starts local jobs. A terminal's ctrl-C goes to
    every process of its foreground group, and submitit starts a job's controller in ours: a ctrl-C
    meant to stop following a run killed the run (counted as a crash) and printed the controller's
    traceback. An ignored disposition survives exec, and Python then installs no KeyboardInterrupt
    handler, so the controller and its tasks ignore a ctrl-C; they stop by their stop signals."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


@dataclass
class InLocalSlot:
    """Runs `fn` once this process holds one of `slots` lock files in `folder`: at most `slots` such
    jobs run at once. The lock is an flock, released when the process ends however it ends (kill -9
    included). Time spent waiting counts against the job's time limit (cluster.time_minutes)."""

    fn: Callable[[], Any]
    folder: str
    slots: int
    poll_s: float = 2.0

    def __call__(self) -> Any:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        waiting = time.monotonic()
        while True:
            for i in range(self.slots):
                with open(Path(self.folder) / f"slot-{i}.lock", "a") as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    waited = time.monotonic() - waiting
                    print(f"holding local slot {i + 1}/{self.slots} after waiting {waited:.0f} s", file=sys.stderr, flush=True)
                    return self.fn()  # closing the file releases the lock
            time.sleep(self.poll_s)


def local_state(job_id: str) -> str:
    """RUNNING while the local controller process lives, else DONE. Its command line names submitit
    (a process id reused since is not it); a process in the middle of its exec shows an empty one for
    a moment after it was started, and so do a zombie (ended, not yet reaped) and a kernel thread
    (which may have taken the id since: never our job)."""
    try:
        cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
        if not cmdline:
            fields = Path(f"/proc/{int(job_id)}/stat").read_text().rpartition(")")[2].split()
            state, flags = fields[0], int(fields[6])
            return "DONE" if state == "Z" or flags & PF_KTHREAD else "RUNNING"
    except (OSError, ValueError, IndexError):
        return "DONE"
    return "RUNNING" if b"submitit" in cmdline else "DONE"


class DebugBackend(Backend):
    """In-process and synchronous: breakpoints work; one process only."""

    name = "debug"
    runs_here = in_process = True

    def __init__(self, folder: Path, snapshot: Snapshot | None = None):
        super().__init__(folder, None)  # runs the live code: that is the point of debugging
        self.submitted = 0  # numbers this backend's job ids

    def submit(self, functions: Sequence[Callable[[], Any]], resources: Resources) -> list[str]:
        ids = []
        for fn in functions:
            job_id = f"debug-{os.getpid()}-{self.submitted}"
            with logging_restored():
                fn()
            self.submitted += 1
            ids.append(job_id)
        return ids

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return {j: "DONE" for j in job_ids}


@contextmanager
def logging_restored() -> Iterator[None]:
    """A job run in this interpreter logs to its rank log through handlers it adds to the root logger
    (launch.job.configure_logging). Once it returns they go, and the root's level is the caller's
    again: kept, they wrote the caller's later lines into that run's log, and into a stream that
    may be closed by then."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        if root.level != level:
            root.setLevel(level)


BACKENDS = {"local": LocalBackend, "slurm": SlurmBackend, "debug": DebugBackend}  # the values of cluster.backend


def backend_class(name: str | None) -> type[Backend]:
    """The class of the backend named in a config or a record; the base class (none of the
    attributes) for no name or one that is no backend."""
    return BACKENDS.get(name or "", Backend)


def make_backend(name: str, folder: Path, snapshot: Snapshot | None = None) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    return BACKENDS[name](folder, snapshot)
