"""Frame-pair loading throughput: FramePairDataset against the reference's naive loading.

Both loaders run in the same process on the same generated videos (short side 256: 256x340,
300 frames = 10 s at 30 fps, like prepared Kinetics clips), once with a keyframe every 30
frames and once every 250, through the same DataLoader (`rsp.data.make_loader`) with 1 and 2
workers. They draw the same frames, crops and flips (the naive dataset reuses the item
generator); only the work differs:
- ours: one decord `get_batch` for all 2R frames (sorted), crops and resizes on uint8 tensors;
- naive (the reference): one decord read per frame in pair order, then per frame a PIL image,
  PIL bicubic resized crop, flip, ToTensor and Normalize.
Reported: pairs/s per worker (pairs over the seconds workers spent making items and batches, so
prefetching cannot flatter it), the speed-up, pairs/s end to end (iterator creation to the last
batch, worker start-up included: the scaling with workers), and the peak resident memory (VmHWM)
of each worker process (VmHWM, an upper bound that includes pages shared with the parent) and the
largest unique memory (USS, polled every 0.25 s).

    python bench/data_throughput.py                      # table + bench/results/data_throughput.json
    python bench/data_throughput.py --batches 2 --videos 16
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import functional as F1  # noqa: E402

from bench.bench_io import write  # noqa: E402
from rsp.config import DataConfig  # noqa: E402
from rsp.data import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochSampler,
    FramePairDataset,
    collate_pairs,
    crop_box,
    make_loader,
    sample_pair_indices,
)
from rsp.synthetic import ensure_synthetic_dataset  # noqa: E402
from rsp.video import VideoFile, read_labels, write_labels  # noqa: E402

SHORT_SIDE, LONG_SIDE, FRAMES, FPS = 256, 340, 300, 30


class NaiveFramePairDataset(FramePairDataset):
    """The reference's per-item work: a decord read per frame, PIL transforms per frame."""

    def _read(self, video: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        reader = VideoFile(self.paths[video])
        cfg = self.cfg
        indices = sample_pair_indices(rng, reader.num_frames, cfg.repeated_sampling, cfg.min_gap, cfg.max_gap)
        frames = [reader.read([i])[0] for i in indices.reshape(-1)]  # pair order: src0, tgt0, src1, ...
        return indices, np.stack(frames).reshape(cfg.repeated_sampling, 2, *frames[0].shape)

    def _transform(self, frames: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, size = self.cfg, self.img_size
        src, tgt = [], []
        for pair in frames:
            top, left, h, w = crop_box(rng, pair.shape[1], pair.shape[2], (cfg.crop_min_scale, cfg.crop_max_scale))
            flip = rng.random() < cfg.hflip_prob
            out = []
            for frame in pair:
                image = F1.resized_crop(Image.fromarray(frame), top, left, h, w, [size, size], InterpolationMode.BICUBIC)
                image = F1.hflip(image) if flip else image
                out.append(F1.normalize(F1.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD))
            src.append(out[0])
            tgt.append(out[1])
        return torch.stack(src), torch.stack(tgt)


def worker_peak_rss_mib() -> list[float]:
    """Peak resident memory (VmHWM) of each child process, the loader workers. An upper bound:
    a forked worker's RSS also counts the parent's pages (torch, decord) it shares."""
    peaks = []
    for child in psutil.Process().children():
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        peaks.append(kib / 1024)
    return peaks


class UniqueMemoryPoller:
    """Largest unique set size (memory only that worker holds) seen per worker, polled."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s, self.peaks, self._stop = interval_s, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UniqueMemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for child in psutil.Process().children():
                try:
                    uss = child.memory_full_info().uss / 2**20
                except psutil.Error:
                    continue
                self.peaks[child.pid] = max(self.peaks.get(child.pid, 0.0), uss)


class TimedItems:
    """Mixin: each item carries the seconds its worker spent making it."""

    def __getitem__(self, key: tuple[int, int]) -> dict:
        start = time.perf_counter()
        item = super().__getitem__(key)
        item["seconds"] = time.perf_counter() - start
        return item


class TimedOurs(TimedItems, FramePairDataset):
    pass


class TimedNaive(TimedItems, NaiveFramePairDataset):
    pass


def timed_collate(items: list[dict]) -> dict:
    start = time.perf_counter()
    batch = collate_pairs(items)
    batch["worker_seconds"] = sum(it["seconds"] for it in items) + time.perf_counter() - start
    return batch


def measure(dataset: FramePairDataset, cfg: DataConfig, batches: int, seed: int) -> dict:
    """Per-worker rate from the seconds workers spent on items and collation (independent of
    prefetching), and the end-to-end rate from creating the iterator to the last batch."""
    sampler = EpochSampler(len(dataset), cfg.batch_size, rank=0, world_size=1, seed=seed)
    loader = make_loader(dataset, sampler, cfg, seed)
    loader.collate_fn = timed_collate  # same collation plus the timing
    with UniqueMemoryPoller() as poller:
        start = time.perf_counter()
        iterator = iter(loader)
        worker_seconds = sum(next(iterator)["worker_seconds"] for _ in range(batches))
        wall = time.perf_counter() - start
        peaks = worker_peak_rss_mib()
    del iterator, loader
    pairs = batches * cfg.batch_size * cfg.repeated_sampling
    return {
        "pairs_per_s_per_worker": pairs / worker_seconds,
        "pairs_per_s_end_to_end": pairs / wall,
        "worker_seconds": worker_seconds,
        "wall_seconds": wall,
        "worker_peak_rss_mib": peaks,
        "worker_peak_uss_mib": sorted(poller.peaks.values()),
    }


def ensure_videos(work: Path, keyint: int, count: int, entries: int) -> tuple[Path, str]:
    """Generated videos and a labels file listing them repeatedly, `entries` rows in all, so that
    one epoch holds every timed batch (both loaders read the same files equally often)."""
    root = work / f"k{keyint}_{count}"
    labels = ensure_synthetic_dataset(
        root,
        count,
        num_classes=4,
        height=SHORT_SIDE,
        width=LONG_SIDE,
        num_frames=FRAMES,
        fps=FPS,
        keyint=keyint,
        seed=0,
        jobs=os.cpu_count() or 1,
    )
    videos = read_labels(labels)
    name = f"labels_{entries}.csv"
    write_labels(root / name, [videos[i % len(videos)] for i in range(entries)])
    return root, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=24, help="distinct videos per keyframe interval")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keyints", type=int, nargs="+", default=[30, 250])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # "generating N synthetic videos under ..."
    out = Path(args.out)
    rows = []
    for keyint in args.keyints:
        entries = args.batch_size * args.batches
        root, labels = ensure_videos(out / "data_cache", keyint, args.videos, entries)
        for workers in args.workers:
            cfg = DataConfig(root=str(root), labels=labels, batch_size=args.batch_size, num_workers=workers, pin_memory=False)
            for name, cls in (("naive", TimedNaive), ("ours", TimedOurs)):
                result = measure(cls(cfg, args.img_size, seed=0), cfg, args.batches, seed=keyint)
                rows.append({"keyint": keyint, "workers": workers, "loader": name, **result})
                print(
                    f"keyint {keyint:3d}  workers {workers}  {name:5s}  {result['pairs_per_s_per_worker']:6.1f} pairs/s/worker  "
                    f"{result['pairs_per_s_end_to_end']:6.1f} pairs/s end to end  "
                    f"peak per worker: RSS {max(result['worker_peak_rss_mib'], default=0):4.0f} MiB, "
                    f"unique {max(result['worker_peak_uss_mib'], default=0):4.0f} MiB",
                    flush=True,
                )
    table = summarize(rows)
    print("\n" + table)
    config = vars(args) | {"video": f"{LONG_SIDE}x{SHORT_SIDE}, {FRAMES} frames, {FPS} fps, h264"}
    write("data_throughput", rows, {"config": config}, out=out / "data_throughput.json")


def summarize(rows: list[dict]) -> str:
    lines = [
        "| keyint | workers | naive pairs/s/worker | ours pairs/s/worker | speed-up | naive / ours pairs/s end to end "
        "| ours peak RSS / unique MiB per worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for keyint in sorted({r["keyint"] for r in rows}):
        for workers in sorted({r["workers"] for r in rows}):
            pick = {r["loader"]: r for r in rows if r["keyint"] == keyint and r["workers"] == workers}
            naive, ours = pick["naive"], pick["ours"]
            speedup = ours["pairs_per_s_per_worker"] / naive["pairs_per_s_per_worker"]
            rss = max(ours["worker_peak_rss_mib"], default=0.0)
            uss = max(ours["worker_peak_uss_mib"], default=0.0)
            lines.append(
                f"| {keyint} | {workers} | {naive['pairs_per_s_per_worker']:.1f} | {ours['pairs_per_s_per_worker']:.1f} "
                f"| {speedup:.2f}x | {naive['pairs_per_s_end_to_end']:.1f} / {ours['pairs_per_s_end_to_end']:.1f} "
                f"| {rss:.0f} / {uss:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
