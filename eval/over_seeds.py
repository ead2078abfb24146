"""Mean and standard deviation over seeds: runs of a sweep that differ only in their seed axis
(`runtime.seed` by default) are repeats of one setting, and a researcher compares settings by the
mean and the spread of those repeats, not by single runs.

    summary = over_seeds(table)        # None when the table has no seed axis with two or more seeds

One row per setting of the other sweep axes and checkpoint step, with `<column> mean`,
`<column> std` (sample standard deviation, ddof 1; NaN for a single seed) and `seeds` (how many runs
have a value there) for each headline metric and its gain over step 0 (eval/aggregate.py). Written by
the aggregator as over_seeds.csv / .md and plotted over training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

SEED_AXIS = "runtime.seed"


def over_seeds(table: pd.DataFrame, values: Sequence[str], seed_axis: str = SEED_AXIS) -> pd.DataFrame | None:
    """Mean, std and count over the seed axis of each column in `values` (fractions), per setting of
    the other axes (columns "axis:<key>") and step; None without a seed axis of at least two seeds."""
    seed = f"axis:{seed_axis}"
    if table.empty or seed not in table or table[seed].nunique() < 2:
        return None
    setting = [c for c in table.columns if c.startswith("axis:") and c != seed]
    keys = [*setting, "step"]
    grouped = table.groupby(keys, dropna=False, sort=True)
    parts = {}
    for column in values:
        parts[f"{column} mean"] = grouped[column].mean()
        parts[f"{column} std"] = grouped[column].std(ddof=1)
    parts["seeds"] = grouped[seed].nunique()
    return pd.DataFrame(parts).reset_index()


def markdown_over_seeds(summary: pd.DataFrame, values: Sequence[str]) -> str:
    """A Markdown table: the setting, the step, `mean ± std` in percent per value, the seed count."""
    keys = [c for c in summary.columns if c.startswith("axis:")] + ["step"]
    header = [k.removeprefix("axis:") for k in keys] + list(values) + ["seeds"]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        cells = [str(row[k]) for k in keys] + [_mean_std(row[f"{v} mean"], row[f"{v} std"]) for v in values]
        lines.append("| " + " | ".join(cells + [str(row["seeds"])]) + " |")
    return "\n".join(lines)


def _mean_std(mean: float, std: float) -> str:
    if isinstance(mean, float) and math.isnan(mean):
        return "-"
    return f"{100 * mean:.1f}" + ("" if isinstance(std, float) and math.isnan(std) else f" ± {100 * std:.1f}")


def plot_over_seeds(summary: pd.DataFrame, values: Sequence[str], out: Path) -> list[Path]:
    """One figure per value: the mean over seeds against the step per setting, with a +-1 std band."""
    import matplotlib  # matplotlib: ~1 s to import; only drawing plots pays for it (--no-plots does not)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (same reason; after choosing the headless backend)

    out.mkdir(parents=True, exist_ok=True)
    settings = [c for c in summary.columns if c.startswith("axis:")]
    paths = []
    for value in values:
        fig, ax = plt.subplots(figsize=(6, 4))
        groups = summary.groupby(settings, dropna=False, sort=True) if settings else [((), summary)]
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{s.removeprefix('axis:')}={k}" for s, k in zip(settings, key, strict=True)) or "all runs"
            mean, std = 100 * group[f"{value} mean"], 100 * group[f"{value} std"].fillna(0)
            (line,) = ax.plot(group["step"], mean, marker="o", label=label)
            ax.fill_between(group["step"], mean - std, mean + std, alpha=0.2, color=line.get_color())
        ax.set(xlabel="training step (0: the initialization)", ylabel=f"{value} (%)", title=f"{value}: mean ± std over seeds")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in value)}_over_seeds.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_benchmarks_side_by_side(summary: pd.DataFrame, values: Sequence[str], out: Path) -> Path:
    """One figure with a panel per value (each benchmark's headline metric, e.g. the real-photo and
    the camouflage set's J&F): the mean over seeds against the step per setting, +-1 std band."""
    import matplotlib  # matplotlib: ~1 s to import; only drawing plots pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (same reason; after choosing the headless backend)

    out.mkdir(parents=True, exist_ok=True)
    settings = [c for c in summary.columns if c.startswith("axis:")]
    fig, axes = plt.subplots(1, len(values), figsize=(5 * len(values), 4), squeeze=False)
    for ax, value in zip(axes[0], values, strict=True):
        groups = summary.groupby(settings, dropna=False, sort=True) if settings else [((), summary)]
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{s.removeprefix('axis:')}={k}" for s, k in zip(settings, key, strict=True)) or "all runs"
            mean, std = 100 * group[f"{value} mean"], 100 * group[f"{value} std"].fillna(0)
            (line,) = ax.plot(group["step"], mean, marker="o", label=label)
            ax.fill_between(group["step"], mean - std, mean + std, alpha=0.2, color=line.get_color())
        ax.set(xlabel="training step (0: the initialization)", ylabel=f"{value} (%)", title=value)
    axes[0][0].legend(fontsize="x-small")
    fig.suptitle("mean ± std over seeds")
    fig.tight_layout()
    path = out / "benchmarks_over_seeds.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
