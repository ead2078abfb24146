"""What an evaluation config means under its task: the rules that need the task, the resolved
propagation parameters and frame size, the protocol (every setting that produced the numbers) and
its hash.

`protocol_hash(cfg)` hashes the resolved protocol only, so the same evaluation of the same
checkpoint always has the same hash wherever it runs, and `preset=rsp` hashes like the same four
values given explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from core.schema import ConfigError
from eval.config import OVERRIDABLE, PRESETS, EvalConfig, PropagationParams
from eval.registry import TASKS, get_task, registered
from eval.task import GENERATED_MARKER


def preset_problem(task: str, preset: str, key: str = "preset") -> str | None:
    """Why `preset` (the value of `key`) cannot be used with registered task `task`, or None."""
    accepted, default = get_task(task).presets, get_task(task).default_preset
    if preset == "auto" or preset in accepted:
        return None
    return f"{key} ({preset!r}) does not exist for task {task}; valid: auto (= {default}), {', '.join(accepted)}"


def problems(cfg: EvalConfig) -> list[str]:
    """Every problem of `cfg`: its field rules, then the task's (a registered name, a preset the
    task accepts, propagation parameters in range)."""
    out = cfg.field_problems()
    if cfg.task not in TASKS:
        out.append(f"task ({cfg.task!r}) is not a registered evaluation task; registered: {registered()}")
    elif problem := preset_problem(cfg.task, cfg.preset):
        out.append(problem)
    else:
        out += propagation_params(cfg).problems() + other_task_problem(cfg)
    return out


def other_task_problem(cfg: EvalConfig) -> list[str]:
    """A generated set of another task at data_root (photo_davis and davis share a layout, so one
    would be scored and labelled as the other, silently): its marker names its task."""
    marker = Path(cfg.data_root) / GENERATED_MARKER if cfg.data_root else None
    found = marker.read_text().split() if marker is not None and marker.is_file() else []
    other = found[1] if len(found) > 1 and found[0] == "generated" else None
    if other is None or other == cfg.task or other not in TASKS:
        return []
    return [
        f"data_root ({cfg.data_root}) holds the generated {other} set, not a {cfg.task} set ({marker}): point data_root "
        f"at a {cfg.task} dataset, or set task={other}"
    ]


def validate(cfg: EvalConfig) -> EvalConfig:
    """Raise `ConfigError` listing every problem of `cfg`; return it unchanged when there is none."""
    found = problems(cfg)
    if found:
        raise ConfigError(found, what="evaluation configuration")
    return cfg


def preset_name(cfg: EvalConfig) -> str:
    return get_task(cfg.task).default_preset if cfg.preset == "auto" else cfg.preset


def propagation_params(cfg: EvalConfig) -> PropagationParams:
    """The preset's values with every explicitly set override applied."""
    base = PRESETS[preset_name(cfg)]
    changes = {name: getattr(cfg, name) for name in OVERRIDABLE if getattr(cfg, name) is not None}
    return dataclasses.replace(base, **changes)


def frame_size(cfg: EvalConfig) -> int:
    return cfg.frame_size if cfg.frame_size is not None else get_task(cfg.task).default_frame_size


def protocol(cfg: EvalConfig) -> dict:
    """Every setting that produced the numbers: the resolved preset, the frame size, the videos, and
    the task's own settings. `preset` names the preset and lists the overrides (e.g. "rsp+topk=5")."""
    params = propagation_params(cfg)
    base = PRESETS[preset_name(cfg)]
    overrides = [f"{k}={getattr(params, k)}" for k in OVERRIDABLE if getattr(params, k) != getattr(base, k)]
    return {
        "task": cfg.task,
        "preset": "+".join([preset_name(cfg), *overrides]),
        **dataclasses.asdict(params),
        "frame_size": frame_size(cfg),
        "sequences": sorted(cfg.sequences),
        "dino_branch": cfg.dino_branch,
        # A head count given by hand changes the features of a checkpoint that does not state its model
        # (eval.backbone.head_count); absent when not given, so the hashes of every other protocol stay as they were.
        **({"num_heads": cfg.num_heads} if cfg.num_heads is not None else {}),
        **get_task(cfg.task).protocol_fields(cfg),
    }


def protocol_hash(cfg: EvalConfig) -> str:
    """Stable hex sha256 of the settings that change the numbers (not paths, devices or the preset's
    name: `preset=rsp` and the same four values given explicitly hash the same)."""
    payload = {k: v for k, v in protocol(cfg).items() if k != "preset"}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
