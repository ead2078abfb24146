"""Frame-pair loading throughput: our loader against the reference's, per decoder and system level.

Two comparisons, in one run, through the same DataLoader (`rsp.data.make_loader`) with 1 and 2
workers, batch 64, R = 2 pairs per video; both loaders draw the same frames, crops and flips:

1. Per file (same files): generated videos shaped like prepared Kinetics clips (256x340, 300
   frames = 10 s at 30 fps, h264), with a keyframe every 30 and every 250 frames.
   - ours, per decoder (data.decoder=torchcodec | decord): one call for all 2R frames (sorted) by
     random access, which the labels step verified for these files; crops and resizes on uint8
     tensors;
   - the reference (RSP's util/kinetics.py): decord `VideoReader(path, num_threads=1)` per item,
     `vr[i].asnumpy()` per frame in pair order, then per frame a PIL image, PIL bicubic resized
     crop, flip, ToTensor and Normalize.
2. System level: the same generated "raw" clips (360x480, 10 s at 30 fps, keyframe every 250 as
   web video, with an AAC audio track) prepared two ways, each read by its own loader:
   - ours: `rsp.prepare rescale`'s ffmpeg command (short side 256, keyframe every 30, frames passed
     through with their timestamps, no audio) + the labels step, read by our loader with the
     default decoder;
   - the reference: a plain `ffmpeg -i raw -vf scale=-2:256 out.mp4` (x264 defaults: preset
     medium, keyframe every 250, audio kept), read by the reference loader.
   Preparation seconds per clip are reported too (not part of pairs/s: it runs once).

Reported per configuration: pairs/s per worker (pairs over the wall seconds workers spent making
items and batches, so prefetching cannot flatter it), the same over their CPU seconds (steadier on a
shared machine), pairs/s end to end (iterator creation to the last batch), and each worker's peak
memory: resident (VmHWM, an upper bound that counts pages shared with the parent) and unique (USS,
polled every 0.25 s). The load average (`uptime`) is recorded before and after each measurement.

    python bench/data_throughput.py                      # table + bench/results/data_throughput.json
    python bench/data_throughput.py --batches 1 --videos 8 --workers 1
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import decord  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms import functional as F1  # noqa: E402

from bench.bench_io import write  # noqa: E402
from bench.loader_probe import measure  # noqa: E402
from rsp.config import DataConfig  # noqa: E402
from rsp.data import IMAGENET_MEAN, IMAGENET_STD, FramePairDataset, crop_box, sample_pair_indices  # noqa: E402
from rsp.decoders import DECODERS, VideoReadError  # noqa: E402
from rsp.kinetics import ffmpeg_command, passthrough_option, rescale_video  # noqa: E402
from rsp.prepare import write_labels_file  # noqa: E402
from rsp.synthetic import ensure_synthetic_dataset, generate_dataset  # noqa: E402
from rsp.video import LabelEntry, read_labels, write_labels  # noqa: E402

SHORT_SIDE, LONG_SIDE, FRAMES, FPS = 256, 340, 300, 30
RAW_HEIGHT, RAW_WIDTH = 360, 480
DEFAULT_DECODER = DataConfig().decoder


class ReferenceFramePairDataset(FramePairDataset):
    """The reference's per-item work: a decord reader per item, `vr[i]` per frame, PIL per frame."""

    def _read(self, video: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        path, cfg = self.paths[video], self.cfg
        try:
            vr = decord.VideoReader(str(path), num_threads=1)
            indices = sample_pair_indices(rng, len(vr), cfg.repeated_sampling, cfg.min_gap, cfg.max_gap, path)
            frames = [vr[int(i)].asnumpy() for i in indices.reshape(-1)]  # src0, tgt0, src1, tgt1, ...
        except (RuntimeError, decord.DECORDError) as err:
            raise VideoReadError(path, str(err)) from err
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


# --- data -----------------------------------------------------------------------------------------


def repeated_labels(root: Path, labels: Path, entries: int) -> str:
    """A labels file listing the videos of `labels` repeatedly, `entries` rows, so one epoch holds
    every timed batch and both loaders read the same files equally often."""
    videos = read_labels(labels)
    name = f"labels_{entries}.csv"
    write_labels(root / name, [videos[i % len(videos)] for i in range(entries)])
    return name


def prepared_like(work: Path, keyint: int, count: int, entries: int) -> tuple[Path, str]:
    root = work / f"k{keyint}_{count}"
    jobs = os.cpu_count() or 1
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
        jobs=jobs,
    )
    return root, repeated_labels(root, labels, entries)


def raw_clips(work: Path, count: int) -> Path:
    """Web-like clips: 360x480, keyframe every 250, with an AAC track, in class folders."""
    root = work / f"raw_{count}"
    if not (root / "done").exists():
        video_only = work / f"raw_video_{count}"
        generate_dataset(video_only, count, num_classes=4, height=RAW_HEIGHT, width=RAW_WIDTH, num_frames=FRAMES, keyint=250)
        for entry in read_labels(video_only / "labels.csv"):
            out = root / entry.path
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-i", str(video_only / entry.path), "-f", "lavfi", "-i",
                 "sine=frequency=440:sample_rate=44100", "-shortest", "-c:v", "copy", "-c:a", "aac", str(out)],
                check=True,
            )  # fmt: skip
        (root / "done").touch()
    return root


def reference_command(src: Path, dst: Path) -> list[str]:
    """The reference's preparation: scale the short side to 256 with x264's defaults, audio kept."""
    return ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-vf", "scale=-2:256", "-threads", "1", str(dst)]


def prepare_both(raw: Path, work: Path, entries: int) -> dict:
    """Our and the reference's preparation of every raw clip, timed; labels files for both loaders."""
    ours, ref = work / "system_ours", work / "system_reference"
    for d in (ours, ref):
        shutil.rmtree(d, ignore_errors=True)
    clips = sorted(raw.glob("train/*/*.mp4"))
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    our_command = partial(
        ffmpeg_command,
        ffmpeg,
        short_side=SHORT_SIDE,
        keyint=30,
        preset="veryfast",
        crf=23,
        passthrough=passthrough_option(ffmpeg),
    )
    seconds = {}
    for name, root, command in (("ours", ours, our_command), ("reference", ref, reference_command)):
        start = time.perf_counter()
        for clip in clips:
            rescale_video((clip, root / "train" / clip.parent.name / clip.name), command, 600)
        seconds[name] = (time.perf_counter() - start) / len(clips)
    write_labels_file(ours, ours / "train", jobs=os.cpu_count() or 1)  # our labels step: counts, seek modes
    ref_entries = [LabelEntry(e.path, e.class_idx, e.class_name) for e in read_labels(ours / "labels.csv")]
    write_labels(ref / "labels.csv", ref_entries)  # the reference's list: paths and classes (its loader reads no more)
    return {
        "ours": (ours, repeated_labels(ours, ours / "labels.csv", entries)),
        "reference": (ref, repeated_labels(ref, ref / "labels.csv", entries)),
        "prepare_seconds_per_clip": seconds,
        "prepared_mib": {
            k: sum(p.stat().st_size for p in d.rglob("*.mp4")) / 2**20 for k, d in (("ours", ours), ("reference", ref))
        },
    }


# --- main -----------------------------------------------------------------------------------------


def run(loader: str, root: Path, labels: str, workers: int, args, seed: int) -> dict:
    decoder = loader.removeprefix("ours/") if loader.startswith("ours/") else "decord"
    cfg = DataConfig(
        root=str(root), labels=labels, batch_size=args.batch_size, num_workers=workers, pin_memory=False, decoder=decoder
    )
    cls = ReferenceFramePairDataset if loader == "reference" else FramePairDataset
    return measure(cls, cfg, args.img_size, args.batches, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=24, help="distinct videos per data set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keyints", type=int, nargs="+", default=[30, 250])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("rsp.data").setLevel(logging.ERROR)  # the reference's list has no seek modes: said once here
    out = Path(args.out)
    work, entries = out / "data_cache", args.batch_size * args.batches
    rows = []

    def record(comparison: str, loader: str, root: Path, labels: str, workers: int, seed: int, **extra) -> None:
        result = {
            "comparison": comparison,
            "loader": loader,
            "workers": workers,
            **extra,
            **run(loader, root, labels, workers, args, seed),
        }
        rows.append(result)
        rss, uss = max(result["worker_peak_rss_mib"], default=0), max(result["worker_peak_uss_mib"], default=0)
        print(
            f"{comparison:9s} {loader:16s} workers {workers}  {result['pairs_per_s_per_worker']:6.1f} pairs/s/worker "
            f"(CPU {result['pairs_per_cpu_s_per_worker']:6.1f})  {result['pairs_per_s_end_to_end']:6.1f} end to end  "
            f"peak RSS {rss:4.0f} / unique {uss:4.0f} MiB  load {result['load_before'][0]:.1f}->{result['load_after'][0]:.1f}",
            flush=True,
        )

    for keyint in args.keyints:
        root, labels = prepared_like(work, keyint, args.videos, entries)
        for workers in args.workers:
            for loader in ("reference", *(f"ours/{d}" for d in DECODERS)):
                record("per_file", loader, root, labels, workers, seed=keyint, keyint=keyint)
    system = prepare_both(raw_clips(work, args.videos), work, entries)
    print(f"preparation seconds per clip: {system['prepare_seconds_per_clip']}; MiB: {system['prepared_mib']}")
    for workers in args.workers:
        record("system", "reference", *system["reference"], workers, seed=1)
        record("system", f"ours/{DEFAULT_DECODER}", *system["ours"], workers, seed=1)
    print("\n" + summarize(rows))
    config = vars(args) | {
        "video": f"{LONG_SIDE}x{SHORT_SIDE}, {FRAMES} frames, {FPS} fps, h264",
        "raw": f"{RAW_WIDTH}x{RAW_HEIGHT}",
    }
    extra = {"config": config, "preparation": {k: system[k] for k in ("prepare_seconds_per_clip", "prepared_mib")}}
    write("data_throughput", rows, extra, out=out / "data_throughput.json")


def summarize(rows: list[dict]) -> str:
    lines = [
        "| comparison | keyint | workers | loader | pairs/s/worker (CPU) | vs reference (CPU) | end to end | peak RSS/USS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref = next(
            r
            for r in rows
            if r["loader"] == "reference" and all(r.get(k) == row.get(k) for k in ("comparison", "keyint", "workers"))
        )
        speedup = row["pairs_per_s_per_worker"] / ref["pairs_per_s_per_worker"]
        cpu_speedup = row["pairs_per_cpu_s_per_worker"] / ref["pairs_per_cpu_s_per_worker"]
        rates = f"{row['pairs_per_s_per_worker']:.1f} ({row['pairs_per_cpu_s_per_worker']:.1f})"
        lines.append(
            f"| {row['comparison']} | {row.get('keyint', '30 vs 250')} | {row['workers']} | {row['loader']} "
            f"| {rates} | {speedup:.2f}x ({cpu_speedup:.2f}x) "
            f"| {row['pairs_per_s_end_to_end']:.1f} | {max(row['worker_peak_rss_mib'], default=0):.0f} / "
            f"{max(row['worker_peak_uss_mib'], default=0):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
