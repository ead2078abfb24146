"""The GPU path checked and measured in one command (under 8 minutes on one H100/H200):

    python bench/gpu_check.py --out $OUT/gpu_check.json    # on a lent GPU (docs/training.md#checking-a-gpu)
    python bench/gpu_check.py --quick                       # anywhere, tiny sizes (CI runs it on the CPU)

Sections (run in the order tests, S/16 steps, propagation, loader, B/16 steps); a section starts only
when its estimate fits in what is left of the time budget (--budget-s), else it is listed as
skipped, so the command always ends with its table and JSON:
  tests        `pytest -m gpu tests/test_gpu.py` in a subprocess: passed / failed / skipped.
  steps        training pairs/s of S/16 and B/16 at 224 px, the recipe's 96 videos x 2 pairs per GPU,
               for the trainer's step (bf16 autocast, fused AdamW, no host sync; eager or
               torch.compile'd; SDPA or explicit-softmax attention) and the reference's style of step
               (fp16 autocast + GradScaler, explicit softmax, per-parameter AdamW, loss.item() every
               step, and the prior's decoder pass every step). Executed TFLOP/s and MFU = executed
               FLOP/s / the GPU's dense bf16 peak (rsp.gpus); FLOPs are counted on the model itself
               (bench/model_step.py); peak memory per pair, beside the submit-time lower bound.
               Single GPU: no DDP, so the reference's find_unused_parameters does not enter.
  propagation  DAVIS label propagation at patch 8 (ViT-S/8, random weights) on a generated 480p
               sequence (832x480 frames, RSP preset, 30 context frames): s/frame of the propagation
               with full context, end to end (features + propagation + PNGs), peak GPU memory.
  loader       FramePairDataset on generated 256x340 all-intra videos (the default preparation) with this machine's
               CPUs as workers, consumed at the measured GPU rate of the S/16 compiled step (the
               consumer sleeps for each batch's GPU time): the data-wait share at GPU speed.
Writes one JSON (default gpu_check_<device>.json in the results directory, bench/bench_io.py) and prints one table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import torch  # noqa: E402

from bench.bench_io import RESULTS, machine  # noqa: E402
from bench.model_step import count_flops_per_pair  # noqa: E402
from eval.config import PRESETS  # noqa: E402
from eval.davis import read_davis, segment_sequence, short_side_size, write_davis  # noqa: E402
from eval.features import extract_features, iter_frames  # noqa: E402
from eval.indexmaps import one_hot_grid, read_index_png  # noqa: E402
from eval.propagation import propagate  # noqa: E402
from rsp.acceleration import autocast, compile_step, device_settings, memory_lower_bound  # noqa: E402
from rsp.blocks import set_fused_attention  # noqa: E402
from rsp.config import DataConfig, ModelConfig, OptimConfig, RuntimeConfig, TrainConfig  # noqa: E402
from rsp.data import EpochSampler, FramePairDataset  # noqa: E402
from rsp.encoder import ViTEncoder  # noqa: E402
from rsp.gpus import lookup  # noqa: E402
from rsp.kinetics import DEFAULT_KEYINT  # noqa: E402
from rsp.loading import make_loader  # noqa: E402
from rsp.model import create_model  # noqa: E402
from rsp.optim import build_optimizer, param_groups  # noqa: E402
from rsp.synthetic import generate_dataset  # noqa: E402

TARGETS = {
    "S/16 compiled MFU": ">= 0.35",
    "B/16 compiled MFU": ">= 0.45",
    "best step / reference-style step": ">= 2",
    "propagation s/frame (patch 8, 480p)": "< 0.1",
    "propagation peak GiB": "< 8",
    "data-wait share at the S/16 compiled rate": "< 0.05",
    "host CPU per pair, decoding on the GPU vs the CPU": "<= 1/5",
}


# --- sizes -----------------------------------------------------------------------------------------


def sizes(quick: bool, cuda: bool) -> dict:
    if not quick:
        return dict(
            models=[("S/16", "rsp_vit_small_patch16"), ("B/16", "rsp_vit_base_patch16")],
            img=224,
            pairs=192,
            warmup=3,
            steps=8,
            windows=3,
            prop_model=("S/8", 8, 384, 12, 6),
            prop_frames=40,
            prop_hw=(480, 854),
            videos=48,
            video_hw=(256, 340),
            video_frames=150,
            loader_batches=12,
            compile=True,
            quick=False,
        )
    return dict(
        models=[("tiny/8", "rsp_vit_tiny_patch8")],
        img=64,
        pairs=4,
        warmup=1,
        steps=1,
        windows=1,
        prop_model=("tiny/8", 8, 64, 2, 2),
        prop_frames=34,
        prop_hw=(64, 96),
        videos=6,
        video_hw=(64, 80),
        video_frames=40,
        loader_batches=3,
        compile=cuda,  # Inductor's CPU build takes minutes; CPU compile is tests/test_acceleration.py's
        quick=True,
    )


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, what: str, needs_s: float) -> bool:
        if self.left() >= needs_s:
            return True
        self.skipped.append(f"{what} (needs ~{needs_s:.0f} s, {max(0.0, self.left()):.0f} s left)")
        log(f"skipped {what}: time budget")
        return False


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- tests -----------------------------------------------------------------------------------------


def run_tests(timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rfEs", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return {"status": f"timed out after {timeout_s:.0f} s", "tail": out[-3000:], "seconds": timeout_s}
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", proc.stdout)}
    return {
        "status": "ok" if proc.returncode in (0, 5) and not counts.get("failed") else f"exit {proc.returncode}",
        "counts": counts,
        "tail": (proc.stdout + proc.stderr)[-3000:],
        "seconds": time.perf_counter() - start,
    }


# --- training steps --------------------------------------------------------------------------------


class Step:
    """One training step as the trainer runs it (`style="project"`), or in the reference's style."""

    def __init__(self, name: str, img: int, style: str, fused_attention: bool, compiled: bool, device: torch.device):
        torch.manual_seed(0)
        self.style, self.device = style, device
        self.model = create_model(name, img_size=img).to(device).train()
        set_fused_attention(self.model, fused_attention)
        cfg = TrainConfig(model=ModelConfig(name=name, img_size=img), optim=OptimConfig(lr=1e-4))
        if style == "project":
            self.precision = "bf16" if device.type == "cuda" else "fp32"
            self.optimizer = build_optimizer(self.model, cfg, 1e-4)  # fused on CUDA
        else:  # the reference: timm-era AdamW (per-parameter loop), fp16 + GradScaler
            self.precision = "fp16" if device.type == "cuda" else "fp32"
            self.optimizer = torch.optim.AdamW(param_groups(self.model, 0.05), lr=1e-4, betas=(0.9, 0.95), foreach=False)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        if compiled:
            torch._dynamo.reset()  # each measured model compiles from scratch, static shapes
        self.forward = compile_step(self.model) if compiled else self.model
        self.generator = torch.Generator(device=device).manual_seed(0)

    def __call__(self, src: torch.Tensor, tgt: torch.Tensor) -> None:
        with autocast(self.precision, self.device):
            if self.style == "project":
                out = self.forward(src, tgt)  # the prior's pass runs on logging steps only
            else:
                out = self.forward(src, tgt, prior_generator=self.generator)  # every step, as the reference
        self.scaler.scale(out.loss).backward()
        if self.style == "reference":
            out.loss.item()  # the log's loss value and its finiteness check: a host sync every step
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def measure_step(label: str, name: str, style: str, fused: bool, compiled: bool, s: dict, device: torch.device) -> dict:
    step = Step(name, s["img"], style, fused, compiled, device)
    src = torch.randn(s["pairs"], 3, s["img"], s["img"], device=device)
    tgt = torch.randn_like(src)
    start = time.perf_counter()
    for _ in range(s["warmup"]):  # compiles, allocates the optimizer state, settles the allocator
        step(src, tgt)
    sync(device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    windows = []
    for _ in range(s["windows"]):
        start = time.perf_counter()
        for _ in range(s["steps"]):
            step(src, tgt)
        sync(device)
        windows.append((time.perf_counter() - start) / s["steps"])
    step_s = statistics.median(windows)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    row = {
        "config": label,
        "model": name,
        "style": style,
        "precision": step.precision,
        "attention": "fused" if fused else "explicit",
        "compiled": compiled,
        "pairs": s["pairs"],
        "step_s": step_s,
        "window_step_s": windows,
        "pairs_per_s": s["pairs"] / step_s,
        "warmup_s": warmup_s,
        "peak_gib": peak / 2**30,
        "peak_mib_per_pair": (peak - base) / 2**20 / s["pairs"] if device.type == "cuda" else None,
    }
    del step
    return row


def step_rows(short: str, name: str, s: dict, device: torch.device, budget: Budget) -> list[dict]:
    """The step variants of one model, cheapest first, the compiled one last (its compile takes the longest)."""
    peak = lookup(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    model = create_model(name, img_size=s["img"]).to(device)
    executed, reference = count_flops_per_pair(model, device)
    del model
    cfg = TrainConfig(model=ModelConfig(name=name, img_size=s["img"]), data=DataConfig(batch_size=s["pairs"] // 2))
    bound = memory_lower_bound(cfg, "bf16" if device.type == "cuda" else "fp32") / 2**30
    variants = [
        (f"{short} eager", "project", True, False, 30),
        (f"{short} reference-style", "reference", False, False, 40),
        (f"{short} eager, explicit attn", "project", False, False, 30),
    ]
    if s["compile"]:
        variants.append((f"{short} compiled", "project", True, True, 150))
    rows = []
    for label, style, fused, compiled, needs_s in variants:
        if not budget.allows(label, 0 if s["quick"] else needs_s):
            continue
        log(f"{label}: {s['pairs']} pairs per step")
        try:
            row = measure_step(label, name, style, fused, compiled, s, device)
        except torch.OutOfMemoryError:
            budget.skipped.append(f"{label} (out of memory at {s['pairs']} pairs)")
            torch.cuda.empty_cache()
            continue
        flops = reference if style == "reference" else executed  # the reference decodes the prior every step
        row.update(gflop_per_pair=flops / 1e9, tflops=flops * row["pairs_per_s"] / 1e12, memory_bound_gib=bound)
        row["mfu"] = row["tflops"] / peak.bf16_tflops if peak and peak.bf16_tflops else None
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    reference_rate = next((r["pairs_per_s"] for r in rows if r["style"] == "reference"), None)
    for r in rows:
        r["vs_reference"] = r["pairs_per_s"] / reference_rate if reference_rate else None
    return rows


# --- propagation -----------------------------------------------------------------------------------


def propagation(s: dict, device: torch.device) -> dict:

    label, patch, dim, depth, heads = s["prop_model"]
    torch.manual_seed(0)
    encoder = ViTEncoder(224, patch, dim, depth, heads).to(device).eval()
    params = PRESETS["rsp"]
    with tempfile.TemporaryDirectory() as tmp:
        seq = read_davis(write_davis(Path(tmp) / "d", 1, s["prop_frames"], *s["prop_hw"], seed=7))[0]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        frames = segment_sequence(seq, encoder, params, Path(tmp) / "out", device, short_side=min(480, s["prop_hw"][0]))
        sync(device)
        end_to_end = (time.perf_counter() - start) / frames
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        first = read_index_png(seq.annotations[0])
        size = short_side_size(*first.shape, min(480, s["prop_hw"][0]))
        grid = (size[0] // patch, size[1] // patch)
        features = extract_features(encoder, iter_frames(seq.frames), size, device)
        labels = one_hot_grid(first, grid).to(device)
        full_context, times = 1 + params.n_last_frames, []
        frame_iter = propagate(features, labels, grid, params)
        for t in range(1, len(features)):
            start = time.perf_counter()
            next(frame_iter)
            sync(device)
            if t >= full_context:
                times.append(time.perf_counter() - start)
    return {
        "encoder": label,
        "frame_size": f"{size[1]}x{size[0]}",
        "grid": f"{grid[1]}x{grid[0]}",
        "frames": frames,
        "propagation_s_per_frame": statistics.median(times) if times else None,
        "end_to_end_s_per_frame": end_to_end,
        "peak_gib": peak,
    }


# --- loader ----------------------------------------------------------------------------------------


def loader(s: dict, gpu_pairs_per_s: float | None, worker_counts: list[int], budget: Budget) -> list[dict]:
    """Per worker count, and for decoding on the GPU (data.decode_device=cuda, torchcodec on NVDEC,
    in the training process) where there is one: the loader's pairs/s alone, the host CPU seconds
    per pair (this process, its loader workers and their read processes), and the share of time a
    consumer at the GPU's rate (it sleeps for each batch's GPU time; the host only queues work then)
    waits for data."""

    batch_videos, rows = max(1, s["pairs"] // 2), []
    setups = [(workers, "cpu") for workers in worker_counts] + ([(0, "cuda")] if torch.cuda.is_available() else [])
    gpu_s = batch_videos * 2 / gpu_pairs_per_s if gpu_pairs_per_s else 0.0  # one batch's GPU time
    with tempfile.TemporaryDirectory() as tmp:
        root, (h, w) = Path(tmp) / "videos", s["video_hw"]
        generate_dataset(
            root, s["videos"], height=h, width=w, num_frames=s["video_frames"], keyint=DEFAULT_KEYINT, jobs=os.cpu_count() or 1
        )
        for workers, decode_device in setups:
            what = f"{workers} workers" if decode_device == "cpu" else "decoding on the GPU"
            if not budget.allows(f"loader, {what}", 0 if s["quick"] else 40):
                continue
            log(f"loader: {what}, consumer at {gpu_pairs_per_s or 0:.0f} pairs/s")
            decoder = "torchcodec" if decode_device == "cuda" else DataConfig().decoder
            cfg = DataConfig(root=str(root), batch_size=batch_videos, num_workers=workers, pin_memory=torch.cuda.is_available(),
                             decoder=decoder, decode_device=decode_device)  # fmt: skip
            dataset = FramePairDataset(cfg, s["img"], seed=0)
            sampler = EpochSampler(len(dataset), batch_videos, 0, 1, seed=0)
            loader_ = make_loader(dataset, sampler, cfg, seed=0)
            row = {"workers": workers, "decode_device": decode_device, "decoder": decoder, "batch_pairs": batch_videos * 2,
                   "gpu_pairs_per_s": gpu_pairs_per_s}  # fmt: skip
            for mode, sleep_s in (("alone", 0.0), ("at_gpu_rate", gpu_s)):
                cpu_before = host_cpu_seconds()
                waited, elapsed = consume(loader_, sampler, s["loader_batches"], sleep_s)
                pairs = s["loader_batches"] * batch_videos * 2
                row[f"{mode}_pairs_per_s"] = pairs / elapsed
                if mode == "alone":  # includes the first (start-up) batch: an upper bound
                    row["host_cpu_s_per_pair"] = (host_cpu_seconds() - cpu_before) / pairs
                if mode == "at_gpu_rate":
                    row["data_wait_share"] = waited / elapsed
            row["videos"] = f"{s['videos']} of {w}x{h}, {s['video_frames']} frames, keyframe every {DEFAULT_KEYINT}"
            rows.append(row)
            del loader_  # its persistent workers stop before the videos are deleted
    return rows


def host_cpu_seconds() -> float:
    """CPU seconds of this process and its living descendants (loader workers, read processes)."""
    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def consume(loader_, sampler, batches: int, sleep_s: float) -> tuple[float, float]:
    """(seconds waiting for batches, total seconds) over `batches` batches after the first (worker
    start-up), restarting epochs as needed."""
    epoch, waited = 0, 0.0
    sampler.set_position(epoch, 0)
    it = iter(loader_)
    start = None
    for i in range(batches + 1):
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            epoch += 1
            sampler.set_position(epoch, 0)
            it = iter(loader_)
            next(it)
        if i == 0:
            start = time.perf_counter()
            continue
        waited += time.perf_counter() - t0
        time.sleep(sleep_s)
    return waited, time.perf_counter() - start


# --- the report ------------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    m = result["meta"]
    lines = [f"device: {m['device']} | torch {m['torch']} | {m['cpus']} CPUs | peak bf16 {m['peak_bf16_tflops']} TFLOP/s"]
    tests = result.get("tests")
    if tests:
        lines.append(f"tests (pytest -m gpu): {tests['status']} {tests.get('counts', {})} in {tests['seconds']:.0f} s")
    titles = (("step", "<32"), ("pairs/s", ">9"), ("TF/s", ">8"), ("MFU", ">6"), ("x ref", ">7"), ("peak GiB", ">9"))
    titles += (("MiB/pair", ">9"), ("bound GiB", ">10"), ("warmup s", ">9"))
    lines.append("".join(f"{t:{fmt}}" for t, fmt in titles))
    for r in result["rows"]:
        mfu = f"{r['mfu']:.0%}" if r.get("mfu") is not None else "-"
        per_pair = f"{r['peak_mib_per_pair']:.0f}" if r.get("peak_mib_per_pair") is not None else "-"
        lines.append(
            f"{r['config']:<32}{r['pairs_per_s']:>9.1f}{r['tflops']:>8.1f}{mfu:>6}{r.get('vs_reference') or 0:>7.2f}"
            f"{r['peak_gib']:>9.1f}{per_pair:>9}{r['memory_bound_gib']:>10.1f}{r['warmup_s']:>9.1f}"
        )
    p = result.get("propagation")
    if p:
        peak = f"{p['peak_gib']:.2f} GiB" if p["peak_gib"] is not None else "- (CPU)"
        lines.append(
            f"propagation {p['encoder']} {p['frame_size']} (grid {p['grid']}): {p['propagation_s_per_frame']:.4f} s/frame "
            f"(full context), {p['end_to_end_s_per_frame']:.4f} s/frame end to end, peak {peak}"
        )
    for row in result.get("loader", []):
        gpu = f"{row['gpu_pairs_per_s']:.0f}" if row["gpu_pairs_per_s"] else "-"
        where = f"{row['workers']} workers" if row.get("decode_device", "cpu") == "cpu" else "decoding on the GPU"
        lines.append(
            f"loader, {where}: {row['alone_pairs_per_s']:.0f} pairs/s alone, {row['host_cpu_s_per_pair'] * 1e3:.2f} host CPU-ms "
            f"per pair; consumed at the GPU's {gpu} pairs/s: data-wait share {row['data_wait_share']:.1%}"
        )
    lines += [f"skipped: {s}" for s in result["skipped"]]
    lines.append("targets: " + "; ".join(f"{k} {v}" for k, v in TARGETS.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the GPU (CI)")
    parser.add_argument(
        "--budget-s", type=float, default=470, help="start a section only if its estimate fits in what is left of this (s)"
    )
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest section")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default gpu_check_<device>.json in the results directory, bench/bench_io.py)",
    )
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    s = sizes(args.quick, cuda)
    budget = Budget(args.budget_s)
    gpu = lookup(torch.cuda.get_device_name(device)) if cuda else None
    result: dict = {
        "meta": {
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "peak_bf16_tflops": gpu.bf16_tflops if gpu else None,
            "quick": args.quick,
            "load_average_start": os.getloadavg(),
        },
        "targets": TARGETS,
        "skipped": budget.skipped,
    }
    started = time.perf_counter()
    if not args.no_tests:
        log("tests: pytest -m gpu tests/test_gpu.py")
        result["tests"] = run_tests(timeout_s=max(60.0, min(300.0, budget.left() - 200)))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    (first_short, first_name), *others = s["models"]
    # The trainer's process-wide settings: TF32, cuDNN autotuning, Inductor's deterministic mode.
    with device_settings(RuntimeConfig(), device):
        result["rows"] = step_rows(first_short, first_name, s, device, budget)
        if budget.allows("propagation", 0 if args.quick else 40):
            log("propagation")
            result["propagation"] = propagation(s, device)
        # the loader against the first model's fastest step (the compiled one when measured)
        demand = max((r["pairs_per_s"] for r in result["rows"] if r["style"] == "project"), default=None) if cuda else None
        workers = [1] if args.quick else sorted({min(DataConfig().num_workers, cpus), cpus})
        result["loader"] = loader(s, demand, workers, budget)
        for short, name in others:
            result["rows"] += step_rows(short, name, s, device, budget)
    result["meta"]["seconds"] = time.perf_counter() - started
    result["meta"]["load_average_end"] = os.getloadavg()
    print(format_table(result))
    out = args.out or RESULTS / f"gpu_check_{'cuda' if cuda else 'cpu'}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **result}, indent=2, default=str))
    print(f"wrote {out}")
    failed = result.get("tests", {}).get("status", "ok") != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
