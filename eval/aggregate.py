"""Result records -> one table, plots, the paper-style comparison. Works on records alone: which
records belong to which runs or sweep, and which runs a sweep pruned, is the launcher's join
(launch/results.py, the command for an output root or a sweep).

    python eval/aggregate.py [DIR] [--out DIR] [--no-plots] [--no-tensorboard]   # every record.json below DIR

Writes into the output directory (default DIR/results):
    results.csv, results.md        one row per (run, checkpoint step): run, step, sweep axes, metrics,
                                   `gain:<task>:<metric>` (the gain over the run's own step 0, its
                                   initialization), `generated` (the tasks evaluated on generated sets:
                                   decided from the data each record names);
                                   train_gpu_h / train_cpu_h: what training spent to reach the checkpoint
                                   (from its records); pruned_at, pruned_rank, pruned_value: the rung that
                                   pruned the run (given by the launcher: launch/results.py);
                                   `best` marks each run's best trained checkpoint (by the best_by metric
                                   of the first registered task it has: DAVIS J&F, else VIP mIoU, ...)
    results.table.json             the same table with dtypes: pandas.read_json(path, orient="table")
    over_seeds.csv, over_seeds.md  with a seed axis (runtime.seed): mean, std and count over seeds per
                                   setting of the other axes and step (eval/over_seeds.py)
    paper.md                       our best checkpoints and their step 0 beside the published table
                                   (docs/evaluation.md#published-results); never numbers of generated sets
    plots/                         the figures of eval/plots.py:
    plots/<metric>_vs_step.png     every run's curve over training, from its step 0
    plots/<metric>_vs_<axis>.png   each sweep axis against the metric at each run's best checkpoint (solid)
                                   and step 0 (dashed), one line per combination of the other axes' values
    plots/<metric>_over_seeds.png  mean +- std over seeds per setting, over training
    plots/benchmarks_over_seeds.png  the same, one panel per benchmark, when runs evaluated several
    tensorboard/                   hparams summaries: compare a sweep in TensorBoard's HPARAMS tab
A corrupt or partial record is skipped with a warning naming it; two records for the same key keep
the newer one and the conflict is reported.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

if __name__ == "__main__":  # before the heavy imports: a ctrl-C, or a Python without pandas, is one line
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("eval/aggregate.py", "run it again")

import pandas as pd

from core.commandline import HintingArgumentParser
from eval.columns import AXIS, GAIN, best_by_column, headline_columns, is_axis, is_metric, is_value
from eval.over_seeds import SEED_AXIS, markdown_over_seeds, over_seeds
from eval.plots import plot_benchmarks_side_by_side, plot_over_seeds, plot_table
from eval.records import ResultRecord, find_record_files, read_records
from eval.registry import TASKS
from eval.task import result_column

# Published ViT-S/16 K400 400-epoch results (docs/evaluation.md#published-results), in percent, in the columns of PAPER_COLUMNS.
PUBLISHED = {
    "SimCLR": (53.9, 51.7, 56.2, 31.9, 37.9, 66.1),
    "MoCo v3": (57.7, 54.6, 60.8, 32.4, 38.4, 67.6),
    "DINO": (59.5, 56.5, 62.5, 33.4, 41.1, 70.3),
    "MAE": (53.5, 50.4, 56.7, 32.5, 43.0, 71.3),
    "SiamMAE": (58.1, 56.6, 59.6, 33.3, 44.7, 73.0),
    "RSP (paper)": (60.1, 57.4, 62.8, 33.8, 44.6, 73.4),
}
PAPER_COLUMNS = {  # the published table's header -> our column
    "DAVIS J&F": "davis:J&F-Mean",
    "J": "davis:J-Mean",
    "F": "davis:F-Mean",
    "VIP mIoU": "vip:mIoU",
    "JHMDB PCK@0.1": "jhmdb:PCK@0.1",
    "PCK@0.2": "jhmdb:PCK@0.2",
}

COST_COLUMNS = {"gpu_hours": "train_gpu_h", "cpu_hours": "train_cpu_h"}  # record.training_cost key -> column
PRUNED_COLUMNS = ("pruned_at", "pruned_rank", "pruned_value")


@dataclass(frozen=True)
class Pruned:
    """A run a sweep's successive halving stopped, as the table shows it: at which rung (step), its
    rank among the `of` runs ranked there, and its value of the sweep's metric."""

    rung: int
    rank: int
    of: int
    value: float


def build_table(records: Sequence[ResultRecord], pruned: Mapping[str, Pruned] | None = None) -> pd.DataFrame:
    """One row per (run, step); a column per metric (task:metric) and per sweep axis, the training
    cost to each checkpoint, and for runs a sweep pruned (`pruned`: run id -> Pruned) the rung, rank
    and value that pruned them."""
    pruned = pruned or {}
    rows: dict[tuple[str, int], dict] = {}
    for r in records:
        row = rows.setdefault(
            (r.run_id, r.step),
            {
                "run": r.run_name,
                "run_id": r.run_id,
                "step": r.step,
                "model": r.model_name,
                **{AXIS + k: v for k, v in r.sweep_axes.items()},
            },
        )
        for metric, value in r.metrics.items():
            row[result_column(r.task, metric)] = value
        row.setdefault("protocols", {})[r.task] = r.protocol.get("preset", "")
        for key, column in COST_COLUMNS.items():
            if isinstance(r.training_cost.get(key), (int, float)):
                row[column] = float(r.training_cost[key])
        if r.run_id in pruned:
            p = pruned[r.run_id]
            row.update(pruned_at=p.rung, pruned_rank=f"{p.rank}/{p.of}", pruned_value=p.value)
        row.setdefault("generated", set())
        if r.measured_on_generated:  # from the data it names, whatever code wrote it (None: names no data)
            row["generated"].add(r.task)
    table = pd.DataFrame(list(rows.values()))
    if table.empty:
        return table
    table["protocols"] = table["protocols"].map(lambda p: ", ".join(f"{t}={v}" for t, v in sorted(p.items())))
    table["generated"] = table["generated"].map(lambda tasks: ", ".join(sorted(tasks)))
    table = table.sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    axes = sorted(filter(is_axis, table.columns))
    headline = headline_columns(table)
    others = sorted(c for c in table.columns if is_metric(c) and c not in headline)
    gains = add_gains(table, [*headline, *others])
    extra = [c for c in (*COST_COLUMNS.values(), *PRUNED_COLUMNS) if c in table]
    table = table[["run", "run_id", "step", "model", *axes, *headline, *gains, *others, "generated", "protocols", *extra]]
    if "pruned_at" in table:
        table["pruned_at"] = table["pruned_at"].astype("Int64")
    table["best"] = False
    key = best_by_column(table)
    if key is not None:
        # The best trained checkpoint: step 0 is each run's baseline, a candidate only when it is all a run has.
        trained = table[(table["step"] > 0) | ~table["run_id"].isin(table.loc[table["step"] > 0, "run_id"])]
        best = trained.dropna(subset=[key]).groupby("run_id")[key].idxmax()
        table.loc[best.values, "best"] = True
    return table


def add_gains(table: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Add, per metric, `gain:<metric>` = the value minus the same run's step-0 value (its
    initialization; NaN for runs without a step-0 record). Returns the new columns in order."""
    baseline = table[table["step"] == 0].drop_duplicates("run_id").set_index("run_id")
    columns = []
    for metric in metrics:
        table[GAIN + metric] = table[metric] - table["run_id"].map(baseline[metric])
        columns.append(GAIN + metric)
    return columns


def markdown(frame: pd.DataFrame, percent: Sequence[str] = ()) -> str:
    """A GitHub Markdown table (no extra dependency); `percent` columns shown x100, 1 decimal."""

    def cell(name: str, value) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "-"
        if name in percent and isinstance(value, (int, float)):
            return f"{100 * value:.1f}"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c).replace("|", "\\|") for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(cell(c, v) for c, v in zip(frame.columns, row, strict=True)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def paper_view(table: pd.DataFrame) -> str:
    """The published table, then each run's best checkpoint and its step 0 (the initialization) on
    real datasets. A number measured on a generated set is never printed here: it does not compare
    with the published ones (results.md has it, in the `generated` column's tasks)."""
    lines = ["| method | " + " | ".join(PAPER_COLUMNS) + " |", "|---|" + "---|" * len(PAPER_COLUMNS)]
    lines += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |" for name, values in PUBLISHED.items()]
    left_out = set()
    for row in table[table["best"]].to_dict("records") if not table.empty else []:
        start = table[(table["run_id"] == row["run_id"]) & (table["step"] == 0)].to_dict("records")
        for shown, what in ((row, f"step {row['step']}"), *((r, "step 0: initialization") for r in start if row["step"])):
            cells = _paper_cells(shown)
            if all(c == "-" for c in cells):
                if shown["generated"]:
                    left_out.add(row["run"])
                continue
            lines.append(f"| ours: {row['run']} ({what}, {row['model']}) | " + " | ".join(cells) + " |")
    note = (
        "Published: ViT-S/16, Kinetics-400, 400 epochs (Jang et al., ICML 2024). Ours: each run's best "
        "checkpoint and its step 0 (the untrained initialization); compare like with like (model, data, "
        "epochs, evaluation protocol in results.md)."
    )
    if left_out:
        note += (
            f" Not shown: {len(left_out)} run(s) evaluated only on generated sets ({', '.join(sorted(left_out)[:5])}"
            f"{' ...' if len(left_out) > 5 else ''}); generated-benchmark numbers do not compare with the published "
            "ones (results.md lists them)."
        )
    return "\n".join(lines) + f"\n\n{note}\n"


def _paper_cells(row: dict) -> list[str]:
    """The published columns of one of our rows, in percent; "-" where missing or measured on a generated set."""
    generated = set(filter(None, str(row.get("generated") or "").split(", ")))
    cells = []
    for ours in PAPER_COLUMNS.values():
        value = row.get(ours)
        missing = value is None or (isinstance(value, float) and math.isnan(value)) or ours.split(":")[0] in generated
        cells.append("-" if missing else f"{100 * value:.1f}")
    return cells


def write_hparams(table: pd.DataFrame, out: Path) -> None:
    """One hparams session per run (its best checkpoint): TensorBoard's HPARAMS tab compares a sweep.
    Written with torch's summary protos and one event file per run (no SummaryWriter thread each)."""
    # torch: ~2 s to import; only writing TensorBoard summaries needs it (--no-tensorboard does not)
    from torch.utils.tensorboard.summary import hparams as hparams_summaries
    from torch.utils.tensorboard.summary import scalar
    from torch.utils.tensorboard.writer import FileWriter

    shutil.rmtree(out, ignore_errors=True)
    for row in table[table["best"]].to_dict("records"):
        hparams = {
            k.removeprefix(AXIS): (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in row.items() if is_axis(k)
        }
        hparams.update(model=row["model"], step=int(row["step"]))
        metrics = {k: v for k, v in row.items() if is_value(k) and isinstance(v, float) and not math.isnan(v)}
        writer = FileWriter(str(out / f"{row['run']}-{row['run_id']}"))
        for summary in hparams_summaries(hparams, metrics):
            writer.add_summary(summary)
        for name, value in metrics.items():
            writer.add_summary(scalar(name, value), int(row["step"]))
        writer.close()


def seed_values(table: pd.DataFrame) -> list[str]:
    """What the over-seeds summary shows: the headline metrics and their gains over step 0."""
    headline = headline_columns(table)
    return [*headline, *(GAIN + h for h in headline if GAIN + h in table)]


@dataclass
class Report:
    table: pd.DataFrame
    out: Path
    warnings: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    seeds: pd.DataFrame | None = None  # eval.over_seeds.over_seeds of the table, when it has a seed axis

    def summary(self) -> str:
        if self.table.empty:
            return "\n".join(["no result records found", *(f"warning: {w}" for w in self.warnings)])
        headline = headline_columns(self.table)
        key = best_by_column(self.table)
        shown = ["run", "step", "best", *filter(is_axis, self.table.columns), *headline]
        shown += [GAIN + key] if key else []
        shown += ["generated"] if self.table["generated"].astype(bool).any() else []
        gpus = "train_gpu_h" in self.table and self.table["train_gpu_h"].fillna(0).gt(0).any()
        shown += [c for c in ("train_gpu_h" if gpus else "train_cpu_h", "pruned_at", "pruned_rank") if c in self.table]
        lines = [markdown(self.table[shown], percent=list(filter(is_value, shown))), ""]
        if self.seeds is not None:
            lines += [f"over seeds ({SEED_AXIS}): mean ± std", markdown_over_seeds(self.seeds, seed_values(self.table)), ""]
        if self.table["generated"].astype(bool).any():
            lines.append(
                "generated: tasks evaluated on generated sets (a camouflage world, eval/synthetic.py); "
                "those numbers do not compare with published ones and paper.md leaves them out"
            )
        lines.append(f"results: {self.out / 'results.csv'} (.md, .table.json), paper view: {self.out / 'paper.md'}")
        lines += [f"plot: {p}" for p in self.plots]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s): " + "; ".join(self.warnings[:5]))
        return "\n".join(lines)


def aggregate_records(
    records: Sequence[ResultRecord],
    out: str | Path,
    warnings: Sequence[str] = (),
    pruned: Mapping[str, Pruned] | None = None,
    plots: bool = True,
    tensorboard: bool = True,
) -> Report:
    """Write the table, its views and plots of `records` into `out`; `warnings` (records skipped
    while reading) are reported with it, `pruned` marks the runs a sweep stopped."""
    out = Path(out)
    table = build_table(records, pruned)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(table, out, list(warnings))
    if table.empty:
        return report
    table.to_csv(out / "results.csv", index=False)
    table.to_json(out / "results.table.json", orient="table", index=False)
    percent = list(filter(is_value, table.columns))
    (out / "results.md").write_text(markdown(table, percent) + "\n")
    (out / "paper.md").write_text(paper_view(table))
    report.seeds = over_seeds(table, seed_values(table))
    for stale in ("over_seeds.csv", "over_seeds.md"):
        (out / stale).unlink(missing_ok=True)
    if report.seeds is not None:
        report.seeds.to_csv(out / "over_seeds.csv", index=False)
        (out / "over_seeds.md").write_text(markdown_over_seeds(report.seeds, seed_values(table)) + "\n")
    if plots:
        report.plots = plot_table(table, headline_columns(table), out / "plots")  # every metric is in the CSV
        if report.seeds is not None:
            report.plots += plot_over_seeds(report.seeds, seed_values(table), out / "plots")
            best = [c for t in TASKS.values() if (c := result_column(t.name, t.best_by)) in seed_values(table)]
            if len(best) > 1:  # several benchmarks (the natural study's real-photo and camouflage sets): one figure
                report.plots.append(plot_benchmarks_side_by_side(report.seeds, best, out / "plots"))
    if tensorboard:
        write_hparams(table, out / "tensorboard")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = HintingArgumentParser(prog="eval/aggregate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", nargs="?", default="runs", help="where to look for record.json files (any depth)")
    p.add_argument("--out", default=None, help="default: DIR/results")
    p.add_argument("--sweep", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    args = p.parse_args(argv)
    if args.sweep is not None:
        p.error(f"which runs belong to a sweep is the launcher's to say: python launch/results.py DIR --sweep {args.sweep}")
    root = Path(args.directory).expanduser()
    if not root.is_dir():
        p.error(f"{root} does not exist; pass the output root (or any directory) that holds the records")
    records, warnings = read_records(find_record_files(root))
    out = Path(args.out).expanduser() if args.out else root / "results"
    report = aggregate_records(records, out, warnings, plots=not args.no_plots, tensorboard=not args.no_tensorboard)
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
