"""Does pretraining still buy something? A shortened CPU study (README, "Does it learn?"): RSP runs of
experiment=cpu_study with fewer steps, and the J&F of their step-0 (the initialization) and final
checkpoints on the generated 30-sequence DAVIS-format set, with the difference. A regression that
silently breaks learning (a wrong target, a detached gradient, a bad schedule) shows up here as a
difference near zero or below; every test passes either way.

    python bench/learning_signal.py [--steps 300] [--seeds 0] [--variant rsp|none|nomae] [--work DIR]

Same model, data, benchmark and protocol as the study (experiment=cpu_study); trained in this process
with rsp.train.train and evaluated with eval.run.evaluate (the scheduler path is what the tests and the
study exercise). Generated videos and the benchmark go to --work (default: a temporary folder; pass one
to reuse them). Prints a table and writes bench/results/learning_signal.json. About 3 minutes per seed
on a quiet 2-core machine at the default 300 steps.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report  # noqa: E402
from eval.run import evaluate  # noqa: E402
from launch.config import absolutize, compose, train_config  # noqa: E402
from launch.dispatch import ensure_generated_data  # noqa: E402
from launch.evaluations.expected import eval_config_for  # noqa: E402
from rsp.distributed import DistEnv  # noqa: E402
from rsp.manifest import checkpoint_name  # noqa: E402
from rsp.train import train  # noqa: E402

VARIANTS = {  # the study's three (sweeps/cpu_study.yaml)
    "rsp": [],
    "none": ["model.latent=none", "model.kl_scale=0"],
    "nomae": ["model.mae_aux=off"],
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(work: Path, variant: str, seed: int, steps: int) -> dict:
    overrides = [
        "experiment=cpu_study",
        "cluster=debug",
        f"output_root={work / 'runs'}",
        f"data.root={work / 'videos'}",
        f"evaluation.data_roots.davis={work / 'davis'}",
        f"schedule.total_steps={steps}",
        f"checkpoint.every_steps={steps}",
        f"checkpoint.milestone_every_steps={steps}",
        f"runtime.seed={seed}",
        *VARIANTS[variant],
    ]
    cfg = absolutize(compose(overrides), work)
    ensure_generated_data(cfg)
    run_dir = work / "runs" / f"{variant}-seed{seed}-{steps}steps"
    started, cpu = time.perf_counter(), cpu_seconds()
    train(train_config(cfg), DistEnv(), run_dir)
    trained = time.perf_counter() - started
    scores = {}
    for step in (0, steps):
        checkpoint = run_dir / "checkpoints" / checkpoint_name(step)
        scores[step] = evaluate(eval_config_for(cfg, "davis", checkpoint, run_dir / "eval" / str(step))).metrics["J&F-Mean"]
    return {
        "variant": variant,
        "seed": seed,
        "steps": steps,
        "step0_jf": 100 * scores[0],
        "final_jf": 100 * scores[steps],
        "difference": 100 * (scores[steps] - scores[0]),
        "train_s": trained,
        "total_s": time.perf_counter() - started,
        "cpu_s": cpu_seconds() - cpu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run (the study: 400)")
    p.add_argument("--seeds", default="0", help="comma-separated runtime.seed values")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="rsp")
    p.add_argument("--work", type=Path, default=None, help="where videos, benchmark and runs go (default: a temporary folder)")
    args = p.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        rows = [one_run(work, args.variant, int(seed), args.steps) for seed in args.seeds.split(",")]
    differences = [r["difference"] for r in rows]
    report(
        "learning_signal",
        rows,
        {
            "mean_difference": sum(differences) / len(differences),
            "load_average_at_start": load,
            "load_average_at_end": os.getloadavg(),
            "what": "DAVIS J&F x100 on the generated 30-sequence set (preset rsp, frame 96); difference = final - step 0",
        },
    )


if __name__ == "__main__":
    main()
