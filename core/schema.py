"""The machinery every typed config uses (rsp.config, launch.config, eval.config): one error type that
lists every problem, the RUNTIME_ONLY marker, conversion to and from plain dicts, the fingerprint
that identifies a run, readable differences, and the schema's dotted keys and their types.

Fields that cannot change the numbers a run produces (worker counts, log cadence, where
checkpoints go, ...) carry ``metadata=RUNTIME_ONLY``. `fingerprint()` leaves them out, so a run
keeps its identity when only they change, and a checkpoint stays resumable.

A result-affecting field added after runs already exist carries ``metadata=ADDED_TO_IDENTITY``: it
enters the fingerprint only when set to something other than its default, so the runs made before
it existed (which ran as the default does) keep their ids, and submitting their sweeps again finds them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

RUNTIME_ONLY = {"affects_results": False}
ADDED_TO_IDENTITY = {"affects_results": "unless default"}


class ConfigError(ValueError):
    """One or more configuration problems; `problems` lists every one of them."""

    def __init__(self, problems: list[str], what: str = "configuration"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the {what}:\n{lines}")


# --- serialization and identity ----------------------------------------------------------------


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (JSON- and weights_only-safe)."""
    return dataclasses.asdict(cfg)


def identity_dict(cfg: Any) -> dict:
    """The fields of `cfg` that can change results: every field not marked RUNTIME_ONLY."""
    return without_runtime_only(to_dict(cfg), type(cfg))


def without_runtime_only(data: dict, cls: type) -> dict:
    """`data`, a config of dataclass `cls` as a nested dict (`to_dict`, or read back from a
    checkpoint), without the fields `cls` marks RUNTIME_ONLY; keys `cls` does not know are kept."""
    known, hints = _schema(cls)
    out = {}
    for key, value in data.items():
        if key in known and not known[key].metadata.get("affects_results", True):
            continue
        if (
            key in known
            and known[key].metadata.get("affects_results") == ADDED_TO_IDENTITY["affects_results"]
            and value == _default(known[key])
        ):
            continue
        hint = hints.get(key)
        out[key] = without_runtime_only(value, hint) if dataclasses.is_dataclass(hint) and isinstance(value, dict) else value
    return out


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def fingerprint(cfg: Any, extra: dict | None = None) -> str:
    """Stable hash (hex sha256) of the result-affecting fields of `cfg`, plus `extra` facts that
    also shape the trajectory (e.g. the world size)."""
    payload = {"config": identity_dict(cfg), "extra": extra or {}}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested config dicts: ['model.kl_scale: 0.01 != 0.1']."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if key not in a or key not in b:
            out.append(f"{name}: {'missing' if key not in a else a[key]!r} != {'missing' if key not in b else b[key]!r}")
        elif isinstance(a[key], dict) and isinstance(b[key], dict):
            out += diff(a[key], b[key], f"{name}.")
        elif a[key] != b[key]:
            out.append(f"{name}: {a[key]!r} != {b[key]!r}")
    return out


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build config dataclass `cls` from a nested dict; unknown keys raise and list the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError([f"{where or cls.__name__} must be a mapping, got {type(data).__name__}"])
    known, hints = _schema(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError([f"{where}{k} is not a field of {cls.__name__}; valid: {', '.join(known)}" for k in unknown])
    kwargs, wrong = {}, []
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}{name}.")
        elif float in _scalars(hint) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (problem := _type_problem(_hints(cls)[name], value)) is not None:
            wrong.append(f"{where}{name} ({value!r}) {problem}")
        kwargs[name] = value
    if wrong:
        raise ConfigError(wrong)
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of `cls`, Optional kept (a None where null is allowed is no problem)."""
    return typing.get_type_hints(cls)


def _scalars(hint: Any) -> tuple[type, ...]:
    """The scalar types a hint admits (int, float, bool, str, None), or () when it admits anything else."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    admitted = tuple(a for a in args if a in (int, float, bool, str, type(None)))
    return admitted if len(admitted) == len(args) else ()


def _type_problem(hint: Any, value: Any) -> str | None:
    """Why `value` does not fit a scalar hint (a string where a number goes, ...); None when it fits
    or the hint is not a plain scalar one."""
    admitted = _scalars(hint)
    if not admitted or any(_fits(value, t) for t in admitted):
        return None
    names = " or ".join("null" if t is type(None) else t.__name__ for t in admitted)
    return f"must be {'an' if names[0] in 'aeiou' else 'a'} {names}, not {type(value).__name__}"


def _fits(value: Any, kind: type) -> bool:
    if kind is type(None):
        return value is None
    if kind in (int, float) and isinstance(value, bool):  # True is an int to Python, never to a config
        return False
    return isinstance(value, kind)


def read_record(cls: type, path: Path) -> Any:
    """An on-disk record (a JSON file) as dataclass `cls`: ConfigError naming the file when it is
    unreadable, lacks a field (an older format) or has one `cls` does not know, never a KeyError."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            [f"{path}: unreadable ({exc}); restore it from a copy, or move it aside"], what=f"{cls.__name__} record"
        ) from exc
    fields, _ = _schema(cls)
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if not isinstance(data, dict) or n not in data]
    if missing:
        raise ConfigError(
            [
                f"{path}: lacks {', '.join(missing)}: written by another version of this code, or damaged "
                f"({cls.__name__} needs them)"
            ],
            what=f"{cls.__name__} record",
        )
    return from_dict(cls, data, where=f"{path}: ")


@functools.cache
def _schema(cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    """(fields by name, resolved type hints without Optional) of config dataclass `cls`, computed once:
    resolving string annotations costs ~0.1 ms per class, and sweeps hash thousands of configs."""
    hints = typing.get_type_hints(cls)
    return {f.name: f for f in dataclasses.fields(cls)}, {name: _strip_optional(hints[name]) for name in hints}


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def ignored(cfg: Any, section: str, name: str, because: str, fix: str) -> list[str]:
    """[a problem] when field `name` of config dataclass `cfg` was changed from its default although
    `because` makes it ignored: a setting that silently does nothing is refused, naming the fix."""
    f = next(f for f in dataclasses.fields(cfg) if f.name == name)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    value = getattr(cfg, name)
    if value == default:
        return []
    return [f"{section}.{name} ({value}) is ignored because {because}; {fix}"]


def nonfinite(cfg: Any, prefix: str = "") -> list[str]:
    """[a problem] per number of config dataclass `cfg` (nested ones, dict values included) that is
    nan or inf: `optim.lr=nan` parses as a float and passes every `> 0` rule, since nan compares
    false with everything, so it would train on NaN; inf is never a setting either."""
    out = []
    items = dataclasses.asdict(cfg).items() if dataclasses.is_dataclass(cfg) else cfg.items()
    for name, value in items:
        if isinstance(value, dict):
            out += nonfinite(value, f"{prefix}{name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{prefix}{name} ({value}) must be a finite number")
    return out


# --- the schema's keys and types -----------------------------------------------------------------


def schema_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the schema: model.kl_scale, cluster.nodes, ..."""
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += schema_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def field_type(cls: type, dotted: str) -> Any:
    """The type hint of dotted key `dotted` ("model.kl_scale") of config dataclass `cls`; KeyError if none."""
    for part in dotted.split(".")[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return typing.get_type_hints(cls)[dotted.rsplit(".", 1)[-1]]


def value_fits(hint: Any, value: Any) -> bool:
    """Whether `value` (as parsed from YAML) is of type `hint` (ints pass as floats, bools never as numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(value_fits(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, dict):
        return isinstance(value, origin)
    return isinstance(value, hint) if isinstance(hint, type) else True
