"""Does pretraining still buy something? A shortened CPU study (docs/learning.md): runs of
experiment=natural_study (natural clips; default) or experiment=cpu_study (camouflage clips), and the
J&F of their step-0 (the initialization) and final checkpoints on every benchmark the experiment
evaluates (the real-photo set `photo_davis` and the camouflage set `davis`), with the gains. A
regression that silently breaks learning (a wrong target, a detached gradient, a bad schedule) shows
up here as gains near zero or below; every test passes either way.

    python bench/learning_signal.py [--experiment natural_study] [--steps 400] [--seeds 0]
        [--variant rsp|none|nomae] [--work DIR] [--out FILE]

Same model, data, benchmarks and protocol as the study; trained in this process with rsp.train.train
(its log lines show the progress) and evaluated with eval.run.evaluate (the scheduler path is what
the tests and the study exercise). Generated videos and benchmarks go to --work (default: a
temporary folder; pass one to reuse them). Prints a table; writes JSON only to --out (nothing is
written into the checkout unless you say so). About 4 minutes per seed on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report, show  # noqa: E402
from eval.run import evaluate  # noqa: E402
from launch.config import absolutize, compose, train_config  # noqa: E402
from launch.dispatch import ensure_generated_data  # noqa: E402
from launch.evaluations.expected import eval_config_for  # noqa: E402
from rsp.distributed import DistEnv  # noqa: E402
from rsp.manifest import checkpoint_name  # noqa: E402
from rsp.train import train  # noqa: E402

log = logging.getLogger("learning_signal")

VARIANTS = {  # the study's three (sweeps/natural_study.yaml, sweeps/cpu_study.yaml)
    "rsp": [],
    "none": ["model.latent=none", "model.kl_scale=0"],
    "nomae": ["model.mae_aux=off"],
}
EXPERIMENTS = ("natural_study", "cpu_study")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(work: Path, experiment: str, variant: str, seed: int, steps: int) -> dict:
    tasks = compose([f"experiment={experiment}"]).evaluation.tasks
    overrides = [
        f"experiment={experiment}",
        "cluster=debug",
        f"output_root={work / 'runs'}",
        f"data.root={work / experiment / 'videos'}",
        *(f"evaluation.data_roots.{task}={work / task}" for task in tasks),
        f"schedule.total_steps={steps}",
        f"checkpoint.every_steps={steps}",
        f"checkpoint.milestone_every_steps={steps}",
        f"runtime.log_every_steps={max(1, steps // 10)}",
        f"runtime.seed={seed}",
        *VARIANTS[variant],
    ]
    cfg = absolutize(compose(overrides), work)
    log.info("%s %s seed %d: generating data (once) under %s", experiment, variant, seed, work)
    ensure_generated_data(cfg)
    run_dir = work / "runs" / f"{experiment}-{variant}-seed{seed}-{steps}steps"
    started, cpu = time.perf_counter(), cpu_seconds()
    log.info("training %d steps into %s", steps, run_dir)
    train(train_config(cfg), DistEnv(), run_dir)
    trained = time.perf_counter() - started
    row = {"experiment": experiment, "variant": variant, "seed": seed, "steps": steps}
    for task in tasks:
        scores = {}
        for step in (0, steps):
            log.info("evaluating step %d on %s", step, task)
            checkpoint = run_dir / "checkpoints" / checkpoint_name(step)
            ecfg = eval_config_for(cfg, task, checkpoint, run_dir / "eval" / f"{task}-{step}")
            scores[step] = 100 * evaluate(ecfg).metrics["J&F-Mean"]
        row |= {f"{task}_step0": scores[0], f"{task}_final": scores[steps], f"{task}_gain": scores[steps] - scores[0]}
    return row | {"train_s": trained, "total_s": time.perf_counter() - started, "cpu_s": cpu_seconds() - cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=EXPERIMENTS, default="natural_study", help="what the runs pretrain on")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per run (the studies: 400)")
    p.add_argument("--seeds", default="0", help="comma-separated runtime.seed values")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="rsp")
    p.add_argument("--work", type=Path, default=None, help="where videos, benchmarks and runs go (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print only)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        rows = [one_run(work, args.experiment, args.variant, int(seed), args.steps) for seed in args.seeds.split(",")]
    gains = {k: [r[k] for r in rows] for k in rows[0] if k.endswith("_gain")}
    extra = {f"mean_{k}": sum(v) / len(v) for k, v in gains.items()}
    extra |= {
        "load_average_at_start": load,
        "load_average_at_end": os.getloadavg(),
        "what": "J&F-Mean x100 on the generated 30-sequence sets (preset rsp, frame 96); gain = final - step 0",
    }
    if args.out:
        report("learning_signal", rows, extra, args.out)
    else:
        show(rows, extra)


if __name__ == "__main__":
    main()
