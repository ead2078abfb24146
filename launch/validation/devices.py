"""Submit-time checks of what a run asks of its devices, where submit time can know the device.

Known: a CPU run (cluster.gpus_per_node=0 or runtime.device=cpu), this machine's GPU for the local
and debug backends, and the GPU model of a SLURM partition when `cluster.gpu_type` (or a plain
`cluster.constraint` such as `h100`) names one of rsp.gpus. What cannot be known here (a SLURM
node's toolchain, an unnamed GPU model, a batch that fits the bound but not the GPU) is checked by
the job when it starts (rsp.acceleration), which fails before training with the same kind of
message; the requeue breaker then ends the run after two attempts failing at the same step.

Rules (docs/training.md#gpu-options):
- runtime.device=cuda needs GPUs; cluster.gpu_type needs GPUs and must be a known model;
- fp16 needs a GPU (loss scaling runs on CUDA); so does data.decode_device=cuda (NVDEC);
- bf16 (runtime.precision=bf16 or auto) needs a GPU with bf16 tensor cores (compute capability 8.0+);
- a batch whose memory lower bound exceeds the GPU's memory cannot fit;
- runtime.compile needs the compiler toolchain (checked on this machine for local runs); on a CPU
  run it is allowed, with a warning.
"""

from __future__ import annotations

import functools
import logging

import torch

from launch.backends import backend_class
from launch.config import RunConfig
from rsp.acceleration import compiler_problem, memory_lower_bound
from rsp.gpus import GPUModel, known_keys, lookup

log = logging.getLogger(__name__)


def runs_on_cpu(cfg: RunConfig) -> bool:
    if cfg.runtime.device == "cpu":
        return True
    if backend_class(cfg.cluster.backend).in_process:  # in this process, on whatever this machine has
        return not _local_gpu_name()
    return cfg.cluster.gpus_per_node == 0  # local and SLURM jobs see only the GPUs they requested


@functools.cache
def _local_gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def gpu_model(cfg: RunConfig) -> GPUModel | None:
    """The GPU model the run's processes will get, when submit time can know it."""
    c = cfg.cluster
    if backend_class(c.backend).runs_here:
        name = _local_gpu_name()
        return lookup(name) if name else None
    if c.gpu_type:
        return lookup(c.gpu_type)
    if c.constraint and c.constraint.replace("-", "").replace("_", "").isalnum():  # one plain feature, e.g. h100
        return lookup(c.constraint)
    return None


def evaluation_device_problems(cfg: RunConfig) -> list[str]:
    """The evaluation jobs' device: evaluation.device=cuda without evaluation.gpus fails every job
    ("no CUDA device") after training; GPUs this machine lacks are asked of a backend that runs here."""
    e, backend, out = cfg.evaluation, backend_class(cfg.cluster.backend), []
    if not e.tasks:
        return out
    if e.device == "cuda" and e.gpus == 0 and not backend.in_process:
        out.append(
            "evaluation.device=cuda but evaluation.gpus=0: every evaluation job would see no GPU; "
            "request GPUs (evaluation.gpus=N) or set evaluation.device=auto"
        )
    if backend.counts_gpus_here and e.gpus > (visible := torch.cuda.device_count()):
        out.append(f"evaluation.gpus ({e.gpus}) exceeds the {visible} GPU(s) of this machine; set evaluation.gpus={visible}")
    return out


def device_problems(cfg: RunConfig) -> list[str]:
    c, r = cfg.cluster, cfg.runtime
    backend, out = backend_class(c.backend), []
    if c.gpu_type is not None and lookup(c.gpu_type) is None:
        out.append(f"cluster.gpu_type ({c.gpu_type!r}) is not a known GPU model; valid: {known_keys()}")
    if c.gpu_type is not None and c.gpus_per_node == 0:
        out.append(f"cluster.gpu_type ({c.gpu_type!r}) is set but cluster.gpus_per_node=0; request GPUs or unset gpu_type")
    if r.device == "cuda" and c.gpus_per_node == 0 and not backend.in_process:
        out.append(
            "runtime.device=cuda but cluster.gpus_per_node=0: the job would see no GPU; "
            "request GPUs (cluster.gpus_per_node=N) or set runtime.device=auto"
        )
    out += evaluation_device_problems(cfg)
    if runs_on_cpu(cfg):
        if r.precision == "fp16":
            out.append(
                "runtime.precision=fp16 on a CPU run (cluster.gpus_per_node=0 or runtime.device=cpu): fp16 training needs "
                "loss scaling, which runs on CUDA here; use runtime.precision=fp32 or bf16, or request GPUs"
            )
        if r.compile and backend.runs_here and (reason := compiler_problem("cpu")):
            out.append(f"runtime.compile=true cannot work on this machine: {reason}; or set runtime.compile=false")
        if cfg.data.decode_device != "cpu":
            out.append(
                f"data.decode_device={cfg.data.decode_device} decodes videos on the GPU (NVDEC), but this is a CPU run "
                "(cluster.gpus_per_node=0, runtime.device=cpu, or no GPU on this machine for an in-process run); "
                "set data.decode_device=cpu, or request GPUs"
            )
        return out
    if r.compile and backend.runs_here and (reason := compiler_problem("cuda")):
        out.append(f"runtime.compile=true cannot work on this machine's GPU: {reason}; or set runtime.compile=false")
    model = gpu_model(cfg)
    if model is None:
        return out
    precision = "bf16" if r.precision == "auto" else r.precision  # auto on a GPU (rsp.acceleration.resolve_precision)
    if precision == "bf16" and not model.native_bf16:
        cap = ".".join(map(str, model.capability))
        out.append(
            f"runtime.precision={r.precision} means bf16 autocast, which {model.key} GPUs (compute capability {cap}) have no "
            "tensor cores for (8.0, Ampere, or newer); set runtime.precision=fp16 (with loss scaling) or fp32, "
            "or choose newer GPUs (cluster.gpu_type / cluster.constraint)"
        )
    if cfg.model.problems():  # a model config that does not build is reported by its own rules
        return out
    need = memory_lower_bound(cfg, precision) / 2**30
    if need > model.memory_gib:
        pairs = cfg.data.batch_size * cfg.data.repeated_sampling
        fits = max(1, int(cfg.data.batch_size * model.memory_gib / need))
        out.append(
            f"data.batch_size ({cfg.data.batch_size}, {pairs} pairs per GPU and micro-step) cannot fit on a {model.key} "
            f"({model.memory_gib:.0f} GiB): {cfg.model.name} at {precision} needs at least {need:.0f} GiB; lower data.batch_size "
            f"(below {fits}) and raise optim.accum_iter to keep the effective batch"
        )
    return out


def device_warnings(cfg: RunConfig) -> list[str]:
    if cfg.runtime.compile and runs_on_cpu(cfg):
        return [
            "runtime.compile=true on a CPU run: Inductor builds C++ kernels for minutes before the first step (~3 min for "
            "the tiny test model on a busy 2-core VM) and compiled CPU steps are not measured to be faster; "
            "set runtime.compile=false unless you mean it"
        ]
    return []
