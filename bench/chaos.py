"""Randomized chaos on the real local SLURM cluster (started here in a temporary state dir): N
training runs with loader workers, one or two nodes, each interrupted once or twice by a seeded
schedule (testkit/chaos.py: stop signals inside an attempt's first seconds, during checkpointing,
scontrol requeue while the workers run, kill -9 of a rank or a worker, preemption, two in a row).
Every run must end bitwise identical to an uninterrupted run with no manual step.

    python bench/chaos.py                           # N=10, a random seed (printed first)
    python bench/chaos.py --seed 1234 --runs 10     # replay a schedule
    python bench/chaos.py --seed 1234 --only 3      # replay one run of it

Prints a table (interruptions with their time after the attempt's start, attempt ends, steps
lost as recorded by status and as measured from rank 0's log lines, bitwise yes/no) and writes
chaos.json in the results directory (bench/bench_io.py). Targets: 10 of 10 bitwise; >= 3 runs with a signal inside an
attempt's first 5 s; >= 2 with scontrol requeue while loader workers run; recorded = measured.
Needs root and SLURM's Debian packages (python -m localslurm install). Waits for the
machine's local-cluster lock (the test suite's) first: one such cluster per machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_io import report  # noqa: E402
from launch.config import train_config  # noqa: E402
from localslurm.cluster import LocalSlurmCluster  # noqa: E402
from rsp.distributed import DistEnv  # noqa: E402
from rsp.synthetic import generate_dataset  # noqa: E402
from rsp.train import train  # noqa: E402
from testkit.chaos import KINDS, describe, make_schedule, outcome, rows, submit_schedule, summary  # noqa: E402
from testkit.launching import only_run  # noqa: E402
from testkit.training import assert_same_training_state, torchrun  # noqa: E402

LOCK = Path(tempfile.gettempdir()) / "rsp-local-slurm-session.lock"  # tests/slurm_fixtures.py's


@contextlib.contextmanager
def private_cluster(prefix: str) -> Iterator[Path]:
    """A temporary directory with a local SLURM cluster of its own (its environment exported to this
    process), started under the machine-wide lock the test suite also takes, stopped on the way out."""
    with open(LOCK, "a") as lock, tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cluster = LocalSlurmCluster(Path(tmp) / "slurm")
        cluster.start()
        os.environ.update(cluster.env)
        try:
            yield Path(tmp)
        finally:
            cluster.stop()


def references(tmp: Path):
    made: dict[int, Path] = {}

    def same_as_reference(run) -> bool:
        ranks = run.info().world_size
        if ranks not in made:
            made[ranks] = tmp / f"reference{ranks}"
            if ranks == 1:
                train(train_config(run.config()), DistEnv(), made[ranks])
            elif torchrun(train_config(run.config()), made[ranks], tmp, nproc=ranks, timeout=1800).returncode != 0:
                raise RuntimeError(f"the {ranks}-rank reference run failed")
        try:
            assert_same_training_state(run.path, made[ranks])
        except AssertionError as exc:
            print(f"run {run.path} differs from the reference: {exc}")
            return False
        return True

    return same_as_reference


def wait_all(schedule, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for chaos in schedule:
        if chaos.root is None or chaos.error:
            continue
        run = only_run(chaos.root)
        while run.final_state() not in ("finished", "failed") and time.monotonic() < deadline:
            time.sleep(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--only", type=int, default=None, help="replay one run of the schedule")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (a preemption preempts them all)")
    p.add_argument("--no-preempt", action="store_true", help="leave preemption out (as the test suite does)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for a batch of runs to end")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    kinds = tuple(k for k in KINDS if not (args.no_preempt and k == "preempt"))
    schedule = make_schedule(seed, args.runs, kinds)
    print(
        f"chaos seed {seed} (replay: python bench/chaos.py --seed {seed} --runs {args.runs}):\n{describe(schedule)}", flush=True
    )
    if args.only is not None:
        schedule = [schedule[args.only]]
    started = time.time()
    with private_cluster("rsp-chaos-") as tmp:
        generate_dataset(tmp / "videos", 16, num_classes=2, height=64, width=80, num_frames=40, keyint=30)
        for i in range(0, len(schedule), args.parallel):
            batch = schedule[i : i + args.parallel]
            for thread in submit_schedule(batch, tmp / "videos", tmp / "runs", seed):
                thread.join(args.timeout)
            wait_all(batch, args.timeout)
        same = references(tmp)
        for chaos in schedule:
            if chaos.error is None:
                chaos.outcome = outcome(chaos, same)
    result = summary(schedule, seed)
    result["wall_s"] = round(time.time() - started, 1)
    result["load_average"] = os.getloadavg()
    result["targets"] = {
        "bitwise": f"{len(schedule)} of {len(schedule)}",
        "signal_in_first_5s": ">= 3",
        "requeue_while_workers_run": ">= 2",
    }
    report("chaos", rows(schedule), result)


if __name__ == "__main__":
    main()
