"""Everything that can be checked before a job is queued, checked in one place, all at once.

`problems(cfg)` returns every problem (never just the first); `validate(cfg)` raises them together
as a ConfigError. Each message names the key, the bad value, the rule and the fix. Rules:
- every field rule of the training config (rsp.config), the cluster and the evaluation sections,
  including settings that would be silently ignored (a SLURM partition on the local backend, ...);
- the effective batch (nodes x processes x data.batch_size x optim.accum_iter) against the recipe;
- the data (launch/datacheck.py): the labels file's videos exist (one directory listing per folder),
  are listed once, the batch fits the dataset (generated ones included), data.max_gap suits the
  labelled frame counts;
- each evaluation task's dataset layout and first frames (the task's check_data), and evaluation
  overrides that contradict the model (num_heads);
- the output root (and the data root for generated data) is writable: a read-only filesystem fails
  here, not hours later in the queue;
- the time limit leaves room for start-up, one step and the checkpoint write after the signal;
- local/debug backends get shapes this machine can run; SLURM judges the resources itself
  (`sbatch --test-only`, which queues nothing);
- what the run asks of its devices, where it can be known (launch.devices: precision, compile,
  whether the batch can fit the GPU); warnings (e.g. compile on a CPU run) are logged.

`warnings(cfgs)` lists what is allowed but costs something the user may not expect (printed at
submit, never blocking): a requeue budget of 0 (the run fails at the first such end instead of
resuming), a stop signal that can come within the first minute of an attempt, and a SLURM that
preempts without sending the stop signal (docs/requeue.md).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

from eval.config import DEVICES as EVAL_DEVICES
from eval.protocol import preset_problem
from eval.protocol import problems as eval_problems
from eval.tasks import TASKS, get_task, registered
from launch.backends import BACKENDS, slurm_config
from launch.config import ClusterConfig, EvaluationConfig, RunConfig, train_config
from launch.datacheck import data_notes, data_problems, survey, writable
from launch.devices import device_problems, device_warnings
from launch.evaluations.expected import task_eval_config
from rsp.architectures import MODELS
from rsp.config import ModelConfig
from rsp.model import create_model
from rsp.optim import resolve_schedule
from rsp.schema import ConfigError, from_dict, ignored, to_dict
from rsp.video import DataError

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
# Evaluation config fields each evaluation job sets itself (launch/evaluations/expected.py): an override would silently
# replace them (another checkpoint, another dataset) or contradict the key that sets them.
JOB_SET = {
    "checkpoint": "every milestone checkpoint of the run is evaluated; remove it",
    "checkpoint_format": "the run's checkpoints are read in this project's format; remove it",
    "trust_checkpoint": "the run's checkpoints need no trust; remove it",
    "output_dir": "results go to the run directory (docs/formats.md); remove it",
    "task": "the task is the key it is under; remove it",
    "data_root": "set evaluation.data_roots.<task> instead",
    "preset": "set evaluation.presets.<task> instead",
    "device": "set evaluation.device instead",
}
SLURM_ONLY = ("partition", "account", "qos", "constraint", "exclusive", "extra_sbatch", "mem_gb")  # cluster.* only sbatch reads
log = logging.getLogger(__name__)

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
    for flag in sorted(set(c.extra_sbatch) & set(MANAGED_SBATCH)):
        out.append(
            f"cluster.extra_sbatch.{flag} ({c.extra_sbatch[flag]}) is an sbatch option the launcher writes itself; "
            f"set {MANAGED_SBATCH[flag]} instead"
        )
    if c.backend in ("local", "debug"):
        for key in SLURM_ONLY:
            out += ignored(c, "cluster", key, f"cluster={c.backend} runs on this machine", "use cluster=slurm, or drop it")
    return out


def batch_problems(cfg: RunConfig) -> list[str]:
    c, want = cfg.cluster, cfg.optim.effective_batch
    have = c.world_size * cfg.data.batch_size * cfg.optim.accum_iter
    if want is None or have == want or want < 1 or have < 1:  # values out of range are their own rules' to report
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


def known_total_steps(cfg: RunConfig) -> int | None:
    """The run's length in optimizer steps, when it can be known before the run starts:
    schedule.total_steps, or the schedule resolved against the number of videos its labels file
    lists (or it will generate). None when neither is known (no data yet)."""
    if cfg.schedule.total_steps:
        return cfg.schedule.total_steps
    d, world = cfg.data, cfg.cluster.world_size
    videos = d.synthetic_videos or None
    if videos is None and d.root and Path(d.root).is_dir():
        try:
            videos = survey(Path(d.root), d.labels).videos
        except (DataError, OSError):  # reported by data_problems
            return None
    if not isinstance(videos, int) or world < 1 or d.batch_size < 1 or videos < d.batch_size * world:
        return None
    try:
        return resolve_schedule(train_config(cfg), videos // (d.batch_size * world), world).total_steps
    except ConfigError:  # the batch does not fit the data: reported by data_problems
        return None


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
    if c.backend == "debug":
        return []
    out = [
        f"cluster.{key}=0: the run is marked failed at {end} instead of resuming from its newest checkpoint "
        f"(`--retry-failed` resumes it); set cluster.{key} >= 1 to requeue"
        for key, end in BUDGET_ENDS.items()
        if getattr(c, key) == 0
    ]
    window = c.time_minutes * 60 - c.signal_delay_s
    if c.backend == "slurm" and MIN_TRAINING_S <= window < SIGNAL_TICK_S + 60:
        out.append(
            f"cluster.signal_delay_s ({c.signal_delay_s}) leaves {window} s of cluster.time_minutes ({c.time_minutes}) "
            f"before the stop signal, which SLURM may send up to {SIGNAL_TICK_S} s early: attempts may stop after "
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


def warnings(cfgs: Sequence[RunConfig]) -> list[str]:
    """The warnings of a run or a sweep's runs, each once (SLURM's configuration is asked once)."""
    slurm = None
    if any(cfg.cluster.backend == "slurm" for cfg in cfgs):
        slurm = slurm_config()
    return list(dict.fromkeys(w for cfg in cfgs for w in cluster_warnings(cfg.cluster, slurm)))


def evaluation_problems(e: EvaluationConfig, model_name: str = "") -> list[str]:
    out = [
        f"evaluation.tasks entry {t!r} is not a registered evaluation task; registered: {registered()}"
        for t in e.tasks
        if t not in TASKS
    ]
    out += [
        f"evaluation.tasks lists {t} twice ({e.tasks}); list each task once"
        for t in sorted({t for t in e.tasks if e.tasks.count(t) > 1})
    ]
    for task, fields in e.overrides.items():
        for key in sorted(set(fields) & set(JOB_SET) if isinstance(fields, dict) else ()):
            out.append(f"evaluation.overrides.{task}.{key} ({fields[key]}) is set by the evaluation job; {JOB_SET[key]}")
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
        elif e.synthetic and (reason := TASKS[task].generated_problem(root)):
            out.append(f"evaluation.data_roots.{task}: {reason}")
    out += protocol_problems(e, model_name)
    out += [f"evaluation.{k} ({getattr(e, k)}) must be >= 1" for k in ("cpus_per_task", "time_minutes") if getattr(e, k) < 1]
    if e.gpus < 0:
        out.append(f"evaluation.gpus ({e.gpus}) must be >= 0 (0: evaluate on CPUs)")
    if e.mem_gb is not None and e.mem_gb <= 0:
        out.append(f"evaluation.mem_gb ({e.mem_gb}) must be > 0, or null for the partition's default")
    if e.device not in EVAL_DEVICES:
        out.append(f"evaluation.device ({e.device!r}) must be one of {', '.join(EVAL_DEVICES)}")
    if e.signal_delay_s < 10:
        out.append(f"evaluation.signal_delay_s ({e.signal_delay_s}) must be >= 10 s: time to stop and be requeued")
    elif e.time_minutes * 60 < e.signal_delay_s + MIN_TRAINING_S + SIGNAL_TICK_S:
        out.append(
            f"evaluation.signal_delay_s ({e.signal_delay_s}) leaves no time to evaluate within evaluation.time_minutes "
            f"({e.time_minutes} = {e.time_minutes * 60} s): SLURM sends the stop signal signal_delay_s before the limit, "
            f"up to {SIGNAL_TICK_S} s early; raise evaluation.time_minutes or lower evaluation.signal_delay_s"
        )
    for key in ("max_requeues", "max_resubmissions"):
        if getattr(e, key) < 0:
            out.append(f"evaluation.{key} ({getattr(e, key)}) must be >= 0")
    return out


def protocol_problems(e: EvaluationConfig, model_name: str = "") -> list[str]:
    """The evaluation config of each task, built as the evaluation jobs build it (stand-in
    checkpoint: the run's own) and checked by eval's own rules; an existing dataset (not one to be
    generated) gets the task's layout checks."""
    out = []
    for task in filter(TASKS.__contains__, e.tasks):
        if problem := preset_problem(task, e.presets.get(task, "auto"), f"evaluation.presets.{task}"):
            out.append(problem)
            continue
        try:
            ecfg = task_eval_config(e, task, checkpoint="<checkpoint>")
        except (ConfigError, TypeError) as exc:
            out.append(f"evaluation.overrides.{task}: {exc}")
            continue
        found = [p for p in eval_problems(ecfg) if not p.startswith("data_root is empty")]  # reported above
        heads = MODELS[model_name].num_heads if model_name in MODELS else None
        if ecfg.num_heads is not None and heads is not None and ecfg.num_heads != heads:
            found.append(
                f"num_heads ({ecfg.num_heads}) contradicts model.name={model_name} ({heads} heads), which the run's "
                f"checkpoints state; drop evaluation.overrides.{task}.num_heads"
            )
        if not e.synthetic and ecfg.data_root and Path(ecfg.data_root).is_dir():
            found += get_task(task).check_data(ecfg, False)
        out += [f"evaluation ({task}): {p}" for p in found]
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
    if not cfg.name.strip():
        out.append(f"name ({cfg.name!r}) is empty; pass name=NAME (the readable part of the run directory's name)")
    out += evaluation_problems(cfg.evaluation, cfg.model.name) + time_problems(cfg, checkpoint_bytes) + device_problems(cfg)
    if not cfg.output_root.strip():
        out.append("output_root is empty; pass output_root=DIR (runs live in DIR/<name>-<id>/)")
    elif "\n" in cfg.output_root or "\r" in cfg.output_root:
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
    for note in data_notes(cfg):
        log.warning("%s", note)
    for warning in device_warnings(cfg):
        log.warning("%s", warning)
    return cfg


def absolutize(cfg: RunConfig, base: Path) -> RunConfig:
    """Relative paths in the config are relative to where the user submits; jobs run elsewhere."""

    def fix(path: str) -> str:
        path = os.path.expanduser(path)  # a quoted "~/x" reaches the config unexpanded
        return path if not path or os.path.isabs(path) else str((base / path).resolve())

    cfg.output_root = fix(cfg.output_root)
    cfg.data.root = fix(cfg.data.root)
    cfg.evaluation.data_roots = {k: fix(v) for k, v in cfg.evaluation.data_roots.items()}
    return cfg
