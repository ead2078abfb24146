"""Training-step throughput of RSP: forward + backward pairs/s, FLOP/s and peak memory, with fused
(torch SDPA) and unfused (explicit softmax) attention side by side in the same run.

    python bench/model_step.py                          # CPU: S/16 and B/16, 224 px, batch 8, fp32
    python bench/model_step.py --models rsp_vit_small_patch16 --batch 4 --steps 3
    python bench/model_step.py --device cuda            # GPU: batch 128, fp32 and bf16 autocast, MFU
    python bench/model_step.py --device cuda --precision bf16 --compile   # the same through torch.compile

A step is forward + backward into freshly allocated gradients (as after
optimizer.zero_grad(set_to_none=True)); no optimizer update, no data loading, random N(0, 1)
frames. Fused and unfused steps alternate on the same model, so background load hits both alike.
Each configuration reports the median over the timed steps.

FLOPs are counted from the model itself (torch.utils.flop_counter.FlopCounterMode on a one-pair
step; every op is per pair, so counts scale linearly with the batch). The CPU's fused attention
kernel has no FLOP formula, so the counting step uses the explicit attention path: the same matmuls.
Two FLOP rates are reported:

- executed FLOP/s: the FLOPs our timed step really executes / its time. Our training step skips
  the prior's decoder pass (it exists only to log loss_prior; docs/model.md#compute-per-pair) and runs it on logging
  steps only, so this counts 3 encoder passes, 2 decoder passes and their backward.
- model FLOP/s (the target's number): the FLOPs of one *reference-equivalent* step, i.e. forward
  including the prior's logging decoder pass (3 decoder passes, as the reference runs every step)
  plus backward, divided by the time of our non-logging step. It answers "how fast do we deliver
  the reference's training step". Both are divided by the FLOP/s of a large matmul of the same
  dtype on the same device, measured in the same run (best of the measurements before and after
  the model runs, so a busy machine does not flatter the ratio). The CPU target is
  model FLOP/s / matmul FLOP/s >= 0.85 for S/16 (fp32, 224 px, batch 8).

On CUDA, MFU = executed FLOP/s / the device's dense peak for that dtype (rsp.gpus, or
--peak-tflops). Peak memory, measured on the warmup steps: on CUDA, torch.cuda.max_memory_allocated;
on the CPU, the peak resident set (Linux VmHWM, reset through /proc/self/clear_refs before each
step, after freed heap pages are handed back). Both are given as the memory a step adds on top of
the model and its inputs, and as the process total.

On the CPU, the cpu% column is the share of the wall time the process's threads spent on a core:
a shared machine that ran other work during a step shows well below 100%, and its times are not
the machine's capability. Results are printed as a table and written as JSON (default
model_step_<device>.json in the results directory, bench/bench_io.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.bench_io import write  # noqa: E402
from rsp.architectures import MODELS  # noqa: E402
from rsp.blocks import set_fused_attention  # noqa: E402
from rsp.gpus import lookup  # noqa: E402
from rsp.model import RSP, create_model  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ATTENTION = ("fused", "unfused")


# --- measurement pieces -----------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, precision: str, size: int, repeats: int) -> float:
    """FLOP/s of a (size x size) @ (size x size) matmul in `precision`, best of three rounds."""
    a = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best


def count_flops_per_pair(model: RSP, device: torch.device) -> tuple[float, float]:
    """(executed, reference-equivalent) FLOPs of one training step per pair: without and with the
    prior's logging decoder pass (the latter runs under no_grad, so it adds forward FLOPs only)."""
    side = model.cfg.img_size
    src, tgt = (torch.randn(1, 3, side, side, device=device) for _ in range(2))
    set_fused_attention(model, False)  # the CPU SDPA kernel has no FLOP formula; same matmuls
    counts = []
    for generator in (None, torch.Generator(device=device).manual_seed(0)):
        with FlopCounterMode(display=False) as counter:
            model(src, tgt, generator).loss.backward()
        model.zero_grad(set_to_none=True)
        counts.append(float(counter.get_total_flops()))
    return counts[0], counts[1]


class PeakMemory:
    """Memory a step adds on top of what is allocated before it (bytes), plus the process total."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0

    @staticmethod
    def _status_kib(field: str) -> int:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        return int(match.group(1)) if match else 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            # Hand freed heap pages back first (glibc), so that memory kept from earlier steps does not
            # count in the baseline; then reset VmHWM to the current RSS (Linux).
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self._status_kib("VmRSS") * 1024

    def peak(self) -> tuple[int, int]:
        """(added, total) bytes at the peak since start()."""
        if self.device.type == "cuda":
            total = torch.cuda.max_memory_allocated(self.device)
        else:
            total = self._status_kib("VmHWM") * 1024
        return total - self.base, total


def training_step(model: torch.nn.Module, src: torch.Tensor, tgt: torch.Tensor, precision: str) -> None:
    autocast = torch.autocast(src.device.type, dtype=DTYPES[precision]) if precision != "fp32" else contextlib.nullcontext()
    with autocast:
        loss = model(src, tgt).loss
    loss.backward()


def time_attention_modes(
    model: RSP, batch: int, precision: str, warmup: int, steps: int, device: torch.device, use_compile: bool = False
) -> dict[str, dict]:
    """Step times and peak memory for each attention mode, steps interleaved across modes. With
    `use_compile`, the steps run through torch.compile (one graph per mode, built during warmup)."""
    runner = torch.compile(model) if use_compile else model
    side = model.cfg.img_size
    src, tgt = (torch.randn(batch, 3, side, side, device=device) for _ in range(2))
    memory = PeakMemory(device)
    results = {mode: {"step_s": [], "cpu_share": [], "peak_added": 0, "peak_total": 0} for mode in ATTENTION}

    def run(mode: str, measure_memory: bool) -> tuple[float, float]:
        set_fused_attention(model, mode == "fused")
        model.zero_grad(set_to_none=True)  # before the memory baseline: the step allocates fresh gradients
        synchronize(device)
        if measure_memory:
            memory.start()
        start, cpu_start = time.perf_counter(), time.process_time()
        training_step(runner, src, tgt, precision)
        synchronize(device)
        elapsed = time.perf_counter() - start
        # Share of the wall time this process's threads were on a core: ~1 on an idle machine,
        # well below 1 when other processes took the cores (then the timing says little).
        cpu_share = (time.process_time() - cpu_start) / (torch.get_num_threads() * elapsed)
        if measure_memory:
            added, total = memory.peak()
            results[mode]["peak_added"] = max(results[mode]["peak_added"], added)
            results[mode]["peak_total"] = max(results[mode]["peak_total"], total)
        return elapsed, cpu_share

    # Warmup alternates modes like the timed steps; compiled graphs settle only after each mode has
    # been re-entered once (guards on the attention switch), hence two rounds at least. Memory is
    # measured on the warmup steps only: handing pages back to the OS for an honest baseline would
    # make the next step pay for page faults that training never sees.
    for _ in range(max(warmup, 2) if use_compile else warmup):
        for mode in ATTENTION:
            run(mode, measure_memory=True)
    for _ in range(steps):
        for mode in ATTENTION:
            elapsed, cpu_share = run(mode, measure_memory=warmup == 0)
            results[mode]["step_s"].append(elapsed)
            results[mode]["cpu_share"].append(cpu_share)
    model.zero_grad(set_to_none=True)
    return results


def peak_tflops(device: torch.device, override: float | None) -> dict[str, float | None]:
    """Dense peaks of this GPU (rsp.gpus, the vendors' data sheets), or --peak-tflops for bf16."""
    if override is not None:
        return {"bf16": override, "fp32": None}
    model = lookup(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return {"bf16": model.bf16_tflops, "fp32": model.fp32_tflops} if model else {"bf16": None, "fp32": None}


# --- the benchmark ----------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 8)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    steps = args.steps or (10 if cuda else 2)
    precisions = args.precision or (["fp32", "bf16"] if cuda else ["fp32"])
    repeats = 50 if cuda else 2
    peaks = peak_tflops(device, args.peak_tflops)

    matmul_before = {p: matmul_flops(device, p, args.matmul_size, repeats) for p in precisions}
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, img_size=args.img_size).to(device)
        executed, reference = count_flops_per_pair(model, device)
        for precision in precisions:
            log(f"{name} {precision}: batch {batch}, {warmup} warmup + {steps} timed steps per attention mode")
            try:
                timed = time_attention_modes(model, batch, precision, warmup, steps, device, args.compile)
            except torch.OutOfMemoryError:
                log(f"{name} {precision}: out of memory at batch {batch}; skipped")
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            common = dict(model=name, device_type=device.type, precision=precision, batch=batch, img_size=args.img_size)
            rows += [make_row(common, mode, timed, executed, reference) for mode in ATTENTION]
        del model
    matmul_after = {p: matmul_flops(device, p, args.matmul_size, repeats) for p in precisions}
    matmul = {p: max(matmul_before[p], matmul_after[p]) for p in precisions}
    for row in rows:
        mm = matmul[row["precision"]] / 1e12
        row["matmul_tflops"] = mm
        row["executed_vs_matmul"] = row["executed_tflops"] / mm
        row["model_vs_matmul"] = row["model_tflops"] / mm
        peak = peaks.get(row["precision"])
        row["mfu"] = row["executed_tflops"] / peak if peak else None
    meta = dict(
        device=torch.cuda.get_device_name(device) if cuda else cpu_name(),
        device_type=device.type,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        matmul_size=args.matmul_size,
        matmul_tflops_before=_tera(matmul_before),
        matmul_tflops_after=_tera(matmul_after),
        peak_tflops=peaks,
        warmup=warmup,
        steps=steps,
        compiled=args.compile,
    )
    return {"meta": meta, "rows": rows}


def make_row(common: dict, mode: str, timed: dict[str, dict], executed: float, reference: float) -> dict:
    """One table row: `timed` from time_attention_modes, FLOPs per pair from count_flops_per_pair."""
    step_s = statistics.median(timed[mode]["step_s"])
    pairs_per_s = common["batch"] / step_s
    return dict(
        common,
        attention=mode,
        step_s=step_s,
        step_times_s=timed[mode]["step_s"],
        pairs_per_s=pairs_per_s,
        gflop_per_pair_executed=executed / 1e9,
        gflop_per_pair_reference=reference / 1e9,
        executed_tflops=executed * pairs_per_s / 1e12,
        model_tflops=reference * pairs_per_s / 1e12,
        peak_added_mib=timed[mode]["peak_added"] / 2**20,
        peak_total_mib=timed[mode]["peak_total"] / 2**20,
        fused_speedup=statistics.median(timed["unfused"]["step_s"]) / step_s if mode == "fused" else None,
        cpu_share=statistics.median(timed[mode]["cpu_share"]) if common["device_type"] == "cpu" else None,
    )


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE) if cpuinfo.exists() else None
    return match.group(1).strip() if match else platform.machine()


def _tera(flops: dict[str, float]) -> dict[str, float]:
    return {k: v / 1e12 for k, v in flops.items()}


COLUMNS: tuple[tuple[str, str, Callable[[dict], str]], ...] = (
    ("model", "<24", lambda r: r["model"]),
    ("prec", "<5", lambda r: r["precision"]),
    ("attn", "<8", lambda r: r["attention"]),
    ("batch", ">5", lambda r: str(r["batch"])),
    ("s/step", ">7", lambda r: f"{r['step_s']:.3f}"),
    ("pairs/s", ">8", lambda r: f"{r['pairs_per_s']:.2f}"),
    ("GF/pair exec|ref", ">16", lambda r: f"{r['gflop_per_pair_executed']:.1f}|{r['gflop_per_pair_reference']:.1f}"),
    ("TF/s exec", ">9", lambda r: f"{r['executed_tflops']:.3f}"),
    ("TF/s model", ">10", lambda r: f"{r['model_tflops']:.3f}"),
    ("exec/mm", ">7", lambda r: f"{r['executed_vs_matmul']:.2f}"),
    ("model/mm", ">8", lambda r: f"{r['model_vs_matmul']:.2f}"),
    ("MFU", ">5", lambda r: f"{r['mfu']:.0%}" if r["mfu"] is not None else "-"),
    ("fused x", ">7", lambda r: f"{r['fused_speedup']:.2f}" if r["fused_speedup"] else "-"),
    ("peak MiB +|total", ">16", lambda r: f"{r['peak_added_mib']:.0f}|{r['peak_total_mib']:.0f}"),
    ("cpu%", ">4", lambda r: f"{r['cpu_share']:.0%}" if r["cpu_share"] is not None else "-"),
)


def format_table(result: dict) -> str:
    meta = result["meta"]
    mm = ", ".join(
        f"{p} {max(meta['matmul_tflops_before'][p], meta['matmul_tflops_after'][p]):.3f} TF/s"
        for p in meta["matmul_tflops_before"]
    )
    lines = [
        f"device: {meta['device']} ({meta['device_type']}, {meta['threads']} threads), torch {meta['torch']}",
        f"matmul {meta['matmul_size']}^3: {mm}",
        "  ".join(f"{title:{fmt}}" for title, fmt, _ in COLUMNS),
    ]
    for row in result["rows"]:
        lines.append("  ".join(f"{cell(row):{fmt}}" for _, fmt, cell in COLUMNS))
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[model_step] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=["rsp_vit_small_patch16", "rsp_vit_base_patch16"],
        help="comma-separated registered model names",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (default: 8 on cpu, 128 on cuda)")
    parser.add_argument("--img-size", type=int, default=224, help="px")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per mode (default: 1 cpu, 3 cuda)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (default: 2 cpu, 10 cuda)")
    parser.add_argument(
        "--precision",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated fp32,bf16 (bf16 = autocast; default: fp32 on cpu, fp32,bf16 on cuda)",
    )
    parser.add_argument("--compile", action="store_true", help="run the timed steps through torch.compile (GPU runs)")
    parser.add_argument("--matmul-size", type=int, default=4096, help="side of the reference matmul")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device's dense bf16 peak for MFU (default: table)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default model_step_<device>.json in the results directory, bench/bench_io.py)",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(sorted(MODELS))}")
    bad = [p for p in args.precision or [] if p not in DTYPES]
    if bad:
        parser.error(f"unknown precision(s) {', '.join(bad)}; valid: {', '.join(DTYPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = benchmark(args)
    print(format_table(result))
    write(f"model_step_{args.device}", result["rows"], {"meta": result["meta"]}, out=args.out)


if __name__ == "__main__":
    main()
