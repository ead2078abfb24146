"""Submit-time rules of the cluster section: the resources a run asks for, its time limit against
its checkpoint, and the warnings about what is allowed but costs something the user may not
expect. What the scheduler itself says of the job script (SLURM: `sbatch --test-only`, which queues
nothing) is the backend's to answer (launch.backends, `Backend.refusals`), asked by
launch.validation.validate once these rules pass.

Rules (each message names the key, the bad value, the rule and the fix):
- every field in range; one process per GPU; cluster.after only on SLURM, as job ids;
- local/debug backends get shapes this machine can run, and SLURM-only keys there are refused
  (they would be silently ignored); extra_sbatch never repeats an option the launcher writes;
- the time limit leaves room for start-up, one step and the checkpoint write after the signal.

Warnings (printed at submit, never blocking): a requeue budget of 0 (the run fails at the first such
end instead of resuming), a stop signal that can come within the first minute of an attempt, and a
SLURM that preempts without sending the stop signal (docs/requeue.md).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import torch

from core.schema import from_dict, ignored, to_dict
from launch.backends import BACKENDS, backend_class
from launch.config import ClusterConfig, RunConfig
from rsp.config import ModelConfig
from rsp.model import create_model

# sbatch options the launcher writes from its own fields (launch/backends.py): in extra_sbatch they would contradict them.
MANAGED_SBATCH = {
    **dict.fromkeys(("partition", "p"), "cluster.partition"),
    **dict.fromkeys(("account", "A"), "cluster.account"),
    "qos": "cluster.qos",
    **dict.fromkeys(("constraint", "C"), "cluster.constraint"),
    **dict.fromkeys(("nodes", "N"), "cluster.nodes"),
    **dict.fromkeys(("ntasks-per-node", "ntasks_per_node", "ntasks", "n"), "cluster.tasks_per_node"),
    **dict.fromkeys(("gpus-per-node", "gpus_per_node", "gres", "gpus", "G"), "cluster.gpus_per_node"),
    **dict.fromkeys(("cpus-per-task", "cpus_per_task", "c"), "cluster.cpus_per_task"),
    "mem": "cluster.mem_gb",
    **dict.fromkeys(("time", "t"), "cluster.time_minutes"),
    "signal": "cluster.signal_delay_s",
    "exclusive": "cluster.exclusive",
    **dict.fromkeys(("dependency", "d"), "cluster.after"),
    **dict.fromkeys(
        ("job-name", "J", "output", "o", "error", "e", "requeue", "array", "a"),
        "nothing (the launcher names, logs and requeues jobs)",
    ),
}
SLURM_ONLY = ("partition", "account", "qos", "constraint", "exclusive", "extra_sbatch", "mem_gb")  # cluster.* only sbatch reads

CHECKPOINT_WRITE_MB_S = 100.0  # pessimistic shared-filesystem write speed for the time-limit check
MIN_TRAINING_S = 10  # an attempt must have at least this long before its stop signal
SIGNAL_TICK_S = 30  # SLURM checks time limits on a 30 s tick: the stop signal can come this much early
BUDGET_ENDS = {
    "max_timeouts": "its first time limit",
    "max_preemptions": "its first preemption",
    "max_failures": "its first crash",
}


def cluster_problems(c: ClusterConfig) -> list[str]:
    out = []
    if c.backend not in BACKENDS:
        out.append(f"cluster.backend ({c.backend!r}) must be one of {', '.join(BACKENDS)}")
    for key in ("nodes", "cpus_per_task", "time_minutes", "array_parallelism"):
        if getattr(c, key) < 1:
            out.append(f"cluster.{key} ({getattr(c, key)}) must be >= 1")
    for key in ("gpus_per_node", "max_preemptions", "max_timeouts", "max_failures"):
        if getattr(c, key) < 0:
            out.append(f"cluster.{key} ({getattr(c, key)}) must be >= 0")
    if c.tasks_per_node is not None and c.tasks_per_node < 1:
        out.append(f"cluster.tasks_per_node ({c.tasks_per_node}) must be >= 1 or null")
    if c.gpus_per_node > 0 and c.tasks_per_node not in (None, c.gpus_per_node):
        out.append(
            f"cluster.tasks_per_node ({c.tasks_per_node}) must equal cluster.gpus_per_node ({c.gpus_per_node}): "
            "one process per GPU; leave tasks_per_node null"
        )
    if c.mem_gb is not None and c.mem_gb <= 0:
        out.append(f"cluster.mem_gb ({c.mem_gb}) must be > 0 or null")
    if c.signal_delay_s < 10:
        out.append(f"cluster.signal_delay_s ({c.signal_delay_s}) must be >= 10 s to finish a step and checkpoint")
    backend = backend_class(c.backend)
    if c.after and not backend.holds_for_dependencies:
        out.append(f"cluster.after ({c.after}) needs cluster=slurm: only a scheduler can hold a job until others end")
    elif c.after and not all(part.strip().replace("_", "").isdigit() for part in c.after.split(",")):
        out.append(f"cluster.after ({c.after!r}) must be SLURM job ids separated by commas, e.g. 1234,1235")
    if backend.runs_here and c.nodes != 1:
        out.append(
            f"cluster.nodes ({c.nodes}) must be 1 with cluster={c.backend} (one machine); use cluster=slurm for multi-node runs"
        )
    if backend.in_process and c.world_size != 1:
        out.append(
            f"cluster={c.backend} runs one process in this interpreter; "
            f"set cluster.tasks_per_node=1 (got {c.world_size} processes)"
        )
    if backend.counts_gpus_here and c.gpus_per_node:
        visible = torch.cuda.device_count()
        if c.gpus_per_node > visible:
            out.append(f"cluster.gpus_per_node ({c.gpus_per_node}) exceeds the {visible} GPU(s) of this machine")
    for flag in sorted(set(c.extra_sbatch) & set(MANAGED_SBATCH)):
        out.append(
            f"cluster.extra_sbatch.{flag} ({c.extra_sbatch[flag]}) is an sbatch option the launcher writes itself; "
            f"set {MANAGED_SBATCH[flag]} instead"
        )
    if backend.runs_here:
        for key in SLURM_ONLY:
            out += ignored(c, "cluster", key, f"cluster={c.backend} runs on this machine", "use cluster=slurm, or drop it")
    return out


def time_problems(cfg: RunConfig, checkpoint_bytes: float) -> list[str]:
    c = cfg.cluster
    write_s = checkpoint_bytes / (CHECKPOINT_WRITE_MB_S * 2**20)
    out = []
    if c.signal_delay_s < 2 * write_s + 10:
        out.append(
            f"cluster.signal_delay_s ({c.signal_delay_s}) leaves too little time to finish a step and write a "
            f"{checkpoint_bytes / 2**30:.1f} GiB checkpoint (~{write_s:.0f} s at {CHECKPOINT_WRITE_MB_S:.0f} MB/s); "
            f"raise it to at least {int(2 * write_s + 10)}"
        )
    if c.time_minutes * 60 < c.signal_delay_s + MIN_TRAINING_S:
        out.append(
            f"cluster.signal_delay_s ({c.signal_delay_s}) must be at least {MIN_TRAINING_S} s shorter than "
            f"cluster.time_minutes ({c.time_minutes} = {c.time_minutes * 60} s): the stop signal comes signal_delay_s "
            "before the limit, which leaves no time to train; raise cluster.time_minutes or lower cluster.signal_delay_s"
        )
    return out


def cluster_warnings(c: ClusterConfig, slurm: dict[str, str] | None = None) -> list[str]:
    """Allowed, but probably not what the user wants. `slurm`: `scontrol show config` (SLURM backend)."""
    backend = backend_class(c.backend)
    if not backend.requeues:  # the budgets and the stop signal are the requeue's
        return []
    out = [
        f"cluster.{key}=0: the run is marked failed at {end} instead of resuming from its newest checkpoint "
        f"(`--retry-failed` resumes it); set cluster.{key} >= 1 to requeue"
        for key, end in BUDGET_ENDS.items()
        if getattr(c, key) == 0
    ]
    window = c.time_minutes * 60 - c.signal_delay_s
    if backend.signal_early_s and MIN_TRAINING_S <= window < backend.signal_early_s + 60:
        out.append(
            f"cluster.signal_delay_s ({c.signal_delay_s}) leaves {window} s of cluster.time_minutes ({c.time_minutes}) "
            f"before the stop signal, which SLURM may send up to {backend.signal_early_s} s early: attempts may stop after "
            "their first step; raise cluster.time_minutes or lower cluster.signal_delay_s"
        )
    if slurm:
        out += preemption_warnings(slurm)
    return out


def preemption_warnings(slurm: dict[str, str]) -> list[str]:
    """A SLURM that preempts jobs must send them the stop signal, or a preemption is a kill."""
    kind, mode = slurm.get("PreemptType", "preempt/none"), slurm.get("PreemptMode", "OFF")
    if kind == "preempt/none" or mode.upper().startswith("OFF"):
        return []
    if "preempt_send_user_signal" in slurm.get("SlurmctldParameters", ""):
        return []
    return [
        f"this SLURM preempts jobs (PreemptType={kind}, PreemptMode={mode}) without sending them the stop signal "
        "(SlurmctldParameters lacks preempt_send_user_signal): a preempted attempt gets SIGTERM instead and is killed "
        "after its partition's GraceTime; it checkpoints if it can do so within that time, else it resumes from its "
        "newest checkpoint and the steps since are redone. Ask the admins for SlurmctldParameters=preempt_send_user_signal"
    ]


def scheduler_warnings(cfgs: Sequence[RunConfig]) -> list[str]:
    """The warnings of a run or a sweep's runs, each once (each scheduler's configuration is asked once)."""
    configs = {cls: cls.scheduler_config() for cls in {backend_class(cfg.cluster.backend) for cfg in cfgs}}
    return list(
        dict.fromkeys(w for cfg in cfgs for w in cluster_warnings(cfg.cluster, configs[backend_class(cfg.cluster.backend)]))
    )


def checkpoint_size(cfg: RunConfig) -> float:
    """Bytes of a checkpoint: model + two AdamW moments in fp32, counted on the meta device (no
    memory). 0 when the model config is invalid (reported by its own rules). Cached per distinct
    model config: even on the meta device an L/16 takes ~0.1 s to build, and a sweep asks per run."""
    return _checkpoint_size(json.dumps(to_dict(cfg.model), sort_keys=True))


@functools.cache
def _checkpoint_size(model_json: str) -> float:
    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in create_model(from_dict(ModelConfig, json.loads(model_json))).parameters())
    except ValueError:
        return 0.0
    return params * 4 * 3
