"""Baselines of the generated benchmarks (docs/learning.md#the-real-photo-benchmark): what a score
on the real-photo set (`photo_davis`) and the camouflage set (`davis`) means without learning.

    python bench/benchmark_baselines.py [--seeds 0,1,2] [--work DIR] [--out FILE]

- copy the first mask: every frame predicted as frame 0's annotation (objects that stay put);
- random init: the CPU study's tiny ViT (rsp_vit_tiny_patch8) freshly initialized, one row per
  seed, drawn exactly as a training run draws its step-0 weights;
- raw pixel patches: each 8x8 patch's normalized RGB values as its feature (no network at all).
Same protocol as the study's evaluations (preset rsp, frame size 96, one thread). The sets are
written to --work (default: a temporary folder). Prints a table; writes JSON only to --out.
`--seeds 0` is the one command that evaluates a fresh random initialization.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report, show  # noqa: E402
from eval import jf  # noqa: E402
from eval.config import EvalConfig  # noqa: E402
from eval.davis import read_davis  # noqa: E402
from eval.protocol import frame_size, propagation_params  # noqa: E402
from eval.registry import get_task  # noqa: E402
from eval.task import Evaluation  # noqa: E402
from launch.config import compose, train_config  # noqa: E402
from rsp import rng  # noqa: E402
from rsp.model import create_model  # noqa: E402

TASKS = ("photo_davis", "davis")  # --tasks


class RawPixelPatches(torch.nn.Module):
    """An 'encoder' whose patch features are the patch's normalized pixels: (B, 1 + N, 3 * p * p)."""

    def __init__(self, patch_size: int = 8):
        super().__init__()
        self.patch_size = patch_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        patches = torch.nn.functional.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)  # (B, N, 3pp)
        return torch.cat([patches.mean(1, keepdim=True), patches], 1)


def random_init(seed: int) -> torch.nn.Module:
    cfg = train_config(compose(["experiment=cpu_study", f"runtime.seed={seed}"]))
    rng.seed_process(seed, rng.MODEL_INIT_STREAM)  # as rsp.train draws a run's step-0 weights
    return create_model(cfg.model)


def score(task: str, root: Path, encoder: torch.nn.Module, out: Path) -> float:
    cfg = EvalConfig(task=task, preset="rsp", frame_size=96, data_root=str(root), cpu_threads=1, workers=1)
    e = Evaluation(cfg, propagation_params(cfg), frame_size(cfg), encoder, torch.device("cpu"), out)
    return 100 * get_task(task).run(e)["J&F-Mean"]


def copy_first_mask(root: Path, out: Path) -> float:
    sequences = read_davis(root, "val")
    for seq in sequences:
        (out / seq.name).mkdir(parents=True, exist_ok=True)
        for mask in seq.annotations:
            shutil.copyfile(seq.annotations[0], out / seq.name / mask.name)
    return 100 * jf.evaluate(sequences, out, 1).global_metrics()["J&F-Mean"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the random initializations")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated benchmarks")
    p.add_argument("--work", type=Path, default=None, help="where the sets and predictions go (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print only)")
    args = p.parse_args()
    if not all(s.strip().isdigit() for s in args.seeds.split(",")):
        p.error(f"--seeds ({args.seeds!r}) must be comma-separated integers, e.g. 0,1,2")
    if unknown := [t for t in args.tasks.split(",") if t not in TASKS]:
        p.error(f"--tasks: {', '.join(unknown)} not registered; valid: {', '.join(TASKS)}")
    torch.set_num_threads(1)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        rows = []
        for task in args.tasks.split(","):
            root = work / task
            get_task(task).ensure_generated(root)
            row = {"task": task, "copy_first_mask": copy_first_mask(root, work / "pred" / task / "copy")}
            row["raw_pixels"] = score(task, root, RawPixelPatches(), work / "pred" / task / "pixels")
            for seed in args.seeds.split(","):
                row[f"random_init_seed{seed}"] = score(task, root, random_init(int(seed)), work / "pred" / task / f"init{seed}")
            draws = [v for k, v in row.items() if k.startswith("random_init")]
            row["random_init_mean"] = sum(draws) / len(draws)
            rows.append(row)
    extra = {"load_average_at_start": load, "load_average_at_end": os.getloadavg(), "what": "J&F-Mean x100, preset rsp, frame 96"}
    if args.out:
        report("benchmark_baselines", rows, extra, args.out)
    else:
        show(rows, extra)


if __name__ == "__main__":
    main()
