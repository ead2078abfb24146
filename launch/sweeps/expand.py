"""Sweeps: a YAML file that fans out into many runs. This module reads and checks the file and
expands it into run configs; launch/plan.py plans them (state, action) and submits what is missing
as job arrays.

    python launch/submit.py sweep=kl_weight --dry-run     # the plan: id, name, overrides, resources, state, action
    python launch/submit.py sweep=kl_weight               # submit what is missing; 0 jobs if nothing is
    python launch/status.py sweep=kl_weight               # one table, axis values as columns

Schema (sweeps/*.yaml; documented in docs/sweeps.md#running-a-sweep):

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
    select:                             # optional: successive halving on a milestone metric (launch/sweeps/selection.py)
      {metric: "davis:J&F-Mean", mode: max, keep: 0.5, rungs: [5000, 20000]}

The base experiment is composed by Hydra once; each run applies its axis values to a copy of the
resolved config (schema-typed), so planning 1,000 runs takes well under 2 s. Every run keeps all
launcher guarantees: its own run directory (same identity rules as single runs), requeue, exact
resume, per-attempt logs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.schema import ConfigError, from_dict, to_dict
from launch.config import RunConfig, compose
from launch.rundir import run_id
from launch.sweeps.file import read_sweep_file
from launch.sweeps.selection import Selection

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


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
    path = Path(name).expanduser() if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        valid = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        what = "is a directory, not a sweep file" if path.is_dir() else "not found"
        raise ConfigError([f"sweep {name!r} {what} ({path}); valid: {valid}"], what="sweep")
    return path


def load_sweep(name: str) -> Sweep:
    """Read and check a sweep file (launch/sweeps/file.py); every problem of the file is reported at once."""
    path = sweep_path(name)
    parsed, problems = read_sweep_file(path)
    if problems:
        raise ConfigError(problems, what=f"sweep {path.name} (nothing was planned or submitted)")
    axes = parsed["axes"]
    return Sweep(
        name=path.stem,
        experiment=parsed["experiment"],
        overrides=parsed["overrides"],
        name_template=parsed["name"] if parsed["name"] is not None else path.stem + "-{model.name}",
        axes=[axis.rows for axis in axes],
        per_value=[axis.per_value for axis in axes],
        selection=parsed["select"],
    )


# --- expansion ------------------------------------------------------------------------------------


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree[p]
    tree[leaf] = value


def one_data_spelling(cfg: RunConfig) -> RunConfig:
    """`cfg` with data.root as the folder it names (symlinks resolved), for finding duplicate runs: an
    axis over two spellings of one folder trains the same thing twice under two run ids."""
    if not cfg.data.root:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=os.path.realpath(cfg.data.root)))


def expand(sweep: Sweep, extra_overrides: Sequence[str] = (), base: RunConfig | None = None) -> list[SweepRun]:
    """All runs of the sweep with their configs. Raises ConfigError listing every duplicate run
    (load_sweep reported bad keys, bad values and keys set twice)."""
    swept = {*sweep.axis_keys, *(key for per_value in sweep.per_value for pairs in per_value.values() for key, _ in pairs)}
    ignored = [o for o in extra_overrides if o.partition("=")[0].lstrip("+~") in swept]
    if ignored:  # the axes are set after the overrides: each would be silently replaced
        raise ConfigError(
            [
                f"{o}: sweep {sweep.name} sets {o.partition('=')[0]} for every run (an axis or a per-value override), "
                "so this would be ignored; change the values in the sweep file, or drop it"
                for o in ignored
            ],
            what="command line (nothing was submitted)",
        )
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
        by_id.setdefault(run_id(one_data_spelling(run.cfg)), []).append(" ".join(run.overrides))
    duplicates = [
        f"runs {' | '.join(v)} are the same experiment (run id {k}; a data.root through a symlink is the folder it "
        "names); remove one"
        for k, v in by_id.items()
        if len(v) > 1
    ]
    if duplicates:
        raise ConfigError(duplicates, what=f"sweep {sweep.name} (nothing was submitted)")
    return runs
