"""How long aggregating 10,000 result records takes (target: under 3 s): reading and checking
every record file and building the table (CSV, Markdown, typed JSON, paper view), and separately
the plots and TensorBoard hparams, which grow with the number of runs and metrics.

    python bench/results_aggregate.py [--runs 500] [--steps 10] [--tasks davis,jhmdb]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report  # noqa: E402
from eval.records import ResultRecord, write_record  # noqa: E402
from launch.results import aggregate_runs  # noqa: E402

METRICS = {
    "davis": ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"],
    "jhmdb": ["PCK@0.1", "PCK@0.2"],
    "vip": ["mIoU"],
}


def write_records(root: Path, runs: int, steps: int, tasks: list[str]) -> int:
    n = 0
    for r in range(runs):
        for s in range(1, steps + 1):
            for task in tasks:
                record = ResultRecord(
                    run_id=f"{r:012x}",
                    run_name=f"run{r}",
                    config_hash="c" * 64,
                    step=1000 * s,
                    task=task,
                    protocol_hash="p" * 64,
                    protocol={"preset": "rsp"},
                    metrics={m: (r * 7 + s) % 100 / 100 for m in METRICS[task]},
                    checkpoint_sha256="s" * 64,
                    checkpoint_path="/x.pt",
                    code_version="v",
                    job_id=str(n),
                    wall_time_s=1.0,
                    sweep_axes={"model.kl_scale": [0.001, 0.01, 0.1][r % 3], "data.max_gap": [16, 32, 48, 64][r % 4]},
                    model_name="rsp_vit_small_patch16",
                )
                write_record(
                    root / f"run{r}-{r:012x}" / "evals" / f"step_{1000 * s:08d}" / f"{task}-pppppppppppp" / "record.json", record
                )
                n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--tasks", default="davis,jhmdb")
    args = p.parse_args()
    tasks = args.tasks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        start = time.perf_counter()
        count = write_records(root, args.runs, args.steps, tasks)
        write_s = time.perf_counter() - start
        rows = []
        for label, plots in (("table only", False), ("table + plots + hparams", True)):
            start = time.perf_counter()
            out = aggregate_runs(root, Path(tmp) / f"out-{plots}", plots=plots, tensorboard=plots)
            rows.append(
                {
                    "what": label,
                    "records": count,
                    "rows": len(out.table),
                    "seconds": time.perf_counter() - start,
                    "plots": len(out.plots),
                    "warnings": len(out.warnings),
                }
            )
    report("results_aggregate", rows, {"target_s": 3.0, "write_records_s": write_s})


if __name__ == "__main__":
    main()
