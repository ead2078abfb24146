"""Mean and standard deviation over seeds: runs of a sweep that differ only in their seed axis
(`runtime.seed` by default) are repeats of one setting, and a researcher compares settings by the
mean and the spread of those repeats, not by single runs.

    summary = over_seeds(table)        # None when the table has no seed axis with two or more seeds

One row per setting of the other sweep axes and checkpoint step, with `<column> mean`,
`<column> std` (sample standard deviation, ddof 1; NaN for a single seed) and `seeds` (how many runs
have a value there) for each headline metric and its gain over step 0 (eval/aggregate.py). Written by
the aggregator as over_seeds.csv / .md and plotted over training (eval/plots.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from eval.columns import AXIS, axis_name, is_axis

SEED_AXIS = "runtime.seed"


def over_seeds(table: pd.DataFrame, values: Sequence[str], seed_axis: str = SEED_AXIS) -> pd.DataFrame | None:
    """Mean, std and count over the seed axis of each column in `values` (fractions), per setting of
    the other axes (columns "axis:<key>") and step; None without a seed axis of at least two seeds."""
    seed = AXIS + seed_axis
    if table.empty or seed not in table or table[seed].nunique() < 2:
        return None
    setting = [c for c in table.columns if is_axis(c) and c != seed]
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
    keys = [*filter(is_axis, summary.columns), "step"]
    header = [axis_name(k) for k in keys] + list(values) + ["seeds"]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        cells = [str(row[k]) for k in keys] + [_mean_std(row[f"{v} mean"], row[f"{v} std"]) for v in values]
        lines.append("| " + " | ".join(cells + [str(row["seeds"])]) + " |")
    return "\n".join(lines)


def _mean_std(mean: float, std: float) -> str:
    if isinstance(mean, float) and math.isnan(mean):
        return "-"
    return f"{100 * mean:.1f}" + ("" if isinstance(std, float) and math.isnan(std) else f" ± {100 * std:.1f}")
