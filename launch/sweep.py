"""Sweeps: a YAML file that fans out into many runs. This module reads and checks the file and
expands it into run configs; launch/plan.py plans them (state, action) and submits what is missing
as job arrays.

    python launch/submit.py sweep=kl_weight --dry-run     # the plan: id, name, overrides, resources, state, action
    python launch/submit.py sweep=kl_weight               # submit what is missing; 0 jobs if nothing is
    python launch/status.py sweep=kl_weight               # one table, axis values as columns

Schema (sweeps/*.yaml; documented in the README):

    experiment: rsp_vits16_k400        # base experiment (experiments/experiment/*.yaml)
    overrides: [cluster=slurm]          # Hydra overrides for every run (groups allowed here)
    name: "kl{model.kl_scale}"          # run name template: {section.key} is the run's value
    axes:                               # the grid is the product of all axes
      - key: model.kl_scale
        values: [0.0, 0.001, 0.01, 0.1]
        overrides:                      # optional, per value: more key=value for that value only
          0.0: [model.kl_freebit=0]
      - zip:                            # one axis whose keys advance together (equal lengths)
          model.name: [rsp_vit_small_patch16, rsp_vit_base_patch16]
          cluster.nodes: [2, 4]
    select:                             # optional: successive halving on a milestone metric (launch/selection.py)
      {metric: "davis:J&F-Mean", mode: max, keep: 0.5, rungs: [5000, 20000]}

The base experiment is composed by Hydra once; each run applies its axis values to a copy of the
resolved config (schema-typed), so planning 1,000 runs takes well under 2 s. Every run keeps all
launcher guarantees: its own run directory (same identity rules as single runs), requeue, exact
resume, per-attempt logs.
"""

from __future__ import annotations

import copy
import difflib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from launch.config import RunConfig, compose
from launch.rundir import run_id
from launch.selection import Selection, parse_selection
from rsp.schema import ConfigError, field_type, from_dict, schema_keys, to_dict, value_fits

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"
SWEEP_KEYS = ("description", "experiment", "overrides", "name", "axes", "select")


@dataclass
class SweepRun:
    name: str
    axis_values: dict[str, Any]  # key -> value for every axis key
    overrides: list[str]  # the key=value assignments that make this run (for the plan)
    cfg: RunConfig | None = None


@dataclass
class Sweep:
    name: str
    experiment: str
    overrides: list[str]
    name_template: str
    axes: list[list[dict[str, Any]]]  # per axis: its values, each {key: value}
    per_value: list[dict[str, list[tuple[str, Any]]]] = field(
        default_factory=list
    )  # per axis: str(value) -> [(key, value)] (checked)
    selection: Selection | None = None  # the select: block (successive halving), if any

    @property
    def axis_keys(self) -> list[str]:
        return [k for axis in self.axes for k in axis[0]] if self.axes else []


def sweep_path(name: str) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        valid = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise ConfigError([f"sweep {name!r} not found ({path}); valid: {valid}"], what="sweep")
    return path


def load_sweep(name: str) -> Sweep:
    """Parse and check a sweep file; every problem of the file is reported at once."""
    path = sweep_path(name)
    raw = yaml.safe_load(path.read_text()) or {}
    problems = [f"unknown top-level key {k!r} in {path.name}; valid: {', '.join(SWEEP_KEYS)}" for k in raw if k not in SWEEP_KEYS]
    keys = set(schema_keys(RunConfig))
    axes, per_value, seen = [], [], {}
    for i, axis in enumerate(raw.get("axes") or []):
        before = len(problems)
        columns = axis.get("zip") if "zip" in axis else ({axis["key"]: axis.get("values")} if "key" in axis else None)
        if not columns:
            problems.append(f"axes[{i}] needs either key + values, or zip: {{key: [values], ...}}")
            continue
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in columns.items()}
        for key, n in lengths.items():
            if key not in keys:
                close = difflib.get_close_matches(key, sorted(keys), n=3, cutoff=0.5)
                problems.append(
                    f"axes[{i}]: {key} is not a configuration key" + (f"; did you mean {', '.join(close)}?" if close else "")
                )
            if n == -1:
                problems.append(f"axes[{i}]: {key} needs a list of values")
            elif n == 0:
                problems.append(f"axes[{i}]: {key} has no values (an empty axis yields no runs)")
            if key in seen:
                problems.append(f"axes[{i}] and axes[{seen[key]}] both set {key}; an axis key may appear once")
            seen[key] = i
        if len(set(lengths.values())) > 1:
            problems.append(f"axes[{i}] zips lists of different lengths {lengths}; zipped lists advance together")
        if len(problems) > before:
            continue
        problems += [p for key, values in columns.items() for p in _value_problems(key, values)]
        axes.append([dict(zip(columns, combo, strict=True)) for combo in zip(*columns.values(), strict=True)])
        per_value.append(_per_value_assignments(axis.get("overrides") or {}, columns, problems))
    if not axes and not problems:
        problems.append(f"{path.name} defines no axes")
    selection = None
    if raw.get("select") is not None:
        selection, found = parse_selection(raw["select"])
        problems += found
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), what=f"sweep {path.name} (nothing was submitted)")
    return Sweep(
        name=path.stem,
        experiment=raw.get("experiment", "smoke"),
        overrides=list(raw.get("overrides") or []),
        name_template=raw.get("name", path.stem + "-{model.name}"),
        axes=axes,
        per_value=per_value,
        selection=selection,
    )


def _value_problems(key: str, values: Sequence[Any]) -> list[str]:
    """Why `key` cannot take each of `values` (the schema's type), checked once per sweep file."""
    try:
        hint = field_type(RunConfig, key)
    except KeyError:
        return [f"{key} is not a configuration key"]
    return [
        f"{key}={value!r} has the wrong type (expected {getattr(hint, '__name__', hint)})"
        for value in values
        if not value_fits(hint, value)
    ]


def _per_value_assignments(overrides: dict, columns: dict[str, list], problems: list[str]) -> dict[str, list[tuple[str, Any]]]:
    """An axis' per-value overrides, parsed and type-checked once: str(value) -> [(key, value)].
    Entries for a value the axis does not have are never applied (and not checked)."""
    present = {str(v) for values in columns.values() for v in values}
    out = {}
    for value, texts in overrides.items():
        if str(value) not in present:
            continue
        out[str(value)] = []
        for text in texts:
            try:
                key, parsed = _parse_assignment(text)
            except ConfigError as exc:
                problems += exc.problems
                continue
            problems += _value_problems(key, [parsed])
            out[str(value)].append((key, parsed))
    return out


# --- expansion ------------------------------------------------------------------------------------


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree[p]
    tree[leaf] = value


def _parse_assignment(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError([f"per-value override {text!r} is not of the form key=value"], what="sweep")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def expand(sweep: Sweep, extra_overrides: Sequence[str] = (), base: RunConfig | None = None) -> list[SweepRun]:
    """All runs of the sweep with their configs. Raises ConfigError listing every duplicate run
    (load_sweep reported bad keys, bad values and keys set twice)."""
    base = base or compose([f"experiment={sweep.experiment}", *sweep.overrides, *extra_overrides])
    base_tree = to_dict(base)
    runs = []
    for combo in itertools.product(*[list(enumerate(axis)) for axis in sweep.axes]):
        assignments: dict[str, Any] = {}
        for axis_index, (_, values) in enumerate(combo):
            assignments.update(values)
            for value in values.values():
                assignments.update(sweep.per_value[axis_index].get(str(value), []))
        tree = copy.deepcopy(base_tree)
        for key, value in assignments.items():  # keys and types were checked by load_sweep
            _set(tree, key, copy.deepcopy(value))  # runs share no list or dict
        cfg = from_dict(RunConfig, tree)
        cfg.name = sweep.name_template.format(**{f.name: getattr(cfg, f.name) for f in fields(cfg)})
        runs.append(
            SweepRun(
                cfg.name,
                {k: v for _, values in combo for k, v in values.items()},
                [f"{k}={v}" for k, v in assignments.items()],
                cfg,
            )
        )
    by_id: dict[str, list[str]] = {}
    for run in runs:
        by_id.setdefault(run_id(run.cfg), []).append(" ".join(run.overrides))
    duplicates = [
        f"runs {' | '.join(v)} are the same experiment (run id {k}); remove one" for k, v in by_id.items() if len(v) > 1
    ]
    if duplicates:
        raise ConfigError(duplicates, what=f"sweep {sweep.name} (nothing was submitted)")
    return runs
