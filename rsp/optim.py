"""AdamW parameter groups and the learning-rate schedule, counted in optimizer steps (docs/training.md#epochs-and-steps).

Epochs are converted to steps once, here (`resolve_schedule`); everything downstream speaks steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from core.schema import ConfigError
from rsp.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The reference's groups (timm's add_weight_decay): no decay for biases and 1-D parameters
    (norms), decay for every >= 2-D weight incl. cls/mask tokens and the patch conv; frozen
    parameters (the sin-cos position embeddings) are left out. S/16: 229 + 115 tensors."""
    no_decay, decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def implementation(device: torch.device) -> dict[str, bool]:
    """AdamW's kernel per device, as AdamW's keyword arguments.
    CUDA: fused (one kernel over all tensors; with GradScaler it skips an inf step on the device,
    with no host sync). Elsewhere: the per-parameter loop. On the CPU, foreach gives the loop's bits
    but was slower at S/16 (2-core VM: 0.16 vs 0.07 s per update), and fused is faster but not
    bitwise equal to the loop, so it would change every CPU run's results."""
    if device.type == "cuda":
        return {"fused": True, "foreach": False}
    return {"fused": False, "foreach": False}


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over `model`'s parameter groups, with the kernel for the device the model is on."""
    o = cfg.optim
    device = next(model.parameters()).device
    return torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, **implementation(device)
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load `saved` (an optimizer state_dict, possibly written on another device) keeping this
    optimizer's kernel: load_state_dict would otherwise adopt the file's fused/foreach flags and
    place the step counters for them (a CUDA-fused file on the CPU, or the reverse)."""
    kernel = {k: optimizer.param_groups[0][k] for k in ("fused", "foreach", "capturable") if k in optimizer.param_groups[0]}
    groups = [{**group, **kernel} for group in saved["param_groups"]]
    optimizer.load_state_dict({**saved, "param_groups": groups})


@dataclass(frozen=True)
class Schedule:
    total_steps: int  # optimizer steps of the whole run
    warmup_steps: int
    steps_per_pass: int  # optimizer steps per pass over the videos
    base_lr: float  # peak lr
    min_lr: float
    effective_batch: int  # videos per optimizer step (all ranks, all micro-steps)

    def lr_at(self, step: int) -> float:
        """lr for optimizer step `step` (0-based): linear warmup from 0, then half-cycle cosine to
        min_lr at total_steps (per iteration, as the reference's lr_sched does per fractional epoch)."""
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_schedule(cfg: TrainConfig, batches_per_pass: int, world_size: int) -> Schedule:
    """Convert nominal epochs to optimizer steps. `batches_per_pass` is the number of micro-batches
    one rank sees per pass over the videos (the sampler's batches_per_epoch)."""
    accum = cfg.optim.accum_iter
    steps_per_pass = batches_per_pass // accum
    effective = cfg.data.batch_size * world_size * accum
    if steps_per_pass < 1:
        raise ConfigError(
            [
                f"one pass over the videos gives {batches_per_pass} micro-batch(es) per rank, fewer than "
                f"optim.accum_iter ({accum}); lower data.batch_size, optim.accum_iter or the number of "
                "processes, or use more videos"
            ]
        )
    passes = cfg.schedule.epochs / cfg.data.repeated_sampling
    total = cfg.schedule.total_steps or max(1, round(passes * steps_per_pass))
    if cfg.schedule.warmup_steps is not None:
        warmup = cfg.schedule.warmup_steps
    else:
        warmup = round(cfg.schedule.warmup_epochs / cfg.data.repeated_sampling * steps_per_pass)
    warmup = min(warmup, total)
    base_lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.blr * effective / 256
    return Schedule(total, warmup, steps_per_pass, base_lr, cfg.optim.min_lr, effective)
