"""Shared pieces of the launcher tests: submitting through launch/submit.py, waiting for runs,
and explaining a failure with the run's own records and logs."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from pathlib import Path

from launch.rundir import RunDirectory
from launch.status import lost_time
from launch.submit import main as submit_main

TINY = [
    "experiment=smoke",
    "evaluation.tasks=[]",
    "data.synthetic_videos=0",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.max_gap=8",
    "model.img_size=32",
    "runtime.deterministic=true",
    "runtime.cpu_threads=1",
    "runtime.log_every_steps=1",
    "checkpoint.milestone_every_steps=0",
    "cluster.cpus_per_task=1",
    "cluster.signal_delay_s=30",
]


def merged(*items: str) -> list[str]:
    """Overrides with each key once, the later one kept: a test's defaults, then what it changes (the
    command line refuses a key given twice, launch.config.check_overrides)."""
    out: dict[str, str] = {}
    for item in items:
        key = item.split("=", 1)[0]
        out.pop(key, None)
        out[key] = item
    return list(out.values())


def overrides(videos: Path, root: Path, steps: int, every: int, *extra: str, backend: str = "slurm") -> list[str]:
    return merged(
        *TINY,
        f"cluster={backend}",
        f"data.root={videos}",
        f"output_root={root}",
        f"schedule.total_steps={steps}",
        "schedule.warmup_steps=2",
        f"checkpoint.every_steps={every}",
        *extra,
    )


def halving_sweep_file(
    tmp_path: Path,
    videos: Path,
    root: Path,
    backend: str,
    steps: int,
    rung: int,
    lrs: Sequence[float],
    promotion: str = "",
    extra: Sequence[str] = (),
) -> Path:
    """A sweep file `halving_test` over optim.lr of a tiny smoke model with one rung (its only
    milestone before the end besides step 0), each run evaluated on a generated DAVIS set.
    `promotion`: more keys of the select block (", promotion: async, min_reports: 2"); `extra`:
    more overrides (a bigger step, no step-0 milestone ...)."""
    common = merged(
        *[o for o in TINY if not o.startswith("experiment=")],
        f"cluster={backend}",
        f"data.root={videos}",
        f"output_root={root}",
        f"schedule.total_steps={steps}",
        "schedule.warmup_steps=2",
        "checkpoint.every_steps=10",
        f"checkpoint.milestone_every_steps={rung}",
        "evaluation.tasks=[davis]",
        "evaluation.synthetic=true",
        f"evaluation.data_roots.davis={tmp_path / 'davis'}",
        "evaluation.cpus_per_task=1",
        "evaluation.time_minutes=15",
        *extra,
    )
    path = tmp_path / "halving_test.yaml"
    path.write_text(
        "experiment: smoke\nname: 'lr{optim.lr}'\n"
        f"overrides: {json.dumps(common)}\n"
        f"axes:\n  - key: optim.lr\n    values: {json.dumps(list(lrs))}\n"
        f"select: {{metric: 'davis:J&F-Mean', mode: max, keep: 0.5, rungs: [{rung}]{promotion}}}\n"
    )
    return path


def sacct_rows(job_ids: Sequence[str], fields: str) -> list[list[str]]:
    """sacct's own text for every allocation of these jobs (`-D -X`): one list of `fields` per row."""
    out = subprocess.run(
        ["sacct", "-D", "-X", "-P", "-n", "-o", fields, "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines()]


def hydra_quote(value: str) -> str:
    """A Hydra override value that stays one string whatever it holds (quotes, spaces, newlines)."""
    return "'" + value.replace("'", "\\'") + "'"  # Hydra: \' is the only escape inside '...'


# Commands run in this process's main thread, one at a time. Hydra's configuration state is
# process-global, and so are the standard streams a command's output is captured from; pytest swaps
# those streams in the main thread at every test phase, so a capture in another thread can lose its
# output to pytest's. The suite's pooled scenarios (tests/slurm_pool.py) run in threads: they post
# their commands, and the main thread runs them wherever it waits (`serve_commands`: wait_for, a
# scenario's or a driver's result).
_REQUESTS: queue.SimpleQueue = queue.SimpleQueue()
COMMAND_WAIT_S = 1800  # a thread waits this long for the main thread to run its command


def run_command(main: Callable[[list[str]], int], args: Sequence[str]) -> tuple[int, str]:
    """Run a command's `main(argv)` in this process; returns (exit status, everything it printed)."""
    if threading.current_thread() is threading.main_thread():
        return _run_here(main, args)
    done: Future = Future()
    _REQUESTS.put((main, list(args), done))
    return done.result(timeout=COMMAND_WAIT_S)


def serve_commands() -> None:
    """In the main thread: run the commands other threads posted. Elsewhere: nothing."""
    while threading.current_thread() is threading.main_thread():
        try:
            main, args, done = _REQUESTS.get_nowait()
        except queue.Empty:
            return
        try:
            done.set_result(_run_here(main, args))
        except BaseException as error:  # the posting thread re-raises it
            done.set_exception(error)


def join_serving(thread: threading.Thread, timeout: float) -> None:
    """thread.join(timeout), running posted commands meanwhile (a scenario may be waiting on one)."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        serve_commands()
        thread.join(0.2)


def _run_here(main: Callable[[list[str]], int], args: Sequence[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        rc = main(list(args))
    return rc, buffer.getvalue()


def submit(args: Sequence[str]) -> tuple[int, str]:
    """launch/submit.py in this process; returns (exit status, everything it printed)."""
    return run_command(submit_main, args)


def only_run(root: Path) -> RunDirectory:
    runs = [p.parent for p in root.glob("*/run.json")]
    assert len(runs) == 1, f"expected one run under {root}, found {runs}"
    return RunDirectory(runs[0])


def job_id(run: RunDirectory) -> str:
    return run.last_submission().job_id


def squeue_ids(under: Path, evaluations: bool = True) -> set[str]:
    """The queued or running jobs whose batch script lies under `under` (an output root: the launcher
    writes every job's script into the root's scheduler folders). Scoped, because other scenarios of
    the suite's pool submit jobs to the same cluster at the same time. `evaluations=False` leaves out
    evaluation and watcher jobs (scripts under a run's evals/.jobs/): a finished run's last evaluation
    and the watchers that chain behind it are queued by jobs already running, whenever those get there,
    so "a resubmit queued nothing" is a statement about training jobs."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%o"], capture_output=True, text=True, check=True).stdout
    prefix = str(Path(under).resolve())
    jobs = ((job, command) for job, _, command in (line.partition("|") for line in out.splitlines()))
    return {job for job, command in jobs if command.startswith(prefix) and (evaluations or "/evals/.jobs/" not in command)}


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, explain: Callable[[], str] = lambda: "", poll_s: float = 1.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        serve_commands()
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{explain()}")


def explain(run: RunDirectory) -> str:
    """Everything a failing test needs: attempts, status, scheduler state, log tails."""
    parts = [f"run {run.path}", f"status: {run.status()}"]
    parts += [f"attempt: {json.dumps(a.__dict__)}" for a in run.attempts()]
    subs = run.submissions()
    if subs:
        jid = subs[-1].job_id
        sacct = subprocess.run(
            ["sacct", "-n", "-P", "-j", jid, "-o", "JobID,State,ExitCode,Elapsed"], capture_output=True, text=True
        )
        parts.append(f"sacct: {sacct.stdout.strip()}")
        folder = Path(subs[-1].folder or "")
        for log in sorted(folder.glob(f"**/{jid.split('_')[0]}*_log.*"))[-4:]:
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
    for log in sorted(run.path.glob("logs/*/rank_*.log"))[-3:]:
        parts.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)


def wait_finished(run: RunDirectory, timeout: float = 900) -> dict:
    wait_for(
        lambda: run.final_state() in ("finished", "failed"),
        timeout,
        f"{run.path.name} to end",
        lambda: explain(run),
    )
    status = run.status()
    assert status.state == "finished", explain(run)
    return status


def steps_lost(run: RunDirectory) -> int:
    """Steps an attempt computed that the next one had to compute again."""
    return lost_time(run, run.attempts())[1]


class Driver(threading.Thread):
    """Does `action(run)` once `ready(run)` holds, in the background, so that a scenario interferes
    with a run while it trains even though the tests that check the outcome run one after another."""

    def __init__(
        self,
        root: Path,
        ready: Callable[[RunDirectory], bool],
        action: Callable[[RunDirectory], object],
        timeout: float = 600,
        poll_s: float = 1.0,
    ):
        super().__init__(daemon=True)
        self.root, self.ready, self.action, self.timeout, self.poll_s = root, ready, action, timeout, poll_s
        self.error: Exception | None = None
        self.done_at: float | None = None
        self.value: object = None  # what the action returned
        self.start()

    def run(self) -> None:
        try:
            run = only_run(self.root)
            wait_for(lambda: self.ready(run), self.timeout, f"{self.root.name} to be ready", lambda: explain(run), self.poll_s)
            self.value = self.action(run)
            self.done_at = time.time()
        except Exception as exc:  # reported by the test that owns the scenario
            self.error = exc

    def result(self) -> object:
        """What the action returned, once it has acted; its failure raised here."""
        join_serving(self, self.timeout)
        if self.error is not None:
            raise self.error
        assert self.done_at is not None, f"driver of {self.root} never acted"
        return self.value


# --- racing submits (tests/test_submit_races.py, tests/test_sweep_slurm.py) ------------------------

REPO = Path(__file__).resolve().parents[1]
SUBMIT = [sys.executable, str(REPO / "launch" / "submit.py")]


@contextmanager
def holding_claims(paths: Sequence[Path]) -> Iterator[None]:
    with ExitStack() as held:
        for path in sorted(paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = held.enter_context(path.open("a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def waiters_on(path: Path) -> int:
    """Processes blocked on an flock of `path` (/proc/locks lists each waiter with '->')."""
    inode = os.stat(path).st_ino
    return sum(
        1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and line.split()[-3].endswith(f":{inode}")
    )


def race(commands: list[list[str]], claims: list[Path]) -> list[str]:
    """Start every command while holding `claims`; release once all of them wait on the first claim.
    Returns each command's output (every command must succeed)."""
    with holding_claims(claims):
        procs = [subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
        wait_for(
            lambda: waiters_on(min(claims)) == len(commands) or any(p.poll() is not None for p in procs),
            240,
            f"{len(commands)} submits to queue on {min(claims).name}",
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
    return outputs


def job_counts(root: Path) -> dict[str, int]:
    return {p.parent.name: len(list((p.parent / "submissions").glob("*.json"))) for p in root.glob("*/run.json")}


def most_at_once(intervals: Sequence[tuple[float, float]]) -> tuple[int, float]:
    """The most intervals [start, end) that overlap at one moment, and a moment they do (an
    allocation that ends when another starts does not overlap it)."""
    events = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])  # ends first on a tie
    peak, at, now = 0, 0.0, 0
    for moment, change in events:
        now += change
        if now > peak:
            peak, at = now, moment
    return peak, at
