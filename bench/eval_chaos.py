"""Evaluation jobs killed at every milestone, the last included, on the real local SLURM cluster
(started here in a temporary state dir). N tiny training runs, each with milestones at steps 0, 4
and 8 (the last is the run's end) evaluated on a generated DAVIS set as separate SLURM jobs; the
first job of every evaluation is killed as soon as its rank runs, by a seeded choice of:

    scancel   the job is cancelled: the evaluation is lost; the next milestone's job or, after the
              last one, the watcher job (launch/advance.py, afterany on the evaluation jobs)
              resubmits it
    usr2      SIGUSR2 to the batch shell (what a preemption sends): the evaluation stops and its
              teardown requeues the same job

Nothing else is done: no status call, no backfill, no manual step. Every run must end bitwise
identical to an uninterrupted run, and every evaluation (run x milestone) must reach the results
table (launch/results.py's aggregation).

    python bench/eval_chaos.py                      # N=3, a random seed (printed first)
    python bench/eval_chaos.py --seed 5 --runs 3    # replay a schedule

Prints one row per run and writes eval_chaos.json in the results directory (bench/bench_io.py).
Targets: every run bitwise, every evaluation in the table, every evaluation job killed once.
Needs root and SLURM's Debian packages (python -m localslurm install); waits for the machine's
local-cluster lock (the test suite's) first.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_io import report  # noqa: E402
from bench.chaos import private_cluster, references  # noqa: E402
from launch.evaluations.claims import submission  # noqa: E402
from launch.evaluations.recovery import evaluation_states  # noqa: E402
from launch.postmortem import live_job  # noqa: E402
from launch.results import aggregate_runs  # noqa: E402
from rsp.synthetic import generate_dataset  # noqa: E402
from testkit.chaos import rank_process  # noqa: E402
from testkit.launching import merged, only_run, submit  # noqa: E402

STEPS, MILESTONE_EVERY = 8, 4  # milestones 0, 4, 8: the last is the run's end, with no later milestone to recover it
ACTIONS = ("scancel", "usr2")


def run_overrides(tmp: Path, root: Path) -> list[str]:
    """One training config for every run (they differ only in what is killed): one reference run."""
    return merged(
        "experiment=smoke",
        "cluster=slurm",
        f"output_root={root}",
        f"data.root={tmp / 'videos'}",
        "data.synthetic_videos=0",
        "data.num_workers=0",
        "data.batch_size=2",
        "model.img_size=32",
        "runtime.deterministic=true",
        "cluster.cpus_per_task=1",
        "cluster.signal_delay_s=30",
        f"schedule.total_steps={STEPS}",
        "schedule.warmup_steps=2",
        f"checkpoint.every_steps={MILESTONE_EVERY}",
        f"checkpoint.milestone_every_steps={MILESTONE_EVERY}",
        "evaluation.tasks=[davis]",
        "evaluation.synthetic=true",
        f"evaluation.data_roots.davis={tmp / 'davis'}",
        "evaluation.overrides={davis: {frame_size: 64, cpu_threads: 1}}",
        "evaluation.cpus_per_task=1",
    )


class EvaluationKiller(threading.Thread):
    """Kills the first job of every evaluation of one run as soon as its rank runs, until the run
    has ended and every evaluation has a record (or failed)."""

    def __init__(self, root: Path, rng: random.Random, timeout: float):
        super().__init__(daemon=True)
        self.root, self.rng, self.deadline = root, rng, time.monotonic() + timeout
        self.killed: dict[str, dict] = {}  # evaluation directory -> what was done to its first job
        self.error: str | None = None
        self.start()

    def running_rank(self, job: str) -> bool:
        if live_job(job).get("JobState") != "RUNNING":
            return False
        try:
            return bool(rank_process(job, 0))
        except LookupError:
            return False

    def settled(self, run) -> bool:
        if run.final_state() not in ("finished", "failed"):
            return False
        states = evaluation_states([run])
        return bool(states) and all(s.state in ("recorded", "failed", "invalid") for s in states)

    def run(self) -> None:
        try:
            run = only_run(self.root)
            while not self.settled(run):
                if time.monotonic() > self.deadline:
                    self.error = "timed out"
                    return
                for claim in run.path.glob("evals/step_*/*/submitted.json"):
                    key = str(claim.parent.relative_to(run.path))
                    job = submission(claim.parent).job_id
                    if key in self.killed or not job or not self.running_rank(job):
                        continue
                    action = self.rng.choice(ACTIONS)
                    if action == "scancel":
                        subprocess.run(["scancel", job], check=True)
                    else:
                        subprocess.run(["scancel", "--batch", f"--signal={signal.SIGUSR2.name[3:]}", job], check=True)
                    self.killed[key] = {"job": job, "action": action, "at": time.time()}
                    print(f"{self.root.name}: {action} {key} (job {job})", flush=True)
                time.sleep(0.3)
        except Exception as exc:  # reported in the run's row
            self.error = repr(exc)


def outcome(root: Path, killer: EvaluationKiller, same_as_reference) -> dict:
    run = only_run(root)
    states = evaluation_states([run])
    table = aggregate_runs(root, plots=False, tensorboard=False).table
    in_table = set() if table.empty else {int(s) for s in table["step"]}
    recorded = {s.step for s in states if s.state == "recorded"}
    return {
        "run": root.name,
        "final": run.final_state(),
        "bitwise": run.final_state() == "finished" and same_as_reference(run),
        "evaluations": len(states),
        "killed": len(killer.killed),
        "actions": sorted(k["action"] for k in killer.killed.values()),
        "recorded": len(recorded),
        "in_table": sorted(in_table),
        "missing_from_table": sorted({s.step for s in states} - in_table),
        "error": killer.error,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=2400, help="seconds for every run and evaluation to end")
    args = p.parse_args()
    if args.runs < 1:
        p.error(f"--runs ({args.runs}) must be >= 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"evaluation chaos seed {seed} (replay: python bench/eval_chaos.py --seed {seed} --runs {args.runs})", flush=True)
    started = time.time()
    with private_cluster("rsp-eval-chaos-") as tmp:
        generate_dataset(tmp / "videos", 8, num_classes=2, height=64, width=80, num_frames=24, keyint=30)
        killers = {}
        for i in range(args.runs):
            root = tmp / f"run{i}"
            rc, out = submit(run_overrides(tmp, root))
            if rc != 0:
                raise RuntimeError(f"submit of run {i} failed:\n{out}")
            killers[root] = EvaluationKiller(root, random.Random(f"{seed}-{i}"), args.timeout)
        for killer in killers.values():
            killer.join(args.timeout)
        same = references(tmp)
        rows = [outcome(root, killer, same) for root, killer in killers.items()]
    result = {
        "seed": seed,
        "runs": len(rows),
        "bitwise": sum(r["bitwise"] for r in rows),
        "evaluations": sum(r["evaluations"] for r in rows),
        "killed": sum(r["killed"] for r in rows),
        "in_table": sum(r["evaluations"] - len(r["missing_from_table"]) for r in rows),
        "manual_steps": 0,
        "wall_s": round(time.time() - started, 1),
        "load_average": os.getloadavg(),
        "targets": {"bitwise": f"{len(rows)} of {len(rows)}", "in_table": "every evaluation", "killed": "every evaluation"},
    }
    report("eval_chaos", rows, result)


if __name__ == "__main__":
    main()
