"""Batches of frame pairs: the DataLoader the trainer iterates, and the run's broken-video budget.

`make_loader` wraps a `FramePairDataset` and its `EpochSampler` (rsp.data) in a DataLoader whose
batches depend only on the sampler position (exact resume). Workers stack their batches straight
into shared memory, run one intra-op thread each, and start with the scheduler's stop signals held
(rsp.lifecycle). `BrokenVideoBudget` stops a run whose share of unreadable videos passes
data.max_broken_fraction (docs/data.md).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, get_worker_info

from rsp.config import DataConfig
from rsp.data import EpochSampler, FramePairDataset
from rsp.lifecycle import blocked_stop_signals, shield_loader_worker
from rsp.video import DataError

log = logging.getLogger(__name__)


def collate_pairs(items: list[dict]) -> dict:
    """{"src", "tgt": (B, R, 3, S, S), "broken": int, "broken_paths": list[str]}."""
    return {
        "src": _stack([it["src"] for it in items]),
        "tgt": _stack([it["tgt"] for it in items]),
        "broken": sum(it["broken"] for it in items),
        "broken_paths": [p for it in items for p in it["broken_paths"]],
    }


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    out = None
    if get_worker_info() is not None:
        # in a worker, stack straight into shared memory: the batch then reaches the main process
        # without another copy, which keeps a worker's peak at items + one batch (~2 x 154 MB at
        # batch 64, R 2, 224 px)
        shape = (len(tensors), *tensors[0].shape)
        out = torch.empty(shape, dtype=tensors[0].dtype).share_memory_()
    return torch.stack(tensors, out=out)


def _init_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # N workers x all-core intra-op pools would oversubscribe the CPU
    shield_loader_worker()  # the scheduler's stop signals reach every process; only the main process acts on them


class ShieldedLoader(DataLoader):
    """A DataLoader that starts its workers with the stop signals held, so that one arriving
    between a worker's birth and its shield (`_init_worker`) waits instead of killing it."""

    def __iter__(self):
        with blocked_stop_signals():
            return super().__iter__()


def make_loader(dataset: FramePairDataset, sampler: EpochSampler, cfg: DataConfig, seed: int) -> DataLoader:
    """A DataLoader whose batches depend only on the sampler position: it draws its base seed from
    its own generator, so starting an iterator never touches the global torch RNG."""
    on_gpu = cfg.decode_device != "cpu"  # decoded and cropped on the GPU, in this process: no workers, no pinning
    if on_gpu and cfg.num_workers:
        log.info(
            "data.decode_device=%s: frames are decoded in the training process; data.num_workers is not used", cfg.decode_device
        )
    workers = 0 if on_gpu else cfg.num_workers
    extra = dict(prefetch_factor=cfg.prefetch_factor, persistent_workers=True, worker_init_fn=_init_worker) if workers else {}
    return ShieldedLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_pairs,
        num_workers=workers,
        pin_memory=cfg.pin_memory and torch.cuda.is_available() and not on_gpu,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


class BrokenVideoBudget:
    """Run-level accounting. The trainer sums `broken` and items over all ranks (all-reduce) and
    calls check(); it raises DataError when broken / seen > max_fraction, once at least `min_reads`
    items were seen (one early failure must not stop a run), naming example paths."""

    def __init__(self, max_fraction: float, min_reads: int = 100, max_examples: int = 10):
        if not 0 <= max_fraction < 1 or min_reads < 1:
            raise ValueError(f"max_fraction ({max_fraction}) must lie in [0, 1) and min_reads ({min_reads}) be >= 1")
        self.max_fraction, self.min_reads, self.max_examples = max_fraction, min_reads, max_examples
        self.examples: list[str] = []  # rank-local

    def record(self, broken_paths: list[str]) -> None:
        for path in broken_paths:
            if path not in self.examples and len(self.examples) < self.max_examples:
                self.examples.append(path)

    def check(self, total_broken: int, total_seen: int) -> None:
        if total_seen < self.min_reads or total_broken <= self.max_fraction * total_seen:
            return
        examples = ", ".join(self.examples) or "none on this rank"
        raise DataError(
            f"{total_broken} of {total_seen} video reads failed ({total_broken / total_seen:.2%}), more than "
            f"data.max_broken_fraction ({self.max_fraction:.2%}); e.g. {examples}. Re-prepare the data "
            "(python -m rsp.prepare labels drops unreadable videos) or raise data.max_broken_fraction"
        )
