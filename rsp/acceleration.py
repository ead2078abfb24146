"""How the training step uses its device: precision (autocast dtype, loss scaling), TF32,
torch.compile and DDP, and the checks that refuse, before anything trains, what the device cannot do.

TF32, torch.compile, the host sync, AdamW's kernel and DDP's settings change how fast a step runs
and the order of floating-point operations, never what is trained: they are runtime-only like the
device itself (docs/training.md#gpu-options). A run may continue with other values, but
bitwise-equal resume needs the same device and the same values. The precision is part of what is
trained (fingerprinted). Process-wide switches (TF32, cuDNN autotuning, deterministic algorithms,
Inductor's deterministic mode) are set by `device_settings` for one training run and restored after.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from core.schema import ConfigError, from_dict, to_dict
from rsp.blocks import set_fused_attention
from rsp.config import ModelConfig, RuntimeConfig, TrainConfig
from rsp.gpus import BF16_MIN_CAPABILITY
from rsp.model import create_model

# cuBLAS is deterministic run to run only with a fixed workspace; torch refuses deterministic
# algorithms on CUDA without this setting (PyTorch's reproducibility notes).
CUBLAS_WORKSPACE = ":4096:8"


class DeviceSupportError(ConfigError):
    """The configuration asks for something this process's device (or toolchain) cannot do."""

    def __init__(self, problems: list[str]):
        super().__init__(problems, what="runtime configuration for this device")


class BatchTooLargeError(RuntimeError):
    """A training step ran out of GPU memory; the message says which batch and what to change."""

    @classmethod
    def explain(cls, cfg: TrainConfig, device: torch.device, precision: str, exc: BaseException) -> BatchTooLargeError:
        cuda = device.type == "cuda"
        total = torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else float("nan")
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
        b, r, a = cfg.data.batch_size, cfg.data.repeated_sampling, cfg.optim.accum_iter
        fix = (
            f"set data.batch_size={b // 2} and optim.accum_iter={2 * a} (the same {b * a} videos per process and "
            "optimizer step, as a new run)"
            if b > 1
            else "use a GPU with more memory or a smaller model"
        )
        name = torch.cuda.get_device_name(device) if cuda else str(device)
        return cls(
            f"data.batch_size={b} ({b * r} pairs per micro-step) does not fit on {name} "
            f"({total:.1f} GiB, {peak:.1f} GiB allocated at the peak) with {cfg.model.name} at {cfg.model.img_size} px, "
            f"{precision}{', compiled' if cfg.runtime.compile else ''}: {fix}. Checkpoints already written are intact ({exc})"
        )


def resolve_precision(requested: str, device: torch.device) -> str:
    """auto: bf16 autocast on CUDA, fp32 on the CPU. Never silently falls back to another precision:
    the precision shapes the results, so a run must not change it with the node it lands on."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return requested


def compiler_problem(device_type: str) -> str | None:
    """Why torch.compile cannot build kernels for `device_type` on this machine, or None.
    CPU: Inductor writes C++ and builds it with $CXX (default g++) against Python's headers.
    CUDA: Inductor writes Triton kernels; Triton builds its launchers with a C compiler ($CC)."""
    if device_type == "cuda":
        from torch.utils._triton import has_triton  # local: probes for Triton only when compile is asked for

        if not has_triton():
            return "Triton is not installed (or finds no GPU it supports); install the triton wheel that matches torch"
        cc = os.environ.get("CC") or next((c for c in ("gcc", "cc", "clang") if shutil.which(c)), None)
        if cc is None or shutil.which(cc) is None:
            return f"Triton needs a C compiler and none was found ({'CC=' + cc if cc else 'gcc, cc, clang'}); install gcc"
        return None
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        return f"Inductor builds CPU kernels with the C++ compiler {cxx!r} ($CXX), which is not on PATH; install g++ or set CXX"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        return f"Inductor builds CPU kernels against Python's headers, and {header} is missing; install python3-dev"
    return None


def device_problems(runtime: RuntimeConfig, device_type: str, gpu: tuple[str, tuple[int, int]] | None = None) -> list[str]:
    """What `runtime` asks of a `device_type` device that it cannot do; `gpu` is its (name,
    compute capability) on CUDA. Each message names the key, the value, the rule and the fix."""
    out = []
    precision = resolve_precision(runtime.precision, torch.device(device_type))
    if precision == "fp16" and device_type != "cuda":
        out.append(
            "runtime.precision=fp16 needs a CUDA device: fp16 gradients underflow without loss scaling, and the "
            "GradScaler runs on CUDA here; use runtime.precision=fp32 or bf16 on the CPU, or run on a GPU"
        )
    if precision == "bf16" and gpu is not None and gpu[1] < BF16_MIN_CAPABILITY:
        name, cap = gpu
        out.append(
            f"runtime.precision={runtime.precision} means bf16 autocast, which {name} (compute capability "
            f"{cap[0]}.{cap[1]}) has no tensor cores for (bf16 needs 8.0, Ampere, or newer); set runtime.precision=fp16 "
            "(with loss scaling) or fp32, or constrain the job to newer GPUs (cluster.gpu_type / cluster.constraint)"
        )
    if runtime.compile and (reason := compiler_problem(device_type)):
        out.append(f"runtime.compile=true cannot work on this {device_type} machine: {reason}; or set runtime.compile=false")
    return out


def check_device_support(runtime: RuntimeConfig, device: torch.device) -> None:
    """Raise DeviceSupportError when `device` cannot run `runtime`: before anything is loaded or written."""
    gpu = (torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)) if device.type == "cuda" else None
    problems = device_problems(runtime, device.type, gpu)
    if problems:
        raise DeviceSupportError(problems)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def device_settings(runtime: RuntimeConfig, device: torch.device) -> Iterator[None]:
    """Process-wide switches for one training run, restored afterwards (a debug-backend job or a
    notebook goes on with its own settings)."""
    import torch._inductor.config as inductor_config  # local: imports the compiler stack, which submitting need not pay for

    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    )
    if runtime.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    if device.type == "cuda":  # CPU numerics stay exactly as they were
        torch.backends.cuda.matmul.allow_tf32 = runtime.tf32  # fp32 matmuls (precision=fp32; ops autocast leaves in fp32)
        torch.backends.cudnn.allow_tf32 = runtime.tf32  # the patch embedding's convolution
    torch.backends.cudnn.benchmark = not runtime.deterministic  # timing-based algorithm choice is not reproducible
    torch.use_deterministic_algorithms(runtime.deterministic)
    # Inductor's deterministic mode: no kernel choice by on-device timing where it changes numerics,
    # so a requeued attempt on another node compiles the same kernels (exact resume with compile).
    patch = inductor_config.patch(deterministic=True) if hasattr(inductor_config, "deterministic") else contextlib.nullcontext()
    try:
        with patch:
            yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
            deterministic,
        ) = saved
        torch.use_deterministic_algorithms(deterministic)


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP without per-step host work beyond the gradient all-reduce:
    - find_unused_parameters=False: every trainable parameter of every registered model and
      ablation gets a gradient each step (tests/test_acceleration.py checks all of them), so DDP
      need not walk the autograd graph after each forward;
    - gradient_as_bucket_view: gradients live in the all-reduce buckets (no copy, less memory);
    - no static_graph: with it the two replicas of a 2-rank gloo run (torch 2.14) diverged after
      the first update (likely trigger: the encoder runs three times per step, so its weights'
      gradient hooks fire three times), it breaks no_sync() accumulation (pytorch/pytorch#187732),
      and without unused parameters it has nothing to save."""
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False,
        gradient_as_bucket_view=True,
    )


def compile_step(module: torch.nn.Module) -> Callable:
    """torch.compile of the model's forward (and, through AOTAutograd, its backward): one graph per
    training step. The prior's logging-only decoder pass stays outside (RSP.log_prior_loss), so
    the compiled graph, and with it the trajectory, is the same on logging and other steps.
    dynamic=False: training shapes never change, and static kernels are the same in every attempt
    (automatic dynamic shapes could compile other kernels after an earlier model in the process)."""
    return torch.compile(module, dynamic=False)


# --- will a batch fit? ----------------------------------------------------------------------------

# What the activations of a step occupy at least, as a share of what autograd saves in fp32 eager
# mode with explicit attention (counted on the meta device): 16-bit autocast halves the saved
# tensors, and fused attention plus torch.compile's recomputation remove at most half of the rest
# (an assumption: bench/gpu_check.py prints each measured peak beside this bound).
ACTIVATION_SHARE_LOWER_BOUND = {"fp32": 0.5, "bf16": 0.25, "fp16": 0.25}
STATE_BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW's two moments


def memory_lower_bound(cfg: TrainConfig, precision: str) -> float:
    """Bytes one process's GPU needs at least for a training step of `cfg` (model state and the
    activations of data.batch_size x repeated_sampling pairs). Larger than the GPU's memory: the
    batch cannot fit, whatever the kernels."""
    state, saved_per_pair = _step_bytes(json.dumps(to_dict(cfg.model), sort_keys=True))
    pairs = cfg.data.batch_size * cfg.data.repeated_sampling
    return state + ACTIVATION_SHARE_LOWER_BOUND[precision] * saved_per_pair * pairs


@functools.cache
def _step_bytes(model_json: str) -> tuple[float, float]:
    """(model state bytes, bytes autograd saves per pair in fp32), counted on the meta device:
    no memory, ~1-5 s for S/16-L/16; cached per model config."""
    cfg = from_dict(ModelConfig, json.loads(model_json))
    with torch.device("meta"):
        model = create_model(cfg)
        frames = [torch.empty(1, 3, cfg.img_size, cfg.img_size) for _ in range(2)]
    set_fused_attention(model, False)  # explicit attention: a definite count (SDPA's meta path may vary)
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:  # views of one activation count once
            saved[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(*frames)
    state = sum(p.numel() * (STATE_BYTES_PER_PARAM if p.requires_grad else 4) for p in model.parameters())
    return float(state), float(sum(saved.values()))
