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

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("python -m eval.run", "run it again to evaluate")

import torch

from core.atomicio import atomic_write_json
from core.commandline import flag_hint, syntax_hint, unknown_key_hint
from core.schema import ConfigError, schema_keys
from eval.backbone import load_backbone
from eval.config import EvalConfig, register_configs
from eval.protocol import frame_size, propagation_params, protocol, protocol_hash, validate
from eval.registry import get_task
from eval.task import GENERATED_MARKER, Evaluation
from rsp.checkpoint import CheckpointError

log = logging.getLogger(__name__)
# What a user's input can get wrong (ConfigError and DataError are ValueErrors): reported as one message, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, CheckpointError)


@dataclass
class EvalOutcome:
    task: str  # a name in eval.registry.TASKS
    metrics: dict[str, float]  # the task's metrics (EvalTask.metrics), fractions
    protocol: dict  # every setting that produced the numbers, with "protocol_hash"
    output_dir: Path  # predictions + metrics.json
    wall_time_s: float


def default_output_dir(cfg: EvalConfig) -> Path:
    """<run>/eval/... for our <run>/checkpoints/step_X.pt, else eval/... beside the checkpoint."""
    checkpoint = Path(cfg.checkpoint)
    base = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return base / "eval" / f"{checkpoint.stem}-{cfg.task}-{protocol_hash(cfg)[:10]}"


def expand_paths(cfg: EvalConfig) -> EvalConfig:
    """`cfg` with `~` expanded in its paths (a quoted "~/x" reaches us unexpanded)."""
    paths = {k: str(Path(getattr(cfg, k)).expanduser()) for k in ("checkpoint", "data_root", "output_dir") if getattr(cfg, k)}
    return dataclasses.replace(cfg, **paths)


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
    cfg = validate(expand_paths(cfg))
    start = time.perf_counter()
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    device = resolve_device(cfg.device)
    task = get_task(cfg.task)
    problems = task.check_data(cfg, True)  # every input checked before the model loads or anything is written
    if problems:
        raise ConfigError(problems, what=f"{task.name} dataset at {cfg.data_root} (nothing was evaluated)")
    backbone = load_backbone(
        cfg.checkpoint,
        cfg.checkpoint_format,
        trust_pickle=cfg.trust_checkpoint,
        dino_branch=cfg.dino_branch,
        num_heads=cfg.num_heads,
    )
    if frame_size(cfg) % backbone.patch_size:
        size, p = frame_size(cfg), backbone.patch_size
        raise ConfigError(
            [
                f"frame_size ({size}) must be a multiple of the checkpoint's patch size ({p}); "
                f"e.g. frame_size={size // p * p or p}"
            ],
            what="evaluation configuration (nothing was evaluated)",
        )
    out_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    Hydra output folder). Every bad override is reported at once (ConfigError): --flags with their
    key=value form, values to quote, unknown keys with the closest valid one, values of the wrong type."""
    # hydra: ~0.5 s to import; evaluation jobs call evaluate() directly and never compose
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    problems = override_problems(overrides)
    if problems:
        raise ConfigError(problems, what="command line (nothing was evaluated)")
    register_configs()
    with initialize(version_base=None, config_path=None):
        try:
            composed = compose(config_name="eval", overrides=overrides)
            return OmegaConf.to_object(composed)
        except Exception as exc:  # whatever the checks above could not foresee, as one line
            raise ConfigError([str(exc).splitlines()[0]], what="command line (nothing was evaluated)") from exc


def override_problems(overrides: list[str]) -> list[str]:
    """Every problem of the command line's overrides, found before composing (config_from_overrides)."""
    # hydra: ~0.5 s to import; evaluation jobs call evaluate() directly and never parse a command line
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser, keys = OverridesParser.create(), schema_keys(EvalConfig)
    base, problems, given, skip = OmegaConf.structured(EvalConfig), [], {}, set()
    for i, item in enumerate(overrides):
        following = overrides[i + 1] if i + 1 < len(overrides) else None
        if i in skip:
            continue
        if item.startswith("-"):
            value = following if following and "=" not in following + item and not following.startswith("-") else None
            hint = flag_hint(item, value, keys)
            if value is not None and hint:
                skip.add(i + 1)  # `--checkpoint PATH`: the path belongs to this problem
            problems.append(
                f"{item}: settings are key=value overrides, not --flags"
                + (f"; write {hint}" if hint else f"; keys: {', '.join(keys)}")
            )
            continue
        try:
            override = parser.parse_override(item)
        except Exception as exc:  # hydra's OverrideParseException
            problems.append(f"cannot parse {item!r} ({str(exc).splitlines()[0]}); {syntax_hint(item, str(exc), following)}")
            continue
        key = override.key_or_group
        if key not in keys:
            problems.append(
                f"{key} is not a key of the evaluation config{unknown_key_hint(key, keys) or '; keys: ' + ', '.join(keys)}"
            )
            continue
        if override.is_sweep_override() or override.is_delete():
            problems.append(f"{item!r}: give {key} one value ({key}=VALUE); python -m eval.run evaluates one configuration")
            continue
        if key in given:
            problems.append(f"{key} is given twice ({given[key]!r} and {override.value()!r}); give it once")
        given[key] = override.value()
        try:
            OmegaConf.update(base, key, override.value(), merge=True)
        except Exception as exc:  # omegaconf's ValidationError: a value of the wrong type
            one = "; it takes one value: run python -m eval.run once per value" if isinstance(override.value(), list) else ""
            problems.append(f"{key}={override.value()!r}: {str(exc).splitlines()[0]}{one}")
    return problems


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
    except USER_ERRORS as exc:  # one line (or one list of problems) for the user, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
