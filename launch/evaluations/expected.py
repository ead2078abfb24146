"""Which evaluations a run should have, and where each one lives: the run's evaluation settings
mapped onto each task's eval.config.EvalConfig, one directory per (step, task, protocol hash).

Torch-free: the status table and the evaluation teardown use it.
"""

from __future__ import annotations

from pathlib import Path

from core.schema import from_dict
from eval.config import EvalConfig
from eval.protocol import protocol_hash
from launch.config import EvaluationConfig, RunConfig
from launch.rundir import RunDirectory
from rsp.manifest import Manifest


def task_eval_config(e: EvaluationConfig, task: str, **paths: str) -> EvalConfig:
    """The EvalConfig of `task` under the evaluation settings `e`. `paths` (checkpoint, output_dir,
    data_root) set or replace the runtime-only paths; submit-time validation builds the config here
    too, with stand-in paths, so every field it sets is checked before anything runs."""
    base = {
        "checkpoint_format": "ours",
        "task": task,
        "preset": e.presets.get(task, "auto"),
        "data_root": e.data_roots.get(task, ""),
        "device": e.device,
        **paths,
    }
    return from_dict(EvalConfig, {**base, **dict(e.overrides.get(task, {}))})


def eval_config_for(cfg: RunConfig, task: str, checkpoint: Path, output_dir: Path) -> EvalConfig:
    return task_eval_config(cfg.evaluation, task, checkpoint=str(checkpoint), output_dir=str(output_dir))


def eval_dir(run: RunDirectory, step: int, task: str, protocol_hash: str) -> Path:
    return run.path / "evals" / f"step_{step:08d}" / f"{task}-{protocol_hash[:12]}"


def expected(
    run: RunDirectory,
    cfg: RunConfig | None = None,
    all_checkpoints: bool = False,
    manifests: list[Manifest] | None = None,
) -> list[tuple[int, str, Path]]:
    """(step, task, directory) of every evaluation this run should have (`cfg` and `manifests`:
    the run's, when the caller already read them)."""
    cfg = cfg or run.config()
    out = []
    for manifest in run.manifests() if manifests is None else manifests:
        if not (manifest.milestone or all_checkpoints):
            continue
        for task in cfg.evaluation.tasks:
            ecfg = eval_config_for(cfg, task, run.path / "checkpoints" / manifest.file, Path("."))
            out.append((manifest.step, task, eval_dir(run, manifest.step, task, protocol_hash(ecfg))))
    return out
