"""A sweep simulator: successive halving on a 1,000-run sweep in seconds, through the project's own
decision code (launch/sweeps/promotion.py, which ranks with launch/sweeps/selection.py), with training and
evaluation replaced by modelled learning curves.

    python bench/sweep_sim.py [--runs 1000] [--parallelism 64] [--eta 3] [--rungs 3] [--seeds 10]
                              [--min-reports 64] [--out PATH]

Compared, on the same runs and the same noise: **grid** (every run to its end), **sync** (a rung is
decided once every live run has reported; runs train on meanwhile, as on SLURM today), **async**
(`promotion: async`: a run that does not rank in the top 1/eta of the reports so far pauses and
frees its slot; it resumes when promoted) and **sync-pause** (the synchronous rule with paused runs
freeing their slot: what async costs without early promotions). Per strategy: compute (training
steps, % of the grid's), wall time (in full-run lengths, `parallelism` slots; and when the first
run trained to its end, for the anytime view), and the final metric
of the best run trained to its end against the grid's best, in units of the seed noise's std.

The model (docs/sweeps.md#the-sweep-simulator), fitted to the CPU study (docs/evaluation.md: J&F
27.2 at step 0, 35.9 at 100, 37.8 at 200, 38.3 at 400 of 400; 0.8-1.4 std over seeds): run i scores
m0 + G_i (1 - exp(-t / tau_i)) + its seed's offset + evaluation noise, with tau = T/6 (the study's
fit), G_i = 11.1 q_i where the configuration's quality q_i ~ U(--quality-low, --quality-high),
tau_i = T/6 exp(N(0, --speed-spread)) (learning rates change the speed), a seed offset
N(0, 0.7) kept over the run and N(0, 0.7) per evaluation (1.0 J&F in all, as measured). Rungs are
at T / eta^k (k = rungs..1). Time runs at one step per slot-step; an evaluation's latency and cost
are not modelled (both are the same for every strategy), nor are queue waits or restarts.
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report  # noqa: E402
from launch.sweeps.promotion import Change, Promotion  # noqa: E402
from launch.sweeps.selection import Selection  # noqa: E402

TOTAL_STEPS = 400 * 27 * 8  # T: divisible by 3^3 and 4^3, so every rung is a whole step
START, GAIN, TAU_FRACTION = 27.2, 11.1, 1 / 6  # the CPU study's curve (docs/evaluation.md)
SEED_OFFSET_STD, EVAL_NOISE_STD = 0.7, 0.7
STRATEGIES = ("grid", "sync", "async", "sync-pause")


@dataclass
class Curves:
    """Every run's metric at every rung and at its end (columns: rungs..., T)."""

    steps: list[int]
    values: np.ndarray  # (runs, len(steps))
    noise_std: float  # std of one run's final metric over seeds

    @classmethod
    def draw(cls, runs: int, steps: list[int], args: argparse.Namespace, seed: int) -> Curves:
        rng = np.random.default_rng(seed)
        quality = rng.uniform(args.quality_low, args.quality_high, runs)
        tau = TOTAL_STEPS * TAU_FRACTION * np.exp(rng.normal(0, args.speed_spread, runs))
        t = np.asarray(steps, dtype=float)
        mean = START + GAIN * quality[:, None] * (1 - np.exp(-t[None, :] / tau[:, None]))
        noise = rng.normal(0, SEED_OFFSET_STD, (runs, 1)) + rng.normal(0, EVAL_NOISE_STD, (runs, len(steps)))
        return cls(steps, mean + noise, math.hypot(SEED_OFFSET_STD, EVAL_NOISE_STD))


@dataclass
class SimRun:
    index: int
    step: int = 0  # steps trained (its latest checkpoint when not running)
    started_at: float | None = None  # time its current segment started; None when not running
    target: int = 0
    generation: int = 0  # bumps when stopped, so its pending event is ignored
    state: str = "queued"  # queued | running | paused | pruned | finished
    buffered: dict[int, float] = field(default_factory=dict)  # rung index -> value reported while not yet live there


class Simulation:
    """One strategy on one draw of curves, `slots` runs at a time."""

    def __init__(self, curves: Curves, strategy: str, slots: int, selection: Selection | None):
        self.curves, self.strategy, self.slots = curves, strategy, slots
        self.rungs = list(selection.rungs) if selection else []
        self.promotion = Promotion(selection, [str(i) for i in range(len(curves.values))], False) if selection else None
        self.pauses = strategy in ("async", "sync-pause")
        self.runs = [SimRun(i) for i in range(len(curves.values))]
        self.fresh, self.resume = deque(self.runs), deque()
        self.events: list[tuple[float, int, int, int]] = []  # (time, seq, run, generation)
        self.now, self.compute, self.busy, self.seq = 0.0, 0, 0, 0
        self.counts = {"paused": 0, "promoted_late": 0, "demoted": 0, "pruned": 0}
        self.first_finished: float | None = None  # when the first run trained to its end

    def run(self) -> dict:
        self.fill()
        while self.events:
            when, _, index, generation = heapq.heappop(self.events)
            run = self.runs[index]
            if generation != run.generation:
                continue
            self.now = when
            self.advance(run)
            self.reached(run)
            self.fill()
        finished = [r.index for r in self.runs if r.state == "finished"]
        return {"compute": self.compute, "wall": self.now, "first": self.first_finished, "finished": finished, **self.counts}

    # --- slots ----------------------------------------------------------------------------------

    def fill(self) -> None:
        while self.busy < self.slots and (self.resume or self.fresh):
            run = self.resume.popleft() if self.resume else self.fresh.popleft()
            if run.state in ("pruned", "finished"):
                continue
            self.start(run)

    def start(self, run: SimRun) -> None:
        later = [s for s in self.rungs if s > run.step]
        run.target = later[0] if later else TOTAL_STEPS
        run.state, run.started_at = "running", self.now
        self.busy += 1
        self.seq += 1
        heapq.heappush(self.events, (self.now + run.target - run.step, self.seq, run.index, run.generation))

    def advance(self, run: SimRun) -> None:
        """Count the steps a running run trained since its segment started."""
        done = run.step + int(round(self.now - run.started_at))
        self.compute += done - run.step
        run.step, run.started_at = done, self.now

    def stop(self, run: SimRun, state: str) -> None:
        if run.state == "running":
            self.advance(run)
            self.busy -= 1
            run.generation += 1
        run.state, run.started_at = state, None

    # --- the decisions ----------------------------------------------------------------------------

    def reached(self, run: SimRun) -> None:
        if run.step == TOTAL_STEPS:
            self.stop(run, "finished")
            self.first_finished = self.first_finished or self.now
            return
        index = self.rungs.index(run.step)
        run.buffered[index] = float(self.curves.values[run.index, index])
        self.deliver(run)
        if run.state != "running":
            return  # pruned by the close its own report caused
        if self.promotion.rungs[index].closed or str(run.index) in self.promotion.rungs[index].promoted:
            self.start_next(run)
        elif self.pauses:
            self.stop(run, "paused")
            self.counts["paused"] += 1
        else:
            self.start_next(run)  # sync as on SLURM: train on while the rung is undecided

    def start_next(self, run: SimRun) -> None:
        self.stop(run, "queued")
        self.start(run)

    def deliver(self, run: SimRun) -> None:
        """Report the values the run has reached at rungs where it is live now."""
        for index in sorted(run.buffered):
            if not self.promotion.may_report(str(run.index), index):
                return
            self.apply(self.promotion.report(str(run.index), self.rungs[index], run.buffered.pop(index)))

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            outcome = change.outcome
            for rid in outcome.promoted:
                promoted = self.runs[int(rid)]
                if promoted.state == "paused":
                    self.counts["promoted_late"] += 1
                    promoted.state = "queued"
                    self.resume.append(promoted)
                elif promoted.buffered:
                    self.deliver(promoted)
            self.counts["demoted"] += len(outcome.demoted)
            for rid in outcome.pruned + outcome.demoted:
                pruned = self.runs[int(rid)]
                pruned.buffered.clear()
                if pruned.state != "finished":
                    self.counts["pruned"] += 1
                    self.stop(pruned, "pruned")


def simulate(curves: Curves, strategy: str, slots: int, eta: int, min_reports: int) -> dict:
    selection = None
    if strategy != "grid":
        promotion = "async" if strategy == "async" else "sync"
        selection = Selection("davis:J&F-Mean", "max", 1 / eta, tuple(curves.steps[:-1]), promotion,
                              min_reports if promotion == "async" else None)  # fmt: skip
    return Simulation(curves, strategy, slots, selection).run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--parallelism", type=int, default=64)
    p.add_argument("--eta", type=int, default=3, help="keep = 1/eta; rungs at T/eta^k")
    p.add_argument("--rungs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--min-reports", type=int, default=None, help="async: reports before early promotions (default: parallelism)")
    p.add_argument("--quality-low", type=float, default=0.25)
    p.add_argument("--quality-high", type=float, default=1.25)
    p.add_argument("--speed-spread", type=float, default=0.5, help="std of log(tau_i / tau)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    min_reports = args.min_reports or args.parallelism
    steps = [TOTAL_STEPS // args.eta**k for k in range(args.rungs, 0, -1)] + [TOTAL_STEPS]
    per_seed, began = [], time.perf_counter()
    for seed in range(args.seeds):
        curves = Curves.draw(args.runs, steps, args, seed)
        final = curves.values[:, -1]
        grid_best = float(final.max())
        for strategy in STRATEGIES:
            out = simulate(curves, strategy, args.parallelism, args.eta, min_reports)
            best = float(final[out["finished"]].max())
            per_seed.append(
                {
                    "seed": seed,
                    "strategy": strategy,
                    "compute_pct": 100 * out["compute"] / (args.runs * TOTAL_STEPS),
                    "wall_runs": out["wall"] / TOTAL_STEPS,
                    "first_final_runs": out["first"] / TOTAL_STEPS,
                    "finished": len(out["finished"]),
                    "best_gap_std": (grid_best - best) / curves.noise_std,
                    **{k: out[k] for k in ("paused", "promoted_late", "demoted", "pruned")},
                }
            )
    elapsed = time.perf_counter() - began
    rows = [summary(strategy, [r for r in per_seed if r["strategy"] == strategy]) for strategy in STRATEGIES]
    extra = {
        "runs": args.runs, "parallelism": args.parallelism, "eta": args.eta, "rung_steps": steps[:-1],
        "total_steps": TOTAL_STEPS, "min_reports": min_reports, "seeds": args.seeds, "seconds": round(elapsed, 2),
        "model": {"quality": [args.quality_low, args.quality_high], "speed_spread": args.speed_spread,
                  "seed_offset_std": SEED_OFFSET_STD, "eval_noise_std": EVAL_NOISE_STD},
    }  # fmt: skip
    report("sweep_sim", rows, extra, args.out)


def summary(strategy: str, rows: list[dict]) -> dict:
    compute = [r["compute_pct"] for r in rows]
    return {
        "strategy": strategy,
        "compute_%grid": sum(compute) / len(compute),
        "compute_max": max(compute),
        "wall_runs": sum(r["wall_runs"] for r in rows) / len(rows),
        "first_final_runs": sum(r["first_final_runs"] for r in rows) / len(rows),
        "finished": sum(r["finished"] for r in rows) / len(rows),
        "best_gap_std": sum(r["best_gap_std"] for r in rows) / len(rows),
        "seeds_within_1std": sum(r["best_gap_std"] <= 1 for r in rows),
        "gap_per_seed": " ".join(f"{r['best_gap_std']:.2f}" for r in rows),
        "demoted": sum(r["demoted"] for r in rows) / len(rows),
        "promoted_late": sum(r["promoted_late"] for r in rows) / len(rows),
    }


if __name__ == "__main__":
    main()
