"""The one extra collective of an optimizer step, and when the host reads its result.

Every step all ranks sum one small float64 vector: a non-finite flag, the stop flag, the broken
and read video counts and the loss parts (for logging). So every rank learns, at the same step,
that some rank's loss is not finite (all raise, none hangs), that some rank was asked to stop
(all stop and checkpoint together), and the means to log.

When the host reads it (`runtime.host_sync`, docs/training.md#gpu-options):
- every_step: right after the step's backward, before the optimizer update, so a non-finite loss
  never reaches the weights. Reading waits for the step's GPU work; on the CPU that costs nothing.
- deferred: the reduction and its copy into pinned host memory are queued on the GPU; the host
  reads step N's values after it has queued step N+1, so the GPU never idles waiting for the host
  between steps. A stop request or a non-finite loss is acted on one step later, by every rank at
  the same step; `drain()` reads every pending step before each checkpoint, so a step after a
  non-finite one is never saved. The trajectory is the same in both modes: only reading moves.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from rsp.distributed import DistEnv, all_reduce_sum


def resolve_host_sync(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "deferred" if device.type == "cuda" else "every_step"
    return requested


@dataclass(frozen=True)
class StepValues:
    """What the host learns about one finished optimizer step (1-based `step`)."""

    step: int
    logging: bool  # a logging step: grad_norm and the prior's loss were computed
    nonfinite_ranks: int  # ranks whose loss parts were not all finite
    stop: bool  # some rank was asked to stop
    broken: int  # videos replaced because they could not be read (all ranks)
    read: int  # videos read, broken ones included (all ranks)
    means: dict[str, float]  # loss parts, mean over ranks
    local: dict[str, float]  # this rank's loss parts
    grad_norm: float | None  # global gradient norm (logging steps and clipping)
    data_wait: float  # s this rank waited for batches during the step


class PendingStep:
    """A step's reduced vector on its way to the host. `values()` waits only for this step's
    reduction (a CUDA event), not for work queued after it."""

    def __init__(self, step: int, logging: bool, keys: list[str], data_wait: float, world: int, readback: torch.Tensor):
        self.step, self.logging, self.keys, self.data_wait, self.world = step, logging, keys, data_wait, world
        if readback.device.type == "cuda":
            self._host = torch.empty(readback.shape, dtype=readback.dtype, pin_memory=True)
            self._host.copy_(readback, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host, self._ready = readback, None

    def values(self) -> StepValues:
        if self._ready is not None:
            self._ready.synchronize()
        v = self._host.tolist()
        n = len(self.keys)
        total, grad_norm, local = v[:4], v[4], v[5 + n :]
        return StepValues(
            step=self.step,
            logging=self.logging,
            nonfinite_ranks=int(total[0]),
            stop=total[1] > 0,
            broken=int(total[2]),
            read=int(total[3]),
            means={k: x / self.world for k, x in zip(self.keys, v[5 : 5 + n], strict=True)},
            local=dict(zip(self.keys, local, strict=True)),
            grad_norm=None if grad_norm != grad_norm else grad_norm,  # NaN marks "not measured"
            data_wait=self.data_wait,
        )


def reduce_step(
    step: int,
    logging: bool,
    sums: dict[str, torch.Tensor],
    stop: bool,
    broken: int,
    videos: int,
    grad_norm: torch.Tensor | None,
    data_wait: float,
    env: DistEnv,
    device: torch.device,
) -> PendingStep:
    """Queue the step's all-reduce. `sums`: this rank's loss parts as float64 scalars on `device`."""
    keys = sorted(sums)
    local = torch.stack([sums[k] for k in keys]) if keys else torch.zeros(0, dtype=torch.float64, device=device)
    nonfinite = (~torch.isfinite(local)).any().to(torch.float64).reshape(1)
    host = torch.tensor([float(stop), float(broken), float(videos + broken)], dtype=torch.float64)
    if device.type == "cuda":
        host = host.pin_memory()
    vector = torch.cat([nonfinite, host.to(device, non_blocking=True), local])
    total = all_reduce_sum(vector, env)  # (4 + n,) sums over ranks
    norm = torch.full((1,), float("nan"), dtype=torch.float64, device=device) if grad_norm is None else grad_norm
    readback = torch.cat([total[:4], norm.to(torch.float64).reshape(1), total[4:], local])  # (5 + 2n,)
    return PendingStep(step, logging, keys, data_wait, env.world_size, readback)


class StepReadback:
    """Pending steps in order; `push` returns the steps whose values the host reads now."""

    def __init__(self, mode: str):
        self.lag = 1 if mode == "deferred" else 0
        self._pending: deque[PendingStep] = deque()

    def push(self, pending: PendingStep) -> list[StepValues]:
        self._pending.append(pending)
        out = []
        while len(self._pending) > self.lag:
            out.append(self._pending.popleft().values())
        return out

    def drain(self) -> list[StepValues]:
        out = [p.values() for p in self._pending]
        self._pending.clear()
        return out
