"""Evaluate one checkpoint on one task: the programmatic entry point and the CLI.

    python -m eval.run checkpoint=PATH task=davis preset=rsp data_root=data/DAVIS
    python -m eval.run checkpoint=PATH task=jhmdb data_root=data/JHMDB topk=10
    python -m eval.run checkpoint=PATH task=vip data_root=data/VIP_Fine device=cuda

Arguments are Hydra overrides of `eval.config.EvalConfig`. Outputs go to `output_dir` (default
<run>/eval/<checkpoint stem>-<task>-<protocol hash[:10]>): predictions in the task's
layout, metrics.json (metrics, protocol, protocol hash, wall time) and, for DAVIS, the official
global_results-<split>.csv and per-sequence_results-<split>.csv. Every file is rewritten on each
run, so stale results are never reported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.backbone import load_backbone
from eval.config import EvalConfig, register_configs
from eval.protocol import frame_size, propagation_params, protocol, protocol_hash, validate
from eval.task import GENERATED_MARKER, Evaluation
from eval.tasks import get_task
from rsp.atomicio import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class EvalOutcome:
    task: str  # a name in eval.tasks.TASKS
    metrics: dict[str, float]  # the task's metrics (EvalTask.metrics), fractions
    protocol: dict  # every setting that produced the numbers, with "protocol_hash"
    output_dir: Path  # predictions + metrics.json
    wall_time_s: float


def default_output_dir(cfg: EvalConfig) -> Path:
    """<run>/eval/... for our <run>/checkpoints/step_X.pt, else eval/... beside the checkpoint."""
    checkpoint = Path(cfg.checkpoint)
    base = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return base / "eval" / f"{checkpoint.stem}-{cfg.task}-{protocol_hash(cfg)[:10]}"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def generated_set(data_root: str | Path) -> str | None:
    """The description in a generated set's marker, or None when `data_root` is a real dataset."""
    marker = Path(data_root) / GENERATED_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def evaluate(cfg: EvalConfig) -> EvalOutcome:
    """Run `cfg` end to end and write its outputs; returns the metrics and the protocol."""
    validate(cfg)
    start = time.perf_counter()
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(
        cfg.checkpoint,
        cfg.checkpoint_format,
        trust_pickle=cfg.trust_checkpoint,
        dino_branch=cfg.dino_branch,
        num_heads=cfg.num_heads,
    )
    task = get_task(cfg.task)
    metrics = task.run(Evaluation(cfg, propagation_params(cfg), frame_size(cfg), backbone.encoder, device, out_dir))
    if set(metrics) != set(task.metrics):
        raise ValueError(
            f"task {task.name} returned metrics {sorted(metrics)} but declares {sorted(task.metrics)} (EvalTask.metrics)"
        )
    details = {
        **protocol(cfg),
        "protocol_hash": protocol_hash(cfg),
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_format": backbone.format,
        "patch_size": backbone.patch_size,
        "embed_dim": backbone.encoder.embed_dim,
        # A generated set's marker (eval.task.GENERATED_MARKER), None for a real dataset: tables keep
        # generated numbers away from published ones (eval/aggregate.py).
        "generated_set": generated_set(cfg.data_root),
    }
    wall = time.perf_counter() - start
    atomic_write_json(
        out_dir / "metrics.json",
        {"task": cfg.task, "metrics": metrics, "protocol": details, "wall_time_s": wall, "device": str(device)},
    )
    return EvalOutcome(cfg.task, metrics, details, out_dir, wall)


# --- CLI ---------------------------------------------------------------------------------------------


def config_from_overrides(overrides: list[str]) -> EvalConfig:
    """Hydra's override grammar on `EvalConfig` (compose API: no working-directory change, no
    Hydra output folder). Unknown keys raise and name the valid ones."""
    # hydra: ~0.5 s to import; evaluation jobs call evaluate() directly and never compose
    from hydra import compose, initialize
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    register_configs()
    with initialize(version_base=None, config_path=None):
        try:
            composed = compose(config_name="eval", overrides=overrides)
        except ConfigCompositionException as exc:
            valid = ", ".join(EvalConfig.__dataclass_fields__)
            raise ValueError(f"{exc}; valid keys: {valid}") from exc
    return OmegaConf.to_object(composed)


def usage() -> str:
    lines = [__doc__.strip(), "", "Keys (key=value, Hydra override syntax):"]
    for f in dataclasses.fields(EvalConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name}={default!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(usage())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_overrides(argv)
    outcome = evaluate(cfg)
    width = max(len(k) for k in outcome.metrics)
    print(
        f"{outcome.task} ({outcome.protocol['preset']}, hash {outcome.protocol['protocol_hash'][:10]}) "
        f"in {outcome.wall_time_s:.1f} s"
    )
    for name, value in outcome.metrics.items():
        print(f"  {name:<{width}}  {value:.4f}")
    print(f"outputs: {outcome.output_dir}")
    print(json.dumps({"task": outcome.task, "metrics": outcome.metrics}))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
