"""Measuring a FramePairDataset through the real DataLoader: per-worker wall and CPU seconds per
item and batch, end-to-end time, and each worker's peak memory (used by data_throughput.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil

from rsp.config import DataConfig
from rsp.data import EpochSampler, FramePairDataset
from rsp.loading import collate_pairs, make_loader


class TimedItems:
    """Mixin: each item carries the wall and CPU seconds its worker process spent making it (CPU
    time counts every thread of the worker, decord decodes on a thread of its own, and the worker's
    read process)."""

    def __getitem__(self, key: tuple[int, int]) -> dict:
        wall, cpu = time.perf_counter(), self._cpu_seconds()
        item = super().__getitem__(key)
        item["seconds"], item["cpu_seconds"] = time.perf_counter() - wall, self._cpu_seconds() - cpu
        return item

    def _cpu_seconds(self) -> float:
        """This process's CPU time and its read process's (rsp/read_process.py), which decodes."""
        read_process = getattr(self, "read_process_cpu_seconds", None)  # the reference's loader has none
        return time.process_time() + (read_process() if read_process else 0.0)


_TIMED: dict[type, type] = {}


def timed(cls: type) -> type:
    if cls not in _TIMED:
        _TIMED[cls] = type(f"Timed{cls.__name__}", (TimedItems, cls), {"__module__": __name__})
    return _TIMED[cls]


def timed_collate(items: list[dict]) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    batch = collate_pairs(items)
    batch["worker_seconds"] = sum(it["seconds"] for it in items) + time.perf_counter() - wall
    batch["worker_cpu_seconds"] = sum(it["cpu_seconds"] for it in items) + time.process_time() - cpu
    return batch


def peak_rss_mib() -> tuple[list[float], list[float]]:
    """Peak resident memory (VmHWM) of each loader worker (a child process) and of each read process
    (a worker's child, rsp/read_process.py). An upper bound: a forked process's RSS also counts the
    pages (torch, decoders) it shares with its parent."""
    me, workers, readers = os.getpid(), [], []
    for child in psutil.Process().children(recursive=True):
        try:
            status, parent = Path(f"/proc/{child.pid}/status").read_text(), child.ppid()
        except (OSError, psutil.Error):
            continue
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        (workers if parent == me else readers).append(kib / 1024)
    return workers, readers


class UniqueMemoryPoller:
    """Largest unique set size (memory only that worker holds) seen per worker, polled."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s, self.peaks, self._stop = interval_s, {}, threading.Event()
        self.read_process_peaks: dict[int, float] = {}  # the workers' read processes (rsp/read_process.py)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UniqueMemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval_s):
            for child in psutil.Process().children(recursive=True):
                try:
                    uss, is_worker = child.memory_full_info().uss / 2**20, child.ppid() == me
                except psutil.Error:
                    continue
                peaks = self.peaks if is_worker else self.read_process_peaks
                peaks[child.pid] = max(peaks.get(child.pid, 0.0), uss)


def measure(cls: type[FramePairDataset], cfg: DataConfig, img_size: int, batches: int, seed: int) -> dict:
    """Per-worker rates from the seconds workers spent on items and collation (independent of
    prefetching), and the end-to-end rate from creating the iterator to the last batch."""
    dataset = timed(cls)(cfg, img_size, seed=0)
    sampler = EpochSampler(len(dataset), cfg.batch_size, rank=0, world_size=1, seed=seed)
    loader = make_loader(dataset, sampler, cfg, seed)
    loader.collate_fn = timed_collate  # same collation plus the timing
    load_before = os.getloadavg()
    with UniqueMemoryPoller() as poller:
        start = time.perf_counter()
        iterator = iter(loader)
        timed_batches = [{k: v for k, v in next(iterator).items() if k not in ("src", "tgt")} for _ in range(batches)]
        wall = time.perf_counter() - start
        peaks, read_peaks = peak_rss_mib()
    del iterator, loader
    pairs = batches * cfg.batch_size * cfg.repeated_sampling
    worker_seconds = sum(b["worker_seconds"] for b in timed_batches)
    worker_cpu_seconds = sum(b["worker_cpu_seconds"] for b in timed_batches)
    return {
        "pairs_per_s_per_worker": pairs / worker_seconds,
        "pairs_per_cpu_s_per_worker": pairs / worker_cpu_seconds,
        "pairs_per_s_end_to_end": pairs / wall,
        "worker_seconds": worker_seconds,
        "worker_cpu_seconds": worker_cpu_seconds,
        "wall_seconds": wall,
        "broken_reads": sum(b["broken"] for b in timed_batches),
        "worker_peak_rss_mib": peaks,
        "worker_peak_uss_mib": sorted(poller.peaks.values()),
        "read_process_peak_rss_mib": read_peaks,
        "read_process_peak_uss_mib": sorted(poller.read_process_peaks.values()),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
