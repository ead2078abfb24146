"""The results table's figures, drawn by eval/aggregate.py into <out>/plots/ (--no-plots skips them
and matplotlib's import with them: ~1 s):

    <metric>_vs_step.png            every run's curve over training, from its step 0 (hollow square)
    <metric>_vs_<axis>.png          a sweep axis against the metric at each run's best checkpoint (solid)
                                    and at step 0 (dashed), one line per combination of the other axes
    <metric>_over_seeds.png         mean +- std over seeds per setting, over training
    benchmarks_over_seeds.png       the same, one panel per benchmark, when runs evaluated several
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from eval.columns import axis_name, is_axis

MAX_LEGEND = 12  # lines; beyond that a legend hides the plot (the CSV names the runs)


def pyplot():
    """matplotlib.pyplot on the headless backend, imported only when a figure is drawn."""
    import matplotlib  # ~1 s to import: only drawing pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the headless backend

    # Axis values are drawn as categories on purpose (evenly spaced, in sorted order): matplotlib's
    # INFO line about strings that parse as numbers, once per line drawn, says nothing here.
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    return plt


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def plot_table(table: pd.DataFrame, metrics: Sequence[str], out: Path) -> list[Path]:
    """Per metric: the runs over training, then the metric against each sweep axis."""
    axes = list(filter(is_axis, table.columns))
    paths = []
    for metric in metrics:
        paths.append(plot_runs_over_training(table, metric, out))
        paths += [plot_against_axis(table, metric, axis, axes, out) for axis in axes]
    return paths


def plot_runs_over_training(table: pd.DataFrame, metric: str, out: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    groups = table.dropna(subset=[metric]).groupby("run")
    for run, group in groups:
        (line,) = ax.plot(group["step"], group[metric], marker="o", label=run)
        at_start = group[group["step"] == 0]  # the run's own initialization: a hollow marker
        ax.plot(at_start["step"], at_start[metric], marker="s", markersize=9, fillstyle="none", color=line.get_color())
    ax.set(xlabel="training step (hollow square: step 0, the initialization)", ylabel=metric, title=f"{metric} over training")
    if groups.ngroups <= MAX_LEGEND:
        ax.legend(fontsize="small")
    return save(fig, out / f"{file_name(metric)}_vs_step.png")


def plot_against_axis(table: pd.DataFrame, metric: str, axis: str, axes: Sequence[str], out: Path) -> Path:
    """The metric against one sweep axis, drawn as evenly spaced categories in sorted order."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    best, start = table[table["best"]], table[table["step"] == 0]
    order = sorted(best.dropna(subset=[metric, axis])[axis].unique(), key=_sort_key)  # one categorical x
    ax.plot([str(v) for v in order], [math.nan] * len(order))  # fixes the x order before the lines
    others = [a for a in axes if a != axis]
    count = 0
    for rows, style, what in ((best, "-", "best checkpoint"), (start, "--", "step 0")):
        points = rows.dropna(subset=[metric, axis])
        groups = points.groupby([points[o].astype(str) for o in others]) if others else [((), points)]
        for index, (values, group) in enumerate(groups):
            if group.empty:
                continue
            group = group.sort_values(axis, key=lambda s: s.map(_sort_key))
            where = ", ".join(f"{axis_name(o)}={v}" for o, v in zip(others, values, strict=True))
            marker = "o" if style == "-" else "s"
            label = f"{what}, {where}" if where else what
            ax.plot(
                [str(v) for v in group[axis]], group[metric], linestyle=style, marker=marker, color=f"C{index % 10}", label=label
            )
            count += 1
    if count <= MAX_LEGEND:
        ax.legend(fontsize="small")
    title = f"{metric} vs {axis_name(axis)} (solid: best checkpoint, dashed: step 0)"
    ax.set(xlabel=axis_name(axis), ylabel=metric, title=title)
    return save(fig, out / f"{file_name(metric)}_vs_{file_name(axis_name(axis))}.png")


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def plot_over_seeds(summary: pd.DataFrame, values: Sequence[str], out: Path) -> list[Path]:
    """One figure per value: the mean over seeds against the step per setting, with a +-1 std band."""
    paths = []
    for value in values:
        fig, ax = pyplot().subplots(figsize=(6, 4))
        _seed_bands(ax, summary, value)
        ax.set(xlabel="training step (0: the initialization)", ylabel=f"{value} (%)", title=f"{value}: mean ± std over seeds")
        ax.legend(fontsize="small")
        paths.append(save(fig, out / f"{file_name(value)}_over_seeds.png"))
    return paths


def plot_benchmarks_side_by_side(summary: pd.DataFrame, values: Sequence[str], out: Path) -> Path:
    """One figure with a panel per value (each benchmark's headline metric, e.g. the real-photo and
    the camouflage set's J&F): the mean over seeds against the step per setting, +-1 std band."""
    fig, axes = pyplot().subplots(1, len(values), figsize=(5 * len(values), 4), squeeze=False)
    for ax, value in zip(axes[0], values, strict=True):
        _seed_bands(ax, summary, value)
        ax.set(xlabel="training step (0: the initialization)", ylabel=f"{value} (%)", title=value)
    axes[0][0].legend(fontsize="x-small")
    fig.suptitle("mean ± std over seeds")
    return save(fig, out / "benchmarks_over_seeds.png")


def _seed_bands(ax, summary: pd.DataFrame, value: str) -> None:
    """One line per setting of the other axes: the mean in percent, and a +-1 std band."""
    settings = list(filter(is_axis, summary.columns))
    groups = summary.groupby(settings, dropna=False, sort=True) if settings else [((), summary)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{axis_name(s)}={k}" for s, k in zip(settings, key, strict=True)) or "all runs"
        mean, std = 100 * group[f"{value} mean"], 100 * group[f"{value} std"].fillna(0)
        (line,) = ax.plot(group["step"], mean, marker="o", label=label)
        ax.fill_between(group["step"], mean - std, mean + std, alpha=0.2, color=line.get_color())
