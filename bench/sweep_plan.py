"""How long planning a 1,000-run sweep with a `select:` block (successive halving) takes (target:
under 2 s), and how many sbatch calls it would make (target: resource groups x ceil(group size /
MaxArraySize)).

    python bench/sweep_plan.py [--runs-per-axis 10] [--max-array-size 1001]

Planning = expanding the sweep file, validating every run (the select block against each run's
milestones, length and evaluation tasks included), and reconciling with the run directories (one
batched scheduler query); measured in-process, after imports.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report  # noqa: E402
from launch.dispatch import array_chunks  # noqa: E402
from launch.plan import plan_sweep  # noqa: E402
from launch.sweeps.expand import load_sweep  # noqa: E402
from rsp.synthetic import generate_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-per-axis", type=int, default=10)
    p.add_argument("--max-array-size", type=int, default=1001)
    args = p.parse_args()
    n = args.runs_per_axis
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_dataset(tmp / "videos", 8, height=64, width=80, num_frames=20)
        sweep_file = tmp / "big.yaml"
        sweep_file.write_text(
            "experiment: smoke\nname: 'kl{model.kl_scale}-gap{data.max_gap}-seed{runtime.seed}'\n"
            f"overrides: ['data.root={tmp / 'videos'}', data.synthetic_videos=0, 'evaluation.tasks=[davis]', "
            f"'evaluation.data_roots.davis={tmp / 'davis'}', data.batch_size=2, 'output_root={tmp / 'runs'}']\n"
            "select: {metric: 'davis:J&F-Mean', mode: max, keep: 0.5, rungs: [20, 40]}\naxes:\n"
            f"  - key: model.kl_scale\n    values: {[round(0.001 * (i + 1), 4) for i in range(n)]}\n"
            f"  - key: data.max_gap\n    values: {[8 + i for i in range(n)]}\n"
            f"  - key: runtime.seed\n    values: {list(range(n))}\n"
        )
        plan_sweep(load_sweep(str(sweep_file)), [], tmp)  # warm caches that are not part of planning (imports)
        rows = []
        for repeat in range(3):
            start = time.perf_counter()
            plan = plan_sweep(load_sweep(str(sweep_file)), [], tmp)
            seconds = time.perf_counter() - start
            assert plan.sweep.selection is not None and plan.problems == [], plan.problems
            chunks = array_chunks([r.resources for r in plan.rows], args.max_array_size)
            groups = len({r.resources.group_key() for r in plan.rows})
            rows.append(
                {
                    "repeat": repeat,
                    "runs": len(plan.rows),
                    "plan_s": seconds,
                    "resource_groups": groups,
                    "sbatch_calls": len(chunks),
                    "expected_calls": groups * -(-len(plan.rows) // args.max_array_size),
                }
            )
    report("sweep_plan", rows, {"target_s": 2.0, "best_plan_s": min(r["plan_s"] for r in rows)})


if __name__ == "__main__":
    main()
