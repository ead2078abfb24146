"""The results of an output root: the launcher's join of run directories, result records and prune
markers, handed to eval/aggregate.py, which works on records alone.

    python launch/results.py [OUTPUT_ROOT] [--sweep NAME] [--out DIR] [--no-plots] [--no-tensorboard]

Writes into DIR (default OUTPUT_ROOT/results, or OUTPUT_ROOT/results/sweep-NAME for one sweep's runs)
the files eval/aggregate.py lists. What the join knows and eval does not: where a run's records are
(<run>/evals/step_*/<task>-<hash>/record.json, docs/formats.md#evaluation-directories), which runs
belong to a sweep (their sweeps/<name>.json, docs/formats.md#sweep-membership), and which runs the
sweep's successive halving pruned (their pruned.json, launch/sweeps/rungs.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("launch/results.py", "the tables are written whole or not at all; run it again")

from core.atomicio import writable
from core.commandline import HintingArgumentParser
from core.schema import ConfigError
from eval.aggregate import Pruned, Report, aggregate_records
from eval.records import RECORD_NAME, read_records
from launch.rundir import RunDirectory, output_root_problem, sweep_name


def run_directories(root: Path, sweep: str | None = None) -> list[RunDirectory]:
    """Every run directory under `root` (of `sweep` only: those with its membership file)."""
    runs = [RunDirectory(path.parent) for path in sorted(root.glob("*-*/run.json"))]
    return [run for run in runs if sweep is None or run.in_sweep(sweep)]


def record_files(root: Path, runs: Sequence[RunDirectory] | None = None) -> list[Path]:
    """The result records under `root` (of `runs` only, when given)."""
    pattern = f"evals/step_*/*/{RECORD_NAME}"
    if runs is None:
        return sorted(root.glob(f"*/{pattern}"))
    return sorted(path for run in runs for path in run.path.glob(pattern))


def pruned_runs(runs: Sequence[RunDirectory]) -> dict[str, Pruned]:
    """Run id -> how a sweep pruned it, for the runs with a readable prune marker."""
    out = {}
    for run in runs:
        try:
            marker = run.prune_marker()
        except ConfigError:  # unreadable or of another format: the run is shown unpruned
            continue
        if marker is not None:
            run_id = run.path.name.rsplit("-", 1)[1]
            out[run_id] = Pruned(marker.rung, marker.rank, marker.of, marker.value)
    return out


def default_out(root: Path, sweep: str | None) -> Path:
    """Where the tables and plots go without --out: OUTPUT_ROOT/results, or OUTPUT_ROOT/results/sweep-NAME."""
    return root / "results" / (f"sweep-{sweep}" if sweep else "")


def aggregate_runs(
    output_root: str | Path,
    out: str | Path | None = None,
    plots: bool = True,
    tensorboard: bool = True,
    sweep: str | None = None,
) -> Report:
    """Aggregate every record under `output_root` (of `sweep`'s runs only, when given) into `out`
    (default OUTPUT_ROOT/results, or OUTPUT_ROOT/results/sweep-<name>)."""
    root = Path(output_root)
    out = Path(out) if out else default_out(root, sweep)
    runs = run_directories(root, sweep)
    records, warnings = read_records(record_files(root, runs if sweep is not None else None))
    return aggregate_records(records, out, warnings, pruned_runs(runs), plots=plots, tensorboard=tensorboard)


def main(argv: Sequence[str] | None = None) -> int:
    p = HintingArgumentParser(prog="launch/results.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_root", nargs="?", default="runs")
    p.add_argument("--sweep", default=None, help="only the runs of this sweep (default --out: OUTPUT_ROOT/results/sweep-NAME)")
    p.add_argument("--out", default=None, help="default: OUTPUT_ROOT/results")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    args = p.parse_args(argv)
    args.sweep = sweep_name(args.sweep) if args.sweep is not None else None
    root = Path(args.output_root).expanduser()
    if (problem := output_root_problem(root)) is not None:
        p.error(problem)
    if args.sweep is not None and not run_directories(root, args.sweep):
        known = sorted({p.stem for p in root.glob("*/sweeps/*.json")})
        p.error(f"--sweep {args.sweep} matches no run under {root}; sweeps with runs there: {', '.join(known) or 'none'}")
    out = Path(args.out).expanduser() if args.out else default_out(root, args.sweep)
    if reason := writable(out):
        given = "--out" if args.out else "--out (default: under the output root)"
        p.error(f"{given} {out} cannot be written ({reason}); choose another folder with --out DIR")
    report = aggregate_runs(
        root,
        out,
        plots=not args.no_plots,
        tensorboard=not args.no_tensorboard,
        sweep=args.sweep,
    )
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
