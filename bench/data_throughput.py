"""Frame-pair loading throughput: our loader against the reference's, per decoder and system level.

Two comparisons, in one run, through the same DataLoader (`rsp.loading.make_loader`) with 1 and 2
workers, batch 64, R = 2 pairs per video; both loaders draw the same frames, crops and flips:

1. Per storage (same content): generated videos shaped like prepared Kinetics clips (256x340, 300
   frames = 10 s at 30 fps, h264) with a keyframe every 30 frames (the former preparation) and
   every frame (all-intra, `rsp.prepare rescale`'s default), and the same frames as a per-video
   JPEG frame store (bench/frame_store.py, a stand-in candidate; --jpeg-quality 0 skips it).
   - ours, per decoder (data.decoder=pyav | torchcodec | decord; `jpeg` for the store): one call
     for all 2R frames (sorted) by random access, which the labels step verified for these files;
     crops and resizes on uint8 tensors; uint8 batches (normalization runs on the training device);
   - the reference (RSP's util/kinetics.py): decord `VideoReader(path, num_threads=1)` per item,
     `vr[i].asnumpy()` per frame in pair order, then per frame a PIL image, PIL bicubic resized
     crop, flip, ToTensor and Normalize.
2. System level: the same generated "raw" clips (360x480, 10 s at 30 fps, keyframe every 250 as
   web video, with an AAC audio track) prepared two ways, each read by its own loader:
   - ours: `rsp.prepare rescale`'s ffmpeg command (short side 256, all-intra with fast decoding,
     the default, and a keyframe every 30; frames passed through with their timestamps, no audio)
     + the labels step, read by our loader with the default decoder;
   - the reference: a plain `ffmpeg -i raw -vf scale=-2:256 out.mp4` (x264 defaults: preset
     medium, keyframe every 250, audio kept), read by the reference loader.
   Preparation seconds per clip are reported too (not part of pairs/s: it runs once).

Per storage: bytes per video-hour and full Kinetics-400 at that rate (bench/feed_rate.py), and
CPU seconds per clip to make it. Per loader: the cores one GPU needs, the S/16 rate at 35% MFU of
an H100 (from --gpu-json, a bench/gpu_check.py result, else the FLOP count) over pairs per
CPU-core-second.

Reported per configuration: pairs/s per worker (pairs over the wall seconds workers spent making
items and batches, so prefetching cannot flatter it), the same over their CPU seconds (the worker's
and its read process's, rsp/read_process.py; steadier on a shared machine), pairs/s end to end
(iterator creation to the last batch), and the peak memory of each worker and of its read process:
resident (VmHWM, an upper bound that counts pages shared with the parent) and unique (USS, polled
every 0.25 s). The load average (`uptime`) is recorded before and after each measurement.

    python bench/data_throughput.py                      # table + JSON outside the checkout (printed)
    python bench/data_throughput.py --batches 1 --videos 8 --workers 1 --out bench/results
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
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

from bench.bench_io import RESULTS, write  # noqa: E402
from bench.feed_rate import K400_HOURS, bytes_per_video_hour, gpu_demand, k400_tib, real_content_bytes  # noqa: E402
from bench.frame_store import FrameStoreDataset, build_stores  # noqa: E402
from bench.loader_probe import measure  # noqa: E402
from rsp.config import DataConfig  # noqa: E402
from rsp.data import IMAGENET_MEAN, IMAGENET_STD, FramePairDataset, crop_box, sample_pair_indices  # noqa: E402
from rsp.decoders import DECODERS, VideoReadError  # noqa: E402
from rsp.kinetics import DEFAULT_KEYINT, ffmpeg_command, passthrough_option, rescale_video  # noqa: E402
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
    """Our preparations (all-intra, the default; keyframe every 30) and the reference's of every raw
    clip, timed (CPU seconds of ffmpeg, steady under load, and wall); labels files for the loaders."""
    roots = {name: work / f"system_{name}" for name in ("ours", "ours_keyint30", "reference")}
    for d in roots.values():
        shutil.rmtree(d, ignore_errors=True)
    clips = sorted(raw.glob("train/*/*.mp4"))
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    ours = partial(
        ffmpeg_command, ffmpeg, short_side=SHORT_SIDE, preset="veryfast", crf=23, passthrough=passthrough_option(ffmpeg)
    )
    commands = {
        "ours": partial(ours, keyint=DEFAULT_KEYINT),
        "ours_keyint30": partial(ours, keyint=30),
        "reference": reference_command,
    }
    cpu, wall = {}, {}
    for name, command in commands.items():
        cpu_start, wall_start = children_cpu_seconds(), time.perf_counter()
        for clip in clips:
            rescale_video((clip, roots[name] / "train" / clip.parent.name / clip.name), command, 600)
        cpu[name] = (children_cpu_seconds() - cpu_start) / len(clips)
        wall[name] = (time.perf_counter() - wall_start) / len(clips)
    for name in ("ours", "ours_keyint30"):
        write_labels_file(roots[name], roots[name] / "train", jobs=os.cpu_count() or 1)  # counts, seek modes
    ref_entries = [LabelEntry(e.path, e.class_idx, e.class_name) for e in read_labels(roots["ours"] / "labels.csv")]
    write_labels(roots["reference"] / "labels.csv", ref_entries)  # the reference's list: paths and classes only
    video_s = len(clips) * FRAMES / FPS
    return {
        **{name: (root, repeated_labels(root, root / "labels.csv", entries)) for name, root in roots.items()},
        "prepare_cpu_seconds_per_clip": cpu,
        "prepare_seconds_per_clip": wall,
        "bytes_per_video_hour": {k: bytes_per_video_hour(sorted(d.rglob("*.mp4")), video_s) for k, d in roots.items()},
    }


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def storages(work: Path, args, entries: int) -> list[dict]:
    """The per-storage data sets: generated clips per keyframe interval, and their JPEG frame store."""
    out = []
    for keyint in args.keyints:
        root, labels = prepared_like(work, keyint, args.videos, entries)
        files = sorted(root.rglob("*.mp4"))
        name = "all-intra" if keyint == 1 else f"keyint-{keyint}"
        out.append({"storage": name, "root": root, "labels": labels, "loaders": ["reference", *(f"ours/{d}" for d in DECODERS)],
                    "bytes_per_video_hour": bytes_per_video_hour(files, len(files) * FRAMES / FPS)})  # fmt: skip
    if args.jpeg_quality:
        source = out[0]
        store = work / f"jpeg{args.jpeg_quality}_{args.videos}"
        shutil.rmtree(store, ignore_errors=True)
        labels, seconds = build_stores(source["root"], source["labels"], store, args.jpeg_quality)
        files = sorted(store.rglob("*.jpgs"))
        out.append({"storage": f"jpeg-q{args.jpeg_quality}", "root": store, "labels": labels, "loaders": ["ours/jpeg"],
                    "bytes_per_video_hour": bytes_per_video_hour(files, len(files) * FRAMES / FPS),
                    "prepare_cpu_seconds_per_clip_from_decoded": seconds})  # fmt: skip
    return out


# --- main -----------------------------------------------------------------------------------------


def run(loader: str, root: Path, labels: str, workers: int, args, seed: int) -> dict:
    decoder = loader.removeprefix("ours/") if loader.startswith("ours/") else "decord"
    cls = {"reference": ReferenceFramePairDataset, "ours/jpeg": FrameStoreDataset}.get(loader, FramePairDataset)
    decoder = DEFAULT_DECODER if decoder == "jpeg" else decoder  # the store's dataset reads without a decoder
    cfg = DataConfig(
        root=str(root), labels=labels, batch_size=args.batch_size, num_workers=workers, pin_memory=False, decoder=decoder
    )
    return measure(cls, cfg, args.img_size, args.batches, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=24, help="distinct videos per data set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keyints", type=int, nargs="*", default=[DEFAULT_KEYINT, 30], help="1 all-intra; none: no storage rows")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG frame store candidate; 0 skips it")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--gpu-json", type=Path, default=RESULTS / "gpu_check_cuda.json", help="bench/gpu_check.py result")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results and clips (default: bench/bench_io.py's directory)")
    parser.add_argument("--no-system", action="store_true", help="skip the preparation-to-loader comparison")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("rsp.data").setLevel(logging.ERROR)  # the reference's list has no seek modes: said once here
    print(f"writing under {args.out}")
    work, entries = args.out / "data_cache", args.batch_size * args.batches
    demand = gpu_demand(args.gpu_json)
    print(f"GPU demand: {demand['pairs_per_s']:.0f} pairs/s ({demand['assumption']})")
    rows = []

    def record(comparison: str, storage: str, loader: str, root: Path, labels: str, workers: int, seed: int) -> None:
        result = {"comparison": comparison, "storage": storage, "loader": loader, "workers": workers}
        result.update(run(loader, root, labels, workers, args, seed))
        result["cores_per_gpu"] = demand["pairs_per_s"] / result["pairs_per_cpu_s_per_worker"]
        rows.append(result)
        rss, uss = max(result["worker_peak_rss_mib"], default=0), max(result["worker_peak_uss_mib"], default=0)
        read_rss, read_uss = (max(result[f"read_process_peak_{m}_mib"], default=0) for m in ("rss", "uss"))
        print(
            f"{comparison:8s} {storage:10s} {loader:16s} workers {workers}  "
            f"{result['pairs_per_s_per_worker']:6.1f} pairs/s/worker "
            f"(CPU {result['pairs_per_cpu_s_per_worker']:6.1f}, {result['cores_per_gpu']:5.1f} cores/GPU)  "
            f"{result['pairs_per_s_end_to_end']:6.1f} end to end  peak RSS {rss:4.0f} / unique {uss:4.0f} MiB "
            f"(read process {read_rss:4.0f} / {read_uss:4.0f})  "
            f"load {result['load_before'][0]:.1f}->{result['load_after'][0]:.1f}",
            flush=True,
        )

    real = real_content_bytes(work, SHORT_SIDE, args.jpeg_quality)
    for name, size in real.get("bytes_per_video_hour", {}).items():
        ratio = size / real["bytes_per_video_hour"]["keyint-30"]
        print(f"real videos, {name}: {size / 2**30:.3f} GiB per video-hour ({ratio:.2f}x keyframe-30), "
              f"{k400_tib(size):.3f} TiB for Kinetics-400")  # fmt: skip
    sets = storages(work, args, entries)
    for storage in sets:
        print(f"{storage['storage']}: {storage['bytes_per_video_hour'] / 2**30:.2f} GiB per video-hour, "
              f"{k400_tib(storage['bytes_per_video_hour']):.2f} TiB for Kinetics-400 ({K400_HOURS:.0f} h)")  # fmt: skip
        for workers in args.workers:
            for loader in storage["loaders"]:
                record("storage", storage["storage"], loader, storage["root"], storage["labels"], workers, seed=7)
    system = {} if args.no_system else prepare_both(raw_clips(work, args.videos), work, entries)
    if system:
        print(f"preparation CPU seconds per clip: {system['prepare_cpu_seconds_per_clip']}; "
              f"GiB per video-hour: { {k: round(v / 2**30, 3) for k, v in system['bytes_per_video_hour'].items()} }")  # fmt: skip
        for workers in args.workers:
            record("system", "reference", "reference", *system["reference"], workers, seed=1)
            record("system", "all-intra", f"ours/{DEFAULT_DECODER}", *system["ours"], workers, seed=1)
            record("system", "keyint-30", f"ours/{DEFAULT_DECODER}", *system["ours_keyint30"], workers, seed=1)
    print("\n" + summarize(rows))
    config = vars(args) | {
        "video": f"{LONG_SIDE}x{SHORT_SIDE}, {FRAMES} frames, {FPS} fps, h264",
        "raw": f"{RAW_WIDTH}x{RAW_HEIGHT}",
    }
    extra = {
        "config": config,
        "gpu_demand": demand,
        "storages": [{k: v for k, v in st.items() if k not in ("root", "loaders")} for st in sets],
        "real_content": real,
        "preparation": {k: v for k, v in system.items() if k.startswith(("prepare", "bytes"))},
    }
    write("data_throughput", rows, extra, out=args.out / "data_throughput.json")


def summarize(rows: list[dict]) -> str:
    """Markdown table; each row against the reference on the same content and worker count (the
    keyframe-30 clips' reference for the storage comparison's rows)."""
    lines = [
        "| comparison | storage | workers | loader | pairs/s/worker (CPU) | vs reference (CPU) | cores/GPU "
        "| end to end | peak RSS/USS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        refs = [
            r
            for r in rows
            if r["loader"] == "reference" and r["comparison"] == row["comparison"] and r["workers"] == row["workers"]
        ]
        ref = next((r for r in refs if r["storage"] == row["storage"]), None) or next(
            (r for r in refs if r["storage"] == "keyint-30"), refs[0] if refs else row
        )
        speedup = row["pairs_per_s_per_worker"] / ref["pairs_per_s_per_worker"]
        cpu_speedup = row["pairs_per_cpu_s_per_worker"] / ref["pairs_per_cpu_s_per_worker"]
        rates = f"{row['pairs_per_s_per_worker']:.1f} ({row['pairs_per_cpu_s_per_worker']:.1f})"
        peaks = f"{max(row['worker_peak_rss_mib'], default=0):.0f} / {max(row['worker_peak_uss_mib'], default=0):.0f}"
        lines.append(
            f"| {row['comparison']} | {row['storage']} | {row['workers']} | {row['loader']} | {rates} "
            f"| {speedup:.2f}x ({cpu_speedup:.2f}x) | {row['cores_per_gpu']:.1f} "
            f"| {row['pairs_per_s_end_to_end']:.1f} | {peaks} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
