"""The results table's column names (eval/aggregate.py builds the table; eval/over_seeds.py and
eval/plots.py read it):

    axis:<key>                 a sweep axis (the run's value of config key <key>)
    <task>:<metric>            a metric of a registered task ("davis:J&F-Mean"), a fraction
    gain:<task>:<metric>       that metric's gain over the run's own step 0 (its initialization)

plus plain columns (run, run_id, step, model, best, generated, ...).
"""

from __future__ import annotations

import pandas as pd

from eval.registry import TASKS

AXIS = "axis:"
GAIN = "gain:"


def is_axis(name: str) -> bool:
    return name.startswith(AXIS)


def is_gain(name: str) -> bool:
    return name.startswith(GAIN)


def is_metric(name: str) -> bool:
    return ":" in name and not is_axis(name) and not is_gain(name)


def is_value(name: str) -> bool:
    """A metric or a gain: fractions, shown in percent (points)."""
    return is_metric(name) or is_gain(name)


def axis_name(column: str) -> str:
    """ "axis:model.kl_scale" -> "model.kl_scale"."""
    return column.removeprefix(AXIS)


def headline_columns(table: pd.DataFrame) -> list[str]:
    """The registered tasks' headline metric columns that `table` has, in registration order."""
    return [c for task in TASKS.values() for c in map(task.column, task.headline) if c in table]


def best_by_column(table: pd.DataFrame) -> str | None:
    """The column that picks a run's best checkpoint: the first registered task's best_by that `table` has."""
    return next((task.column(task.best_by) for task in TASKS.values() if task.column(task.best_by) in table), None)
