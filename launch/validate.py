"""Everything that can be checked before a job is queued, checked in one place, all at once.

`problems(cfg)` returns every problem (never just the first); `validate(cfg)` raises them together
as a ConfigError. Each message names the key, the bad value, the rule and the fix. Rules:
- every field rule of the training config (rsp.config), the cluster and the evaluation sections;
- the effective batch (nodes x processes x data.batch_size x optim.accum_iter) against the recipe;
- the data root exists and holds a labels file (unless a synthetic dataset will be generated);
- the output root (and the data root for generated data) is writable: a read-only filesystem fails
  here, not hours later in the queue;
- the time limit leaves room for start-up, one step and the checkpoint write after the signal;
- local/debug backends get shapes this machine can run; SLURM judges the resources itself
  (`sbatch --test-only`, which queues nothing).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from eval.protocol import preset_problem
from eval.protocol import problems as eval_problems
from eval.tasks import TASKS, registered
from launch.backends import BACKENDS
from launch.config import ClusterConfig, EvaluationConfig, RunConfig, train_config
from launch.evaluations.expected import task_eval_config
from rsp.config import ModelConfig
from rsp.model import create_model
from rsp.optim import resolve_schedule
from rsp.schema import ConfigError, from_dict, to_dict
from rsp.video import DataError, read_labels, resolve_labels_file

CHECKPOINT_WRITE_MB_S = 100.0  # pessimistic shared-filesystem write speed for the time-limit check
MIN_TRAINING_S = 10  # an attempt must have at least this long before its stop signal


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
    if c.gpus_per_node and c.tasks_per_node not in (None, c.gpus_per_node):
        out.append(
            f"cluster.tasks_per_node ({c.tasks_per_node}) must equal cluster.gpus_per_node ({c.gpus_per_node}): "
            "one process per GPU; leave tasks_per_node null"
        )
    if c.mem_gb is not None and c.mem_gb <= 0:
        out.append(f"cluster.mem_gb ({c.mem_gb}) must be > 0 or null")
    if c.signal_delay_s < 10:
        out.append(f"cluster.signal_delay_s ({c.signal_delay_s}) must be >= 10 s to finish a step and checkpoint")
    if c.after and c.backend != "slurm":
        out.append(f"cluster.after ({c.after}) needs cluster=slurm: only a scheduler can hold a job until others end")
    elif c.after and not all(part.strip().replace("_", "").isdigit() for part in c.after.split(",")):
        out.append(f"cluster.after ({c.after!r}) must be SLURM job ids separated by commas, e.g. 1234,1235")
    if c.backend in ("local", "debug") and c.nodes != 1:
        out.append(
            f"cluster.nodes ({c.nodes}) must be 1 with cluster={c.backend} (one machine); use cluster=slurm for multi-node runs"
        )
    if c.backend == "debug" and c.world_size != 1:
        out.append(
            f"cluster=debug runs one process in this interpreter; set cluster.tasks_per_node=1 (got {c.world_size} processes)"
        )
    if c.backend == "local" and c.gpus_per_node:
        visible = torch.cuda.device_count()
        if c.gpus_per_node > visible:
            out.append(f"cluster.gpus_per_node ({c.gpus_per_node}) exceeds the {visible} GPU(s) of this machine")
    return out


def batch_problems(cfg: RunConfig) -> list[str]:
    c, want = cfg.cluster, cfg.optim.effective_batch
    have = c.world_size * cfg.data.batch_size * cfg.optim.accum_iter
    if want is None or have == want:
        return []
    per_step = c.world_size * cfg.data.batch_size
    fix = (
        f"set optim.accum_iter={want // per_step}"
        if want % per_step == 0
        else f"choose data.batch_size and optim.accum_iter so that {c.world_size} x batch x accum = {want}"
    )
    return [
        f"effective batch = {c.nodes} node(s) x {c.processes_per_node} process(es) x data.batch_size {cfg.data.batch_size} "
        f"x optim.accum_iter {cfg.optim.accum_iter} = {have} videos, but the recipe's optim.effective_batch is {want}; {fix} "
        "(or set optim.effective_batch=null to train with a different batch on purpose)"
    ]


@functools.cache
def writable(path: Path) -> str | None:
    """None when `path` could be created and written, else why not. Probes the nearest existing
    ancestor with a temporary file, so a refused submission leaves no directory behind.
    Cached: a sweep checks each distinct path once."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".rsp-write-test-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


@functools.cache
def count_videos(root: Path, labels: str) -> int | str:
    """Number of videos the labels file lists, or the reason there is none (cached per sweep)."""
    try:
        return len(read_labels(resolve_labels_file(root, labels)))
    except DataError as exc:
        return str(exc)


def known_total_steps(cfg: RunConfig) -> int | None:
    """The run's length in optimizer steps, when it can be known before the run starts:
    schedule.total_steps, or the schedule resolved against the number of videos its labels file
    lists (or it will generate). None when neither is known (no data yet)."""
    if cfg.schedule.total_steps:
        return cfg.schedule.total_steps
    d, world = cfg.data, cfg.cluster.world_size
    videos = d.synthetic_videos or (count_videos(Path(d.root), d.labels) if d.root and Path(d.root).is_dir() else None)
    if not isinstance(videos, int) or world < 1 or d.batch_size < 1 or videos < d.batch_size * world:
        return None
    try:
        return resolve_schedule(train_config(cfg), videos // (d.batch_size * world), world).total_steps
    except ConfigError:  # the batch does not fit the data: reported by data_problems
        return None


def data_problems(cfg: RunConfig) -> list[str]:
    d = cfg.data
    if not d.root:
        return ["data.root is not set; pass data.root=/path/to/dataset (see `python -m rsp.prepare --help`)"]
    root = Path(d.root)
    if d.synthetic_videos:
        reason = writable(root)
        return [] if reason is None else [f"data.root ({root}) cannot hold the generated videos: {reason}"]
    if not root.is_dir():
        return [f"data.root ({root}) does not exist; prepare the dataset there or point data.root at it"]
    found = count_videos(root, d.labels)
    if isinstance(found, str):
        return [found]
    per_step = d.batch_size * cfg.cluster.world_size * cfg.optim.accum_iter
    if found < per_step:
        return [f"data.root ({root}) lists {found} videos, fewer than one optimizer step needs ({per_step})"]
    return []


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
            f"cluster.time_minutes ({c.time_minutes}) leaves no time to train: the stop signal comes "
            f"cluster.signal_delay_s={c.signal_delay_s} s before the limit; raise cluster.time_minutes"
        )
    return out


def evaluation_problems(e: EvaluationConfig) -> list[str]:
    out = [
        f"evaluation.tasks entry {t!r} is not a registered evaluation task; registered: {registered()}"
        for t in e.tasks
        if t not in TASKS
    ]
    for key, per_task in (("presets", e.presets), ("data_roots", e.data_roots), ("overrides", e.overrides)):
        out += [
            f"evaluation.{key}.{t} names {t!r}, which is not a registered evaluation task; registered: {registered()}"
            for t in per_task
            if t not in TASKS
        ]
    for task in filter(TASKS.__contains__, e.tasks):
        root = e.data_roots.get(task, "")
        if not root:
            out.append(
                f"evaluation.data_roots.{task} is not set; point it at the {task} dataset or drop {task} from evaluation.tasks"
            )
        elif not e.synthetic and not Path(root).is_dir():
            out.append(
                f"evaluation.data_roots.{task} ({root}) does not exist; "
                f"prepare it (python -m eval.prepare {task}) or set evaluation.synthetic=true"
            )
        elif e.synthetic and (reason := writable(Path(root))):
            out.append(f"evaluation.data_roots.{task} ({root}) cannot hold a generated benchmark: {reason}")
    out += protocol_problems(e)
    if e.cpus_per_task < 1 or e.gpus < 0 or e.time_minutes < 1:
        out.append("evaluation.cpus_per_task and evaluation.time_minutes must be >= 1, evaluation.gpus >= 0")
    return out


def protocol_problems(e: EvaluationConfig) -> list[str]:
    """The evaluation config of each task, built as the evaluation jobs build it (stand-in
    checkpoint and data root: those are checked above) and checked by eval's own rules."""
    out = []
    for task in filter(TASKS.__contains__, e.tasks):
        if problem := preset_problem(task, e.presets.get(task, "auto"), f"evaluation.presets.{task}"):
            out.append(problem)
            continue
        try:
            ecfg = task_eval_config(e, task, checkpoint="<checkpoint>", data_root="<root>")
        except (ConfigError, TypeError) as exc:
            out.append(f"evaluation.overrides.{task}: {exc}")
            continue
        out += [f"evaluation ({task}): {p}" for p in eval_problems(ecfg)]
    return out


def slurm_problems(script: str) -> list[str]:
    """Ask SLURM whether it could run the job (`sbatch --test-only` queues nothing)."""
    if shutil.which("sbatch") is None:
        return ["cluster=slurm but `sbatch` is not on PATH; submit from a SLURM login node, or use cluster=local"]
    proc = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        return []
    reason = " ".join(line for line in proc.stderr.splitlines() if "error" in line.lower()) or proc.stderr.strip()
    if any(s in reason for s in ("fetch_config", "Unable to contact", "Zero Bytes were transmitted", "Connection refused")):
        return [
            f"cannot reach the SLURM controller ({reason}); check SLURM_CONF, "
            "or start the local test cluster with `python -m launch.local_cluster start`"
        ]
    return [
        f"SLURM rejects the requested resources: {reason}; adjust cluster.* (partition, nodes, gpus_per_node, time_minutes, ...)"
    ]


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


def problems(cfg: RunConfig, checkpoint_bytes: float | None = None, sbatch_script: str | None = None) -> list[str]:
    if checkpoint_bytes is None:
        checkpoint_bytes = checkpoint_size(cfg)
    out = cfg.problems() + cluster_problems(cfg.cluster) + batch_problems(cfg) + data_problems(cfg)
    out += evaluation_problems(cfg.evaluation) + time_problems(cfg, checkpoint_bytes)
    if "\n" in cfg.output_root or "\r" in cfg.output_root:
        out.append(f"output_root ({cfg.output_root!r}) contains a line break; choose a path without one")
    elif (reason := writable(Path(cfg.output_root))) is not None:
        out.append(f"output_root ({cfg.output_root}) is not writable: {reason}; choose another output_root")
    if sbatch_script is not None and not out:
        out += slurm_problems(sbatch_script)
    return out


def validate(cfg: RunConfig, checkpoint_bytes: float | None = None, sbatch_script: str | None = None) -> RunConfig:
    found = problems(cfg, checkpoint_bytes, sbatch_script)
    if found:
        raise ConfigError(found, what="run configuration (nothing was submitted)")
    return cfg


def absolutize(cfg: RunConfig, base: Path) -> RunConfig:
    """Relative paths in the config are relative to where the user submits; jobs run elsewhere."""

    def fix(path: str) -> str:
        return path if not path or os.path.isabs(path) else str((base / path).resolve())

    cfg.output_root = fix(cfg.output_root)
    cfg.data.root = fix(cfg.data.root)
    cfg.evaluation.data_roots = {k: fix(v) for k, v in cfg.evaluation.data_roots.items()}
    return cfg
