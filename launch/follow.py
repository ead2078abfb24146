"""Follow a run on the local backend in the submitting terminal: progress while it trains, then its
evaluations, then the results table. Ctrl-C stops following, not the run (it is a separate process)."""

from __future__ import annotations

import json
import time

from launch.backends import local_state
from launch.rundir import RunDirectory

SHOWN = ("loss", "loss_post", "kl_value", "mae_loss", "lr", "pairs_per_s")


def new_metric_lines(run: RunDirectory, after_step: int) -> list[dict]:
    path = run.path / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record.get("step", 0) > after_step:
            out.append(record)
    return out


def follow(run: RunDirectory, job_id: str, poll_s: float = 2.0) -> int:
    shown = 0
    try:
        while True:
            alive = local_state(job_id) == "RUNNING"
            for record in new_metric_lines(run, shown):
                total = run.total_steps() or "?"
                values = "  ".join(f"{k} {record[k]:.4g}" for k in SHOWN if isinstance(record.get(k), (int, float)))
                print(f"step {record['step']}/{total}  {values}", flush=True)
                shown = record["step"]
            if not alive:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; the run goes on (job {job_id}). See it with: python launch/status.py {run.path.parent}")
        return 130
    status = run.status()
    if not status or status["state"] != "finished":
        attempts = run.attempts()
        why = attempts[-1].error if attempts and attempts[-1].error else (status or {}).get("reason", "no status recorded")
        print(f"run did not finish: {why}\nlogs: {run.path / 'logs'}")
        return 1
    print(f"training finished: {status['reason']} ({run.path})")
    cfg = run.config()
    if cfg.evaluation.tasks:
        from launch.evaluations import wait_and_report

        return wait_and_report(run, poll_s)
    return 0
