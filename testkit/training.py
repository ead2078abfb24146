"""Shared pieces of the training-engine tests and benchmarks: a tiny config, a torchrun launch,
bitwise run comparison, and uninterrupted reference runs trained once per configuration."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from core.schema import fingerprint, to_dict
from rsp.checkpoint import CheckpointStore
from rsp.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)
from rsp.distributed import DistEnv
from rsp.lifecycle import StopRequest
from rsp.train import train

REPO = Path(__file__).resolve().parent.parent

# Logged values that depend on wall time; everything else must match bitwise across resumes.
TIMING_KEYS = {"time", "pairs_per_s", "data_wait_share"}


class StopOnRead(StopRequest):
    """A stop request that reads as requested from its `n`-th read on (with `reason`): a stop signal
    arriving at a known point of the training loop, which reads the request once per step."""

    def __init__(self, n: int, reason: str = "SIGUSR2"):
        super().__init__()
        self.n, self.stop_reason, self.reads = n, reason, 0

    @property
    def requested(self) -> bool:
        self.reads += 1
        if self.reads == self.n:
            self.reason = self.stop_reason
        return self.reads >= self.n


def tiny_config(root: Path, **sections) -> TrainConfig:
    """A few-second run of the tiny model on generated videos; `sections` override fields by
    section, e.g. runtime={"stop_after_steps": 3}."""
    cfg = TrainConfig(
        model=ModelConfig(name="rsp_vit_tiny_patch8", img_size=32),
        data=DataConfig(root=str(root), batch_size=2, max_gap=8, num_workers=0),
        optim=OptimConfig(lr=1e-3),
        schedule=ScheduleConfig(total_steps=8, warmup_steps=2),
        checkpoint=CheckpointConfig(every_steps=2, keep_last=2),
        # One thread: on this model's small ops a second intra-op thread triples the CPU time of a
        # step and is slower besides (2 cores shared by the suite's workers and jobs, tests/README.md)
        runtime=RuntimeConfig(log_every_steps=1, deterministic=True, cpu_threads=1),
    )
    for section, values in sections.items():
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    return cfg


def torchrun(
    cfg: TrainConfig, run_dir: Path, tmp_path: Path, nproc: int = 2, timeout: float = 240
) -> subprocess.CompletedProcess:
    """Train `cfg` into `run_dir` with `nproc` local ranks under torchrun (tests/dist_train_worker.py);
    the config travels as a JSON file in `tmp_path`."""
    cfg_file = tmp_path / f"cfg-{time.monotonic_ns()}.json"
    cfg_file.write_text(json.dumps(to_dict(cfg)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(REPO / "tests" / "dist_train_worker.py"),
        str(cfg_file),
        str(run_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def final_state(run_dir: Path) -> dict:
    store = CheckpointStore(run_dir / "checkpoints")
    manifest, _ = store.newest_valid()
    return store.load(manifest)


def loss_trace(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def assert_same_tensors(a, b, where: str = "") -> None:
    """Recursively: identical structure, and every tensor bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensors differ at {where}: max abs diff {(a.float() - b.float()).abs().max()}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"values differ at {where}: {a!r} != {b!r}"


def assert_same_training_state(run_a: Path, run_b: Path) -> None:
    a, b = final_state(run_a), final_state(run_b)
    assert a["step"] == b["step"]
    for key in ("model", "optimizer", "scaler", "counters", "data_position"):
        assert_same_tensors(a[key], b[key], key)
    assert loss_trace(run_a) == loss_trace(run_b)


class ReferenceRuns:
    """Uninterrupted runs of a training config, by (the config's result-affecting fields, its whole runtime
    section, rank count): the loader's process count, checkpoint cadence and other runtime-only data and
    checkpoint fields cannot change a trajectory, the runtime section can change what is compared (the
    logged trace, CPU threads, deterministic kernels). Each is trained once per directory and shared.
    A file lock per key lets several processes (xdist workers, bench scripts) share one directory: the
    second asker waits for the first one's run instead of training it again."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, cfg: TrainConfig, ranks: int = 1, timeout: float = 900) -> Path:
        canonical = fingerprint(cfg, extra={"runtime": to_dict(cfg.runtime), "ranks": ranks})
        key = f"{canonical[:16]}-{ranks}rank"
        run_dir, done = self.root / key, self.root / f"{key}.done"
        with (self.root / f"{key}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.is_file():
                shutil.rmtree(run_dir, ignore_errors=True)  # a run an earlier asker did not finish
                if ranks == 1:
                    # Without loader workers (the key leaves them out: they cannot change the run).
                    # Persistent ones forked here would inherit this lock and outlive train(),
                    # holding it: the next asker of the key in this process would wait forever.
                    train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=0)), DistEnv(), run_dir)
                else:
                    proc = torchrun(cfg, run_dir, self.root, nproc=ranks, timeout=timeout)
                    assert proc.returncode == 0, proc.stderr[-3000:]
                done.write_text(canonical)
        return run_dir
