"""Evaluation speed: the fast engine and metric against the reference-style code of testkit/reference_eval.py.

    python bench/eval_speed.py                 # the issue's settings (ViT-S/16, 480p, RSP preset)
    python bench/eval_speed.py --quick         # small sizes, a smoke run of the script itself

Sections (all in one run, same process, same inputs):
  propagation  seconds per frame with the full context (1 + 30 frames) vs the affinity product
               alone (the roofline) and vs the reference's label_propagation
  mask         the neighbourhood mask: vectorized vs the reference's four nested loops
  end-to-end   features + propagation + PNGs of one generated 480p sequence: eval.davis vs the
               reference loop, outputs compared pixel for pixel
  j&f          a generated 30-sequence set with perturbed predictions: eval.jf (one process per
               core) vs the official tool's approach (per object, per frame, one process), values
               compared for equality
  memory       peak resident memory of the end-to-end run (CPU) or peak CUDA memory at patch 8
Prints a table and writes eval_speed.json to the results directory (bench/bench_io.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: bench/ and the packages import from the repository

from eval import jf  # noqa: E402
from eval.config import PRESETS  # noqa: E402
from eval.davis import read_davis, segment_sequence, short_side_size, write_davis  # noqa: E402
from eval.features import extract_features, iter_frames  # noqa: E402
from eval.indexmaps import davis_palette, one_hot_grid, read_index_png, write_index_png  # noqa: E402
from eval.propagation import fp32_matmul, neighbourhood_mask, propagate  # noqa: E402
from rsp.encoder import ViTEncoder  # noqa: E402
from testkit.reference_eval import (  # noqa: E402
    loop_neighbourhood_mask,
    reference_davis_scores,
    reference_label_propagation,
    reference_segment_sequence,
)


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.base = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


class Clock:
    """Wall time and CPU time (this process and its finished children) of a block. The CPU time
    is the fairer comparison on a machine shared with other jobs."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=5):
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def propagation_section(features, first, grid, device, reference_frames):
    """Per-frame seconds with the full context: ours, the product alone (timed right after each
    frame, so both see the same machine load), and the reference's label_propagation."""
    params = PRESETS["rsp"]
    hw, D = features.shape[1:]
    full = 1 + params.n_last_frames
    ours, product = [], []
    out = features.new_empty(hw, full * hw)  # the product writes into memory it already owns
    frames = propagate(features, first, grid, params)
    for t in range(1, len(features)):
        start = time.perf_counter()
        next(frames)
        sync(device)
        if t >= full:
            ours.append(time.perf_counter() - start)
            context = torch.cat([features[:1], features[t - params.n_last_frames : t]]).reshape(-1, D)
            with fp32_matmul():
                start = time.perf_counter()
                torch.mm(features[t], context.T, out=out)
                sync(device)
            product.append(time.perf_counter() - start)
    if not ours:
        raise ValueError(f"need more than {full} frames for a full context; raise --frames")
    mask = loop_neighbourhood_mask(*grid, params.radius).to(device)
    segs = torch.rand(full, first.shape[1], *grid, device=device)
    feats = features[:full].transpose(1, 2).contiguous()
    reference = []
    for t in range(reference_frames):
        start = time.perf_counter()
        reference_label_propagation(features[full + t], feats, segs, mask, params.topk, params.temperature)
        sync(device)
        reference.append(time.perf_counter() - start)
    ratio = statistics.median(o / p for o, p in zip(ours, product, strict=True))
    return {
        "grid": list(grid),
        "context_frames": full,
        "frames_timed": len(ours),
        "product_gflop": round(2 * hw * full * hw * D / 1e9, 1),
        "product_s": statistics.median(product),
        "ours_s_per_frame": statistics.median(ours),
        "ours_over_product": ratio,
        "reference_s_per_frame": statistics.median(reference),
        "reference_over_ours": statistics.median(reference) / statistics.median(ours),
    }


def mask_section(grid, loop_seconds):
    params = PRESETS["rsp"]
    out = {"grid": list(grid), "radius": params.radius, "loop_s": loop_seconds}
    out["vectorized_s"] = timed(lambda: neighbourhood_mask(*grid, params.radius), torch.device("cpu"))
    p8 = (grid[0] * 2, grid[1] * 2)
    out["vectorized_patch8_s"] = timed(lambda: neighbourhood_mask(*p8, params.radius), torch.device("cpu"))
    return out


def end_to_end_section(seq, encoder, device, out_dir, short_side):
    params = PRESETS["rsp"]
    with PeakMemory() as memory:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with Clock() as ours:
            segment_sequence(seq, encoder, params, out_dir / "ours", device, short_side)
            sync(device)
    timings = {}
    with Clock() as reference:
        reference_segment_sequence(
            seq.frames,
            seq.annotations[0],
            encoder,
            out_dir / "reference" / seq.name,
            params.topk,
            params.n_last_frames,
            params.radius,
            params.temperature,
            short_side,
            timings=timings,
        )
    differing = sum(
        int(
            (
                read_index_png(out_dir / "ours" / seq.name / f"{f.stem}.png")
                != read_index_png(out_dir / "reference" / seq.name / f"{f.stem}.png")
            ).sum()
        )
        for f in seq.frames
    )
    return {
        "frames": len(seq.frames),
        "ours_s": ours.wall,
        "reference_s": reference.wall,
        "speedup": reference.wall / ours.wall,
        "ours_cpu_s": ours.cpu,
        "reference_cpu_s": reference.cpu,
        "speedup_cpu_time": reference.cpu / ours.cpu,
        "differing_pixels": differing,
        "reference_mask_s": timings["mask_s"],
        "peak_rss_increase_mib": (memory.peak - memory.base) / 2**20,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }, timings


def jf_section(root, results, workers):
    seqs = read_davis(root)
    rng = np.random.default_rng(0)
    palette = davis_palette()
    for seq in seqs:  # predictions: the ground truth shifted, with objects dropped and blobs added
        for path in seq.annotations:
            gt = read_index_png(path)
            pred = np.roll(gt, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
            if rng.random() < 0.1:
                pred[pred == 1] = 0
            y, x = rng.integers(0, gt.shape[0] - 40), rng.integers(0, gt.shape[1] - 40)
            pred[y : y + 30, x : x + 30] = rng.integers(0, gt.max() + 1)
            write_index_png(results / seq.name / path.name, pred, palette)
    with Clock() as ours:
        fast = jf.evaluate(seqs, results, workers)
        fast_metrics = fast.global_metrics()
    with Clock() as reference:
        reference_metrics, reference_rows = reference_davis_scores(seqs, results)
    return {
        "sequences": len(seqs),
        "frames": len(seqs[0].annotations),
        "objects": len(fast.objects),
        "workers": workers,
        "ours_s": ours.wall,
        "reference_s": reference.wall,
        "speedup": reference.wall / ours.wall,
        "ours_cpu_s": ours.cpu,
        "reference_cpu_s": reference.cpu,
        "speedup_cpu_time": reference.cpu / ours.cpu,
        "identical": fast_metrics == reference_metrics and fast.per_object() == reference_rows,
        "J&F-Mean": fast_metrics["J&F-Mean"],
    }


def patch8_memory_section(device, frames):
    """Peak CUDA memory of a 480p sequence at patch 8 with 30 context frames (ViT-S/8, random weights)."""
    torch.cuda.reset_peak_memory_stats()
    encoder = ViTEncoder(224, 8, 384, 12, 6).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        seq = read_davis(write_davis(Path(tmp) / "d", 1, frames, 480, 854, seed=7))[0]
        start = time.perf_counter()
        segment_sequence(seq, encoder, PRESETS["rsp"], Path(tmp) / "out", device)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50, help="frames of the end-to-end sequence")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--jf-sequences", type=int, default=30)
    parser.add_argument("--jf-frames", type=int, default=70)
    parser.add_argument("--reference-frames", type=int, default=3, help="reference label_propagation calls timed")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the speed")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "eval_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.height, args.width, args.jf_sequences, args.jf_frames, args.reference_frames = 34, 96, 160, 3, 8, 1
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device
    )
    torch.manual_seed(0)
    encoder = ViTEncoder(224, 16, 384, 12, 6).eval()  # ViT-S/16 shape, random weights: speed only
    short_side = min(480, args.height)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    report["load_average_start"] = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seq = read_davis(write_davis(tmp / "e2e", 1, args.frames, args.height, args.width, seed=1))[0]
        report["end_to_end"], timings = end_to_end_section(seq, encoder.to(device), device, tmp / "out", short_side)
        first = read_index_png(seq.annotations[0])
        size = short_side_size(*first.shape, short_side)
        grid = (size[0] // 16, size[1] // 16)
        features = extract_features(encoder, iter_frames(seq.frames), size, device)
        labels = one_hot_grid(first, grid).to(device)
        report["propagation"] = propagation_section(features, labels, grid, device, args.reference_frames)
        report["propagation"]["reference_in_e2e_s_per_frame"] = statistics.median(
            timings["propagation_s"][30:] or timings["propagation_s"]
        )
        report["mask"] = mask_section(grid, timings["mask_s"])
        jf_root = write_davis(tmp / "jf", args.jf_sequences, args.jf_frames, args.height, args.width, objects=(1, 3), seed=2)
        report["j&f"] = jf_section(jf_root, tmp / "jf_results", os.cpu_count() or 1)
        if device.type == "cuda":
            report["patch8_memory"] = patch8_memory_section(device, min(args.frames, 40))
    report["total_s"] = time.perf_counter() - started
    report["load_average_end"] = os.getloadavg()
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def print_table(r: dict) -> None:
    p, m, e, j = r["propagation"], r["mask"], r["end_to_end"], r["j&f"]
    rows = [
        ("device", f"{r['device']} ({r['threads']} threads)", ""),
        (
            f"propagation / frame, grid {p['grid'][0]}x{p['grid'][1]}, {p['context_frames']} ctx",
            f"{p['ours_s_per_frame'] * 1e3:.1f} ms",
            f"{p['ours_over_product']:.2f}x the product",
        ),
        (f"affinity product alone ({p['product_gflop']} GFLOP)", f"{p['product_s'] * 1e3:.1f} ms", "roofline"),
        (
            "reference label_propagation / frame",
            f"{p['reference_s_per_frame'] * 1e3:.1f} ms",
            f"{p['reference_over_ours']:.2f}x ours",
        ),
        (
            f"mask {m['grid'][0]}x{m['grid'][1]} r{m['radius']}: vectorized / loops",
            f"{m['vectorized_s'] * 1e3:.2f} ms / {m['loop_s']:.1f} s",
            f"patch 8: {m['vectorized_patch8_s'] * 1e3:.1f} ms",
        ),
        (
            f"end to end, {e['frames']} frames: ours / reference",
            f"{e['ours_s']:.1f} s / {e['reference_s']:.1f} s",
            f"{e['speedup']:.2f}x ({e['speedup_cpu_time']:.2f}x in CPU time), {e['differing_pixels']} px differ",
        ),
        (
            f"J&F, {j['sequences']} seq x {j['frames']} frames ({j['objects']} obj)",
            f"{j['ours_s']:.1f} s / {j['reference_s']:.1f} s",
            f"{j['speedup']:.2f}x ({j['speedup_cpu_time']:.2f}x in CPU time), identical: {j['identical']}",
        ),
        (
            "peak memory, end to end",
            f"+{e['peak_rss_increase_mib']:.0f} MiB RSS",
            f"CUDA {e['peak_cuda_mib']:.0f} MiB" if e["peak_cuda_mib"] else "",
        ),
    ]
    if "patch8_memory" in r:
        q = r["patch8_memory"]
        rows.append((f"480p at patch 8, {q['frames']} frames", f"{q['seconds']:.1f} s", f"peak {q['peak_cuda_gib']:.2f} GiB"))
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>24}  {c}")
    print(
        f"total {r['total_s']:.0f} s; load average {r['load_average_start'][0]:.1f} at the start, "
        f"{r['load_average_end'][0]:.1f} at the end (other jobs on this machine slow both sides)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
