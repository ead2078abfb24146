"""Backends as classes: every difference between local, SLURM and debug is an attribute or a method
of its class in launch/backends.py, so no other module compares backend names, and a name that is
no backend answers "none of these" (validation reports it)."""

from __future__ import annotations

import functools
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from submitit.local.local import LocalJob

from launch.backends import (
    BACKENDS,
    PF_KTHREAD,
    Backend,
    DebugBackend,
    LocalBackend,
    Resources,
    SlurmBackend,
    backend_class,
    local_state,
)

REPO = Path(__file__).resolve().parents[1]
NAME_BRANCH = re.compile(r"""backend(_name)?(\.name)?\)?\s*(==|!=|\bin\b|\bnot in\b)\s*\(?\s*["'](slurm|local|debug)["']""")
RECORD_BRANCH = re.compile(r"""\.get\(["']backend["']\)\s*(==|!=)""")


def test_no_module_but_backends_branches_on_a_backend_name():
    found = []
    for package in ("launch", "eval", "rsp"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "launch" / "backends.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if NAME_BRANCH.search(line) or RECORD_BRANCH.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


def test_the_branch_pattern_finds_branches():
    for line in ('if cfg.cluster.backend == "slurm":', "x = backend != 'debug'", 'if backend in ("slurm", "local"):'):
        assert NAME_BRANCH.search(line), line
    assert RECORD_BRANCH.search('if s.get("backend") == "slurm"')


def test_each_backend_is_named_by_its_class_and_an_unknown_name_is_none_of_them():
    assert {name: cls.name for name, cls in BACKENDS.items()} == {"local": "local", "slurm": "slurm", "debug": "debug"}
    assert backend_class("slurm") is SlurmBackend and backend_class("nope") is Backend and backend_class(None) is Backend
    assert not any(getattr(Backend, a) for a in ("runs_here", "in_process", "tracks_jobs", "requeues", "accounted_by_sacct"))


def test_what_sets_the_backends_apart():
    assert [cls.runs_here for cls in (LocalBackend, SlurmBackend, DebugBackend)] == [True, False, True]
    assert [cls.in_process for cls in (LocalBackend, SlurmBackend, DebugBackend)] == [False, False, True]
    assert [cls.requeues_in_process for cls in (LocalBackend, SlurmBackend, DebugBackend)] == [True, False, False]
    assert [cls.pauses_at_rungs for cls in (LocalBackend, SlurmBackend, DebugBackend)] == [True, False, False]
    assert [cls.evaluation_job_per_task for cls in (LocalBackend, SlurmBackend, DebugBackend)] == [False, True, False]
    assert [cls.accounted_by_sacct for cls in (LocalBackend, SlurmBackend, DebugBackend)] == [False, True, False]
    assert SlurmBackend.signal_early_s == 30 and LocalBackend.signal_early_s == 0


def test_only_a_scheduler_has_a_job_script_and_a_cap_on_jobs_per_submission(tmp_path):
    assert LocalBackend(tmp_path).job_script(Resources()) is None and LocalBackend(tmp_path).max_array_size(7) == 7
    assert DebugBackend(tmp_path).max_array_size(0) == 1
    script = SlurmBackend(tmp_path).job_script(Resources(job_name="x"))
    assert script is not None and "#SBATCH --job-name=x" in script


def test_a_local_job_reads_as_running_from_the_moment_it_is_started_until_it_ends():
    """A local job's id is its controller's process id. Right after the start, during its exec, the
    process shows an empty command line for a moment: following the run must not read that as ended
    (it printed "no status recorded" and left the run training). A zombie and a reaped process are ended."""
    jobs, states = [], []
    for _ in range(20):
        jobs.append(start_like_submitit())
        states.append(local_state(str(jobs[-1].pid)))  # read at once, as the submitting terminal does
    for job in jobs:
        job.wait()
    assert states == ["RUNNING"] * 20
    ended = subprocess.Popen(["true"])
    while not Path(f"/proc/{ended.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
        time.sleep(0.01)
    assert local_state(str(ended.pid)) == "DONE"  # a zombie
    ended.wait()
    assert local_state(str(ended.pid)) == "DONE" and local_state("not-a-pid") == "DONE"
    # a kernel thread (empty command line too) that took a job's id since is not the job
    kernel_threads = [
        p.parent.name for p in Path("/proc").glob("[0-9]*/stat") if int(p.read_text().rpartition(")")[2].split()[6]) & PF_KTHREAD
    ]
    assert kernel_threads and {local_state(pid) for pid in kernel_threads[:20]} == {"DONE"}, kernel_threads


def start_like_submitit() -> subprocess.Popen:
    """A process started as submitit starts a local controller: a shell whose command names submitit."""
    return subprocess.Popen(f"cd / && {sys.executable} -c 'import time; time.sleep(0.5)' submitit", shell=True)


def test_a_local_job_ignores_the_ctrl_c_that_stops_following_it(tmp_path):
    """A terminal's ctrl-C reaches its whole foreground group, and submitit starts a local job's
    controller in the submitting command's: ctrl-C to stop following a run killed the run (a crash)
    and printed the controller's traceback. The job's processes start with SIGINT ignored."""
    backend = LocalBackend(tmp_path)
    # a handler of our own, as a terminal's Python has (a pytest-xdist worker starts with SIGINT ignored,
    # which the job would then inherit whatever the backend did)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        (job_id,) = backend.submit([functools.partial(signal.getsignal, signal.SIGINT)], Resources(time_minutes=5))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process's own is restored
    finally:
        signal.signal(signal.SIGINT, previous)
    assert LocalJob(folder=backend.folder, job_id=job_id).result() == signal.SIG_IGN  # in the job's task process


def test_a_debug_job_leaves_the_callers_logging_as_it_found_it(tmp_path):
    """The debug backend runs a job in the caller's interpreter; the job's rank-log handlers must not
    outlive it (they wrote the caller's later lines into that run's log, or into a closed stream)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def job() -> None:
        root.addHandler(logging.FileHandler(tmp_path / "rank_0.log"))
        root.setLevel(logging.DEBUG if level != logging.DEBUG else logging.INFO)

    DebugBackend(tmp_path).submit([job], Resources(time_minutes=5))
    assert root.handlers == handlers and root.level == level
