"""Who this process is in a distributed run, and the few collectives the trainer needs.

`DistEnv` is a plain value passed down to the code that needs it; nothing asks a global helper
who it is. A run that is told it has several processes either rendezvouses with all of them
within the timeout or raises: it never falls back to training alone (docs/training.md#distributed-training).

Ports: with `rendezvous_file` set (the launcher does this), rank 0 binds a port the OS picks and
publishes it through that file on the shared filesystem, so two jobs sharing a node can never
collide on MASTER_PORT; without it, MASTER_PORT is used as given (torchrun).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from core.atomicio import atomic_write_text

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RendezvousError(RuntimeError):
    """The processes of a run could not find each other; the message says who waited for whom."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    rendezvous_file: str | None = None  # rank 0 publishes its OS-chosen port here (see module doc)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> DistEnv:
        """Read torchrun / submitit's variables. None set: a single process. Some set: all must be
        (a half-configured environment is an error, not a silent single-process run)."""
        present = [v for v in ENV_VARS if v in environ]
        if not present:
            return cls()
        required = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        missing = [v for v in required if v not in environ]
        if missing:
            raise RendezvousError(
                f"distributed environment is incomplete: {', '.join(present)} set but {', '.join(missing)} "
                "missing; launch with torchrun or the project's launcher, or unset them all for one process"
            )
        env = cls(
            rank=int(environ["RANK"]),
            world_size=int(environ["WORLD_SIZE"]),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE", 1)),
            master_addr=environ["MASTER_ADDR"],
            master_port=int(environ["MASTER_PORT"]),
        )
        if not 0 <= env.rank < env.world_size:
            raise RendezvousError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}")
        return env


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda but no CUDA device is visible; use runtime.device=cpu or auto")
    torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    return torch.device("cuda", torch.cuda.current_device())


def init_process_group(env: DistEnv, device: torch.device, timeout_minutes: float) -> None:
    """gloo on CPU, nccl on GPU; a finite timeout for the rendezvous and every collective."""
    if not env.distributed:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    try:
        if env.rendezvous_file:
            store = file_published_store(env, timeout)
            kwargs = {"store": store}
        else:
            kwargs = {"init_method": f"tcp://{env.master_addr}:{env.master_port}"}
        dist.init_process_group(
            backend=backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
            **kwargs,
        )
    except Exception as exc:  # torch raises several types (DistStoreError, RuntimeError, ...)
        raise RendezvousError(
            f"rank {env.rank}/{env.world_size} could not rendezvous at {env.master_addr}:{env.master_port} "
            f"within {timeout_minutes} min ({type(exc).__name__}: {exc}); check that every rank was started "
            "and that MASTER_ADDR resolves from every node"
        ) from exc


def file_published_store(env: DistEnv, timeout: datetime.timedelta) -> dist.TCPStore:
    """Rank 0 serves a TCPStore on a free port (port 0: the OS chooses) and writes the port to
    `env.rendezvous_file`; the other ranks wait for that file, then connect."""
    path = Path(env.rendezvous_file)
    if env.rank == 0:
        store = dist.TCPStore(env.master_addr, 0, env.world_size, True, timeout, wait_for_workers=False)
        atomic_write_text(path, json.dumps({"addr": env.master_addr, "port": store.port}))
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 never published its port in {path}")
        time.sleep(0.2)
    port = json.loads(path.read_text())["port"]
    return dist.TCPStore(env.master_addr, port, env.world_size, False, timeout)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a small float64 vector over ranks (returns a copy; a no-op with one process)."""
    out = values.clone()
    if env.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_objects(obj, env: DistEnv) -> list:
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def cpu_threads_per_process(env: DistEnv) -> int:
    """Share the CPUs this process may use among the ranks on its node (no oversubscription)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, available // max(1, env.local_world_size))
