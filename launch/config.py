"""The launcher's configuration: a training config (rsp.config) plus where it runs and how it is
evaluated, composed by Hydra from the YAML files under experiments/.

    python launch/submit.py experiment=rsp_vits16_k400 cluster=slurm cluster.nodes=4 model.kl_scale=0.1

Dataclasses are the single source of truth (registered in Hydra's ConfigStore as `run_schema`);
experiments/experiment/*.yaml and experiments/cluster/*.yaml only override them. `compose()`
checks every override against the schema first, so all misspelled keys and badly typed values are
reported at once, each with the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.commandline import syntax_hint, unknown_key_hint
from core.schema import RUNTIME_ONLY, ConfigError, field_type, schema_keys
from rsp.config import TrainConfig

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


@dataclass
class ClusterConfig:
    """Where and how a run executes. Only nodes x tasks_per_node (the world size) shapes results."""

    # A name in launch.backends.BACKENDS: local (this machine, subprocesses) | slurm | debug (in-process, breakpoints work).
    backend: str = "local"
    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU job (gloo)
    # GPU model of the nodes (a key of rsp.gpus: h100, a100-40gb, v100, ...) for the submit-time checks
    # (bf16 support, whether the batch can fit); SLURM is not told. None: a plain cluster.constraint naming one.
    gpu_type: str | None = None
    tasks_per_node: int | None = None  # processes per node; default: gpus_per_node, or 1 without GPUs
    cpus_per_task: int = 2
    mem_gb: float | None = None  # per node; None: the partition's default
    time_minutes: int = 1440  # wall-time limit of one attempt
    signal_delay_s: int = 120  # SIGUSR2 this long before the limit: time to finish a step and checkpoint
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    extra_sbatch: dict[str, str] = field(default_factory=dict)  # any other sbatch flag, e.g. {reservation: x}
    after: str | None = None  # job id(s), comma-separated: start only once they ended successfully (afterok)
    array_parallelism: int = 64  # sweeps: at most this many tasks of one array run at once
    max_preemptions: int = 100  # requeue budgets, per end reason
    max_timeouts: int = 50
    max_failures: int = 3  # crashes, node failures, kills
    wait: bool = True  # local backend: follow the run in this terminal until it and its evaluations end

    @property
    def processes_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


@dataclass
class EvaluationConfig:
    """Evaluation jobs run for every milestone checkpoint (see eval/ and launch/evaluations/)."""

    tasks: list[str] = field(default_factory=list)  # registered tasks (eval.registry.TASKS): davis | vip | jhmdb | photo_davis
    presets: dict[str, str] = field(default_factory=dict)  # task -> preset (eval.config.PRESETS); unlisted: the task's default
    data_roots: dict[str, str] = field(default_factory=dict)  # task -> dataset root
    synthetic: bool = False  # generate small benchmark sets in the official layouts when a root is missing
    overrides: dict[str, Any] = field(default_factory=dict)  # task -> {eval config field: value}, e.g. {davis: {topk: 5}}
    device: str = "auto"
    cpus_per_task: int = 2
    gpus: int = 0
    time_minutes: int = 120  # wall-time limit of one evaluation job
    # SIGUSR2 this long before the limit (the job stops and is requeued: an evaluation is not
    # checkpointed, it needs only seconds to stop); must leave time to evaluate (docs/requeue.md)
    signal_delay_s: int = 30
    mem_gb: float | None = None
    max_requeues: int = 3  # time limits and preemptions of one evaluation job before it is given up (failed.json)
    max_resubmissions: int = 2  # new jobs for an evaluation whose job vanished without a word, before it is given up


@dataclass
class RunConfig(TrainConfig):
    """One pretraining run as submitted: what to train (TrainConfig) + name, where, how evaluated."""

    name: str = field(default="rsp", metadata=RUNTIME_ONLY)  # readable part of the run directory's name
    output_root: str = field(default="runs", metadata=RUNTIME_ONLY)  # runs live in <output_root>/<name>-<id>/
    cluster: ClusterConfig = field(default_factory=ClusterConfig, metadata=RUNTIME_ONLY)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig, metadata=RUNTIME_ONLY)


def train_config(run: RunConfig) -> TrainConfig:
    """The part of a run config that rsp/ sees."""
    return TrainConfig(**{f.name: getattr(run, f.name) for f in dataclasses.fields(TrainConfig)})


def register_schema() -> None:
    # hydra: ~0.5 s to import; the requeue teardown and the status table read configs without it
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (EXPERIMENTS_DIR / group).glob("*.yaml"))


def check_overrides(overrides: list[str], where: str = "") -> list[str]:
    """Problems with `key=value` overrides, found before composing: syntax errors (with the quoted
    form or the missing `=`), sweep syntax, deletions, unknown groups or options, a group or key
    given twice, unknown keys (with the closest valid key), values of the wrong type. All at once.
    `where` prefixes each message (a sweep file's `overrides:`)."""
    # hydra: ~0.5 s to import; the requeue teardown and the status table read configs without it
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = schema_keys(RunConfig)
    base = OmegaConf.structured(RunConfig)
    problems, given, skip = [], {}, set()
    for i, item in enumerate(overrides):
        following = overrides[i + 1] if i + 1 < len(overrides) else None
        if i in skip:
            continue
        try:
            override = parser.parse_override(item)
        except Exception as exc:  # hydra's OverrideParseException
            problems.append(
                f"{where}cannot parse {item!r} ({str(exc).splitlines()[0]}); {syntax_hint(item, str(exc), following)}"
            )
            if "=" not in item and following is not None and "=" not in following:
                skip.add(i + 1)  # `key value`: the value belongs to this problem
            continue
        key = override.key_or_group
        if override.is_sweep_override():
            problems.append(f"{where}{item!r} gives several values; {syntax_hint(item, '')}")
            continue
        if override.is_delete():
            problems.append(
                f"{where}{item!r} deletes {key}, but every key of the schema needs a value; set it instead ({key}=VALUE)"
            )
            continue
        value = override.value()
        if key in given and not _is_dict_entry(key):
            problems.append(
                f"{where}{key} is given twice ({key}={given[key]!r} and {key}={value!r}); give it once "
                "(the later one would silently win)"
            )
        given[key] = value
        if key in ("experiment", "cluster"):
            if value not in options(key):
                close = difflib.get_close_matches(str(value).removesuffix(".yaml"), options(key), n=1, cutoff=0.5)
                hint = f"; did you mean {key}={close[0]}?" if close else ""
                problems.append(f"{where}{key}={value!r} is not one of: {', '.join(options(key))}{hint}")
            continue
        if key not in keys and not any(k.startswith(f"{key}.") for k in keys) and not _is_dict_entry(key):
            hint = unknown_key_hint(key, keys)
            if not hint:
                hint = f"; valid top-level keys: {', '.join(sorted({k.split('.')[0] for k in keys}))}"
            problems.append(f"{where}{key} is not a configuration key{hint}")
            continue
        try:
            OmegaConf.update(base, key, value, merge=True)
        except Exception as exc:  # omegaconf's ValidationError, ConfigTypeError, ...
            problems.append(f"{where}{key}={value!r}: {_type_message(key, value, exc)}")
    return problems


def _type_message(key: str, value: Any, exc: Exception) -> str:
    """OmegaConf's type error, with the form the key takes (a list in brackets, a number, ...)."""
    first = str(exc).splitlines()[0]
    try:
        hint = field_type(RunConfig, key)
    except (KeyError, TypeError, AttributeError):
        return first
    if dataclasses.is_dataclass(hint):  # model=vit_base: a section, not a group with options
        fields = [f.name for f in dataclasses.fields(hint)]
        example = f"{key}.name={value}" if "name" in fields else f"{key}.{fields[0]}={value}"
        return f"{key} is a section of settings, not one value; set its fields, e.g. {example} ({key}.*: {', '.join(fields)})"
    origin = getattr(hint, "__origin__", None)
    if origin is list or hint is list:
        return f"{first}; {key} is a list: write {key}=[{value}]" if isinstance(value, str) else first
    name = getattr(hint, "__name__", str(hint))
    return f"{first}; {key} takes a value of type {name}"


DICT_FIELDS = ("cluster.extra_sbatch", "evaluation.presets", "evaluation.data_roots", "evaluation.overrides")


def _is_dict_entry(key: str) -> bool:
    """cluster.extra_sbatch.reservation, evaluation.overrides.davis.topk: entries of dict fields
    (also true of a whole override, key=value)."""
    name = key.split("=", 1)[0]
    return any(name == d or name.startswith(f"{d}.") for d in DICT_FIELDS)


def compose(overrides: list[str], experiment: str | None = None) -> RunConfig:
    """Compose experiments/config.yaml with `overrides` into a RunConfig (not yet validated)."""
    # hydra: ~0.5 s to import; the requeue teardown and the status table read configs without it
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = list(overrides)
    if experiment is not None and not any(o.startswith("experiment=") for o in overrides):
        overrides.insert(0, f"experiment={experiment}")
    problems = check_overrides(overrides)
    if problems:
        raise ConfigError(problems, what="command line")
    # Entries of dict fields may be new keys: "++" is Hydra's add-or-override.
    overrides = [f"++{o}" if _is_dict_entry(o) else o for o in overrides]
    register_schema()
    with initialize_config_dir(config_dir=str(EXPERIMENTS_DIR), version_base="1.3", job_name="rsp"):
        try:
            cfg = hydra_compose(config_name="config", overrides=overrides)
        except Exception as exc:  # hydra's composition errors: whatever check_overrides could not foresee
            raise ConfigError([f"cannot compose {' '.join(overrides)}: {exc}"], what="command line") from exc
    try:
        return to_run_config(cfg)
    except Exception as exc:  # omegaconf's validation errors (e.g. a YAML file under experiments/ with a bad value)
        raise ConfigError([f"the composed configuration is invalid: {str(exc).splitlines()[0]}"], what="configuration") from exc


def to_run_config(cfg: Any) -> RunConfig:
    """DictConfig (possibly with Hydra's extra keys) -> RunConfig dataclass, converted once."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), container)
    return OmegaConf.to_object(merged)


def absolutize(cfg: RunConfig, base: Path) -> RunConfig:
    """Relative paths in the config are relative to where the user submits; jobs run elsewhere."""

    def fix(path: str) -> str:
        path = os.path.expanduser(path)  # a quoted "~/x" reaches the config unexpanded
        return path if not path or os.path.isabs(path) else str((base / path).resolve())

    cfg.output_root = fix(cfg.output_root)
    cfg.data.root = fix(cfg.data.root)
    cfg.evaluation.data_roots = {k: fix(v) for k, v in cfg.evaluation.data_roots.items()}
    return cfg
