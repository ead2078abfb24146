"""Run by bench/train_throughput.py (alone or under torchrun): time training steps of one config.

train_worker.py end-to-end|model-only CONFIG.json RUN_DIR OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from core.schema import from_dict  # noqa: E402
from rsp.config import TrainConfig  # noqa: E402
from rsp.distributed import DistEnv, all_reduce_sum, init_process_group, shutdown  # noqa: E402
from rsp.model import create_model  # noqa: E402
from rsp.optim import build_optimizer  # noqa: E402
from rsp.train import train  # noqa: E402

WARMUP = 2


def end_to_end(cfg: TrainConfig, env: DistEnv, run_dir: Path) -> dict:
    """The real trainer; its own metrics give the per-step window times and data-wait shares."""
    start = time.perf_counter()
    train(cfg, env, run_dir)
    total = time.perf_counter() - start
    if not env.is_main:
        return {}
    logged = [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()][WARMUP:]
    pairs = cfg.data.batch_size * cfg.data.repeated_sampling * env.world_size
    step_s = sum(pairs / m["pairs_per_s"] for m in logged) / len(logged)
    wait = sum(m["data_wait_share"] * pairs / m["pairs_per_s"] for m in logged) / (step_s * len(logged))
    return {"step_s": step_s, "pairs_per_s": pairs / step_s, "data_wait_share": wait, "wall_incl_startup_s": total}


def model_only(cfg: TrainConfig, env: DistEnv) -> dict:
    """Forward + backward + AdamW on tensors already in memory: the loop without any data loading."""
    init_process_group(env, torch.device("cpu"), 10)
    model = create_model(cfg.model)
    module = DistributedDataParallel(model) if env.distributed else model
    opt = build_optimizer(model, cfg, 1e-4)
    n = cfg.data.batch_size * cfg.data.repeated_sampling
    src, tgt = (
        torch.randn(n, 3, cfg.model.img_size, cfg.model.img_size),
        torch.randn(n, 3, cfg.model.img_size, cfg.model.img_size),
    )
    times = []
    for _ in range(WARMUP + cfg.schedule.total_steps - WARMUP):
        start = time.perf_counter()
        module(src, tgt).loss.backward()
        all_reduce_sum(torch.zeros(8, dtype=torch.float64), env)  # the trainer's per-step collective
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    shutdown()
    step_s = sum(times[WARMUP:]) / len(times[WARMUP:])
    return {"step_s": step_s, "pairs_per_s": n * env.world_size / step_s, "data_wait_share": 0.0}


if __name__ == "__main__":
    mode, cfg_file, run_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    cfg = from_dict(TrainConfig, json.loads(cfg_file.read_text()))
    env = DistEnv.from_environ()
    result = end_to_end(cfg, env, run_dir) if mode == "end-to-end" else model_only(cfg, env)
    if env.is_main:
        out.write_text(json.dumps(result))
