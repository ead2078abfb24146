"""Training throughput end to end (real video decoding) versus model-only (tensors already in
memory), the share of time spent waiting for data, 1 versus 2 processes, and what a checkpoint
costs the training loop.

    python bench/train_throughput.py [--model rsp_vit_small_patch16] [--img 112] [--batch 4] [--steps 6]

Targets: data-wait share under 10% with the default worker count; an S/16 checkpoint
(model + optimizer) adds under 5% to step time at the default interval (checkpoint.every_steps),
and blocks the loop only for its in-memory snapshot (the write runs in the background).
Each process uses 2 CPU cores / processes threads; the 2-process rows run through torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.bench_io import report  # noqa: E402
from core.schema import to_dict  # noqa: E402
from rsp.checkpoint import CheckpointStore, cpu_snapshot  # noqa: E402
from rsp.config import CheckpointConfig, DataConfig, ModelConfig, OptimConfig, RuntimeConfig, ScheduleConfig, TrainConfig  # noqa: E402
from rsp.model import create_model  # noqa: E402
from rsp.optim import build_optimizer  # noqa: E402
from rsp.synthetic import generate_dataset  # noqa: E402

WORKER = Path(__file__).resolve().parent / "train_worker.py"


def train_config(args, videos: Path) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(name=args.model, img_size=args.img),
        data=DataConfig(root=str(videos), batch_size=args.batch, num_workers=args.workers, pin_memory=False),
        optim=OptimConfig(lr=1e-4),
        schedule=ScheduleConfig(total_steps=args.steps + 2, warmup_steps=1),
        checkpoint=CheckpointConfig(every_steps=10_000),
        runtime=RuntimeConfig(log_every_steps=1, progress_bar="off"),
    )


def run_worker(cfg: TrainConfig, mode: str, nproc: int, tmp: Path) -> dict:
    cfg_file = tmp / f"cfg-{mode}-{nproc}.json"
    cfg_file.write_text(json.dumps(to_dict(cfg)))
    out = tmp / f"out-{mode}-{nproc}.json"
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    subprocess.run(
        [*launcher, str(WORKER), mode, str(cfg_file), str(tmp / f"run-{mode}-{nproc}"), str(out)],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // nproc))},
    )
    return json.loads(out.read_text())


def checkpoint_cost(model_name: str, every_steps: int, step_s: float, tmp: Path) -> dict:
    """An S/16 checkpoint at full size (params do not depend on img_size): what blocks the loop
    (the CPU snapshot) and what runs in the background (serialize + fsync + sha256)."""
    model = create_model(model_name)
    opt = build_optimizer(model, TrainConfig(model=ModelConfig(name=model_name)), 1e-4)
    for p in model.parameters():  # materialize AdamW moments as after a real step
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    start = time.perf_counter()
    payload = cpu_snapshot({"model": model.state_dict(), "optimizer": opt.state_dict()})
    snapshot_s = time.perf_counter() - start
    payload.update(config_hash="x", model_name=model_name, code_version="bench")
    start = time.perf_counter()
    manifest = CheckpointStore(tmp / "ckpt").commit(1, payload, milestone=False)
    write_s = time.perf_counter() - start
    return {
        "checkpoint_mib": manifest.bytes / 2**20,
        "snapshot_s": snapshot_s,
        "background_write_s": write_s,
        "every_steps": every_steps,
        "overhead_pct_async": 100 * snapshot_s / (every_steps * step_s),
        "overhead_pct_if_synchronous": 100 * (snapshot_s + write_s) / (every_steps * step_s),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="rsp_vit_small_patch16")
    p.add_argument("--img", type=int, default=112)
    p.add_argument("--batch", type=int, default=4, help="videos per process (x repeated_sampling 2 pairs)")
    p.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    p.add_argument(
        "--workers", type=int, default=DataConfig().num_workers, help="loader workers per process (default: the config's)"
    )
    p.add_argument("--videos", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_dataset(tmp / "videos", args.videos, height=256, width=320, num_frames=90, keyint=30, jobs=2)
        cfg = train_config(args, tmp / "videos")
        rows = []
        for nproc in (1, 2):
            for mode in ("end-to-end", "model-only"):
                r = run_worker(cfg, mode, nproc, tmp)
                rows.append({"processes": nproc, "mode": mode, **r})
        step_s = next(r["step_s"] for r in rows if r["processes"] == 1 and r["mode"] == "end-to-end")
        ckpt = checkpoint_cost("rsp_vit_small_patch16", CheckpointConfig().every_steps, step_s, tmp)
    e2e = {r["processes"]: r for r in rows if r["mode"] == "end-to-end"}
    report(
        "train_throughput",
        rows,
        {
            "setting": f"{args.model} at {args.img} px, {args.batch} videos x 2 pairs per process, {args.workers} loader workers",
            "data_wait_share_1proc": e2e[1]["data_wait_share"],
            "data_wait_share_2proc": e2e[2]["data_wait_share"],
            "checkpoint": ckpt,
            "targets": {"data_wait_share": "< 0.10", "checkpoint_overhead_pct": "< 5"},
        },
    )


if __name__ == "__main__":
    main()
