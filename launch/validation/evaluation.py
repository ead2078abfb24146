"""Submit-time rules of the evaluation section: registered tasks, each listed once; every task's
dataset (existing, or a writable root to generate it in); the evaluation config of each task built
as the evaluation jobs build it and checked by eval's own rules (presets, overrides, the model's
number of heads), with the task's layout checks on an existing dataset; the evaluation jobs'
resources and time limit."""

from __future__ import annotations

from pathlib import Path

from core.atomicio import writable
from core.schema import ConfigError
from eval.config import DEVICES as EVAL_DEVICES
from eval.protocol import preset_problem
from eval.protocol import problems as eval_problems
from eval.registry import TASKS, get_task, registered
from launch.config import EvaluationConfig
from launch.evaluations.expected import task_eval_config
from launch.validation.cluster import MIN_TRAINING_S, SIGNAL_TICK_S
from rsp.architectures import MODELS

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
        except ConfigError as exc:  # a key EvalConfig does not know, a value of the wrong type
            out += [f"evaluation.overrides.{task}.{p}" for p in exc.problems]
            continue
        except TypeError as exc:
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
