"""Follow a run (or a sweep) on the local backend in the submitting terminal: progress while it
trains, then its evaluations, then the results table. Ctrl-C stops following, not the runs (they
are separate processes). Following a sweep also advances it on every poll (launch/advance.py: due
rungs decided, lost evaluations resubmitted)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from core.atomicio import size_text
from launch.advance import advance
from launch.backends import local_state
from launch.evaluations.claims import FAILED, is_failed, is_recorded
from launch.evaluations.expected import expected
from launch.results import aggregate_runs
from launch.rundir import RunDirectory
from launch.runstate import reconcile
from launch.status import render
from launch.sweeps.rungs import SweepDirectory, rung_views

FULL_DISK_BYTES = 1 << 20  # less free than this under a run that recorded nothing: its disk is the likely cause
SHOWN = ("loss", "loss_post", "kl_value", "mae_loss", "lr", "pairs_per_s")


class MetricsTail:
    """The records appended to a metrics.jsonl since the last call, without reading it again from
    the top. A resumed run rewrites the file truncated to its checkpoint (rsp.metrics): a new inode
    or a shorter file starts over from the beginning."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.inode: int | None = None

    def new_records(self) -> list[dict]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.inode, self.offset = stat.st_ino, 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read on the next call
        self.offset += len(complete)
        out = []
        for line in complete.decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def follow(run: RunDirectory, job_id: str, poll_s: float = 2.0) -> int:
    shown, broken = 0, 0
    tail = MetricsTail(run.path / "metrics.jsonl")
    try:
        while True:
            alive = local_state(job_id) == "RUNNING"
            records = [r for r in tail.new_records() if r.get("step", 0) > shown]  # a rewritten log is read from the top again
            total = (run.total_steps() or "?") if records else "?"
            for record in records:
                values = "  ".join(f"{k} {record[k]:.4g}" for k in SHOWN if isinstance(record.get(k), (int, float)))
                print(f"step {record['step']}/{total}  {values}", flush=True)
                shown = record["step"]
                broken = int(record.get("broken_videos", broken))
            if not alive:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; the run goes on (job {job_id}). See it with: python launch/status.py {run.path.parent}")
        return 130
    if not run.path.is_dir():  # deleted or moved while it trained: its records, logs and checkpoints went with it
        print(f"run did not finish: its run directory {run.path} no longer exists (deleted or moved while the run trained)")
        return 1
    status = run.status()
    if not status or status.state != "finished":
        attempts = run.attempts()
        error = attempts[-1].error.strip().splitlines()[-1] if attempts and (attempts[-1].error or "").strip() else None
        why = status.reason if status else error or unrecorded_end(run)  # a cause in one line: the traceback is in the log
        print(f"run did not finish: {why}\nlogs: {run.path / 'logs'}; the traceback's tail: {run.path / 'attempts'}")
        return 1
    print(f"training finished: {status.reason} ({run.path})")
    if broken:  # skipped and counted, never silent (rsp.loading.BrokenVideoBudget stops a run past data.max_broken_fraction)
        print(
            f"{broken} video read(s) failed and were replaced by other videos; which ones: the rank logs under "
            f"{run.path / 'logs'}. Re-prepare the data (python -m rsp.prepare labels) to drop them"
        )
    cfg = run.config()
    if cfg.evaluation.tasks:
        return wait_and_report(run, poll_s)
    return 0


def unrecorded_end(run: RunDirectory) -> str:
    """Why a run that ended has no record of how: on a full disk its job could not write one."""
    free = shutil.disk_usage(run.path).free if run.path.is_dir() else FULL_DISK_BYTES
    if free >= FULL_DISK_BYTES:
        return "no status recorded"
    return (
        f"no status recorded: the disk of {run.path} is full ({size_text(free)} free), so the job could not record how it "
        "ended; free space there, then submit the same command again (it resumes from the newest kept checkpoint)"
    )


def wait_and_report(run: RunDirectory, poll_s: float = 2.0, timeout_s: float = 3600) -> int:
    """Local follow mode: wait until every expected evaluation has a record or failed, then print
    the results table of the run's output root."""
    deadline = time.time() + timeout_s
    todo = expected(run)  # training has ended: its milestones are all committed
    while True:
        open_ = [d for _, _, d in todo if not is_recorded(d) and not is_failed(d)]
        if not open_ or time.time() > deadline:
            break
        time.sleep(poll_s)
    failed = [d for _, _, d in todo if is_failed(d)]
    print(f"evaluations: {len(todo) - len(failed) - len(open_)} done, {len(failed)} failed, {len(open_)} unfinished")
    for d in failed:
        print(f"  failed: {d / FAILED}")
    report = aggregate_runs(run.path.parent, run.path.parent / "results")
    print(report.summary())
    return 0 if not failed and not open_ else 1


ENDED = ("finished", "failed", "pruned")


def open_evaluations(run: RunDirectory) -> int:
    """Evaluations of the run's milestones with neither a record nor a failure yet."""
    return sum(not is_recorded(d) and not is_failed(d) for _, _, d in expected(run))


def follow_sweep(runs: list[RunDirectory], sweep: SweepDirectory, poll_s: float = 3.0, timeout_s: float = 4 * 3600) -> int:
    """Follow a sweep's runs on the local backend until every run ended (finished, failed or
    pruned, or paused at a rung no evaluation in flight can close) and every evaluation of their
    milestones has a record or failed; print each run's
    progress when it changes and each rung's decision when it lands; then the results table and
    the sweep's status (rungs, cost, what pruning saved)."""
    root, started, shown, decided = sweep.output_root, time.time(), "", set(sweep.decisions())
    try:
        while time.time() - started < timeout_s:
            for line in advance(root, sweep.name, role="follow", runs=runs).lines():
                if not line.startswith("decided "):  # decisions are printed below, with their names
                    print(line, flush=True)
            for rung, decision in sorted(sweep.decisions().items()):
                if rung not in decided:
                    decided.add(rung)
                    print(f"step {rung} decided ({decision.decided_by.role}): {decision.summary()}", flush=True)
            states = reconcile(runs, root)
            progress = "  ".join(
                f"{s.run.info().name} {max(s.run.latest_logged_step(), s.run.last_checkpoint_step() or 0)}/"
                f"{s.run.total_steps() or '?'}{'' if s.state in ('running', 'pending') else ' ' + s.state}"
                for s in states
                if s.run.exists
            )
            evaluating = sum(open_evaluations(s.run) for s in states if s.run.exists)
            line = progress + (f"  | {evaluating} evaluation(s) open" if evaluating else "")
            views = rung_views(sweep)
            if views and views[-1].decision is None and views[-1].values.keys() | views[-1].waiting.keys():
                rung = views[-1]  # local runs that reached it pause until it is decided (launch.job.RungPause)
                line += f"  | rung {rung.rung}: {len(rung.values)} of {len(rung.values) + len(rung.waiting)} values in"
            if line != shown:
                print(f"[{time.time() - started:5.0f}s] {line}", flush=True)
                shown = line
            if all(s.state in ENDED or s.state == "paused" for s in states) and not evaluating:
                break  # a run still paused now waits for a value no job is computing (a failed evaluation)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; the sweep goes on. See it with: python launch/status.py {root} sweep={sweep.name}")
        return 130
    report = aggregate_runs(root, sweep=sweep.name)
    print(report.summary())
    print(render(root, sweep.name, advance(root, sweep.name, role="follow", runs=runs)))
    states = reconcile(runs, root)
    failed = [s.run.path.name for s in states if s.state not in ("finished", "pruned")]
    paused = [s.run.path.name for s in states if s.state == "paused"]
    if paused:
        print(
            f"runs paused at a rung that cannot close (a value is missing, see the rungs above): {', '.join(paused)}; "
            f"once the evaluation is retried (python -m launch.evaluations backfill {root} --retry-failed), "
            f"python launch/status.py {root} sweep={sweep.name} promotes or prunes them"
        )
    if failed:
        print(f"runs that did not finish: {', '.join(failed)} (logs under each run's logs/)")
    return 1 if failed else 0
