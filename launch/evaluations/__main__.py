"""python -m launch.evaluations schedule RUN_DIR [--step N ...] --backend B   (what the training job calls)
python -m launch.evaluations backfill [OUTPUT_ROOT] [--backend B] [--all-checkpoints] [--retry-failed]"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import launch.evaluations

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("python -m launch.evaluations", "submitted evaluations go on; run it again for the rest")

from core.atomicio import writable
from core.commandline import HintingArgumentParser
from launch.advance import Missing, advance
from launch.backends import BACKENDS, backend_class
from launch.rundir import RunDirectory, output_root_problem


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    p = HintingArgumentParser(
        prog="python -m launch.evaluations",
        description=launch.evaluations.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("schedule", help="submit the evaluations of one run's checkpoint(s)")
    s.add_argument("run_dir")
    s.add_argument("--step", type=int, action="append")
    s.add_argument("--backend", required=True, choices=sorted(BACKENDS))
    b = sub.add_parser("backfill", help="evaluate existing checkpoints that lack results")
    b.add_argument("output_root", nargs="?", default="runs")
    b.add_argument("--backend", default=None, choices=sorted(BACKENDS), help="default: each run's own backend")
    b.add_argument("--all-checkpoints", action="store_true", help="not only milestones")
    b.add_argument("--retry-failed", action="store_true")
    args = p.parse_args(argv)
    if args.command == "schedule":  # the training job's milestone hook (launch.advance.schedule_for_checkpoint)
        run = RunDirectory(args.run_dir)
        report = advance(
            run.path.parent,
            role="training job",
            runs=[run],
            decide=False,
            recover_lost=not backend_class(args.backend).in_process,
            missing=Missing(args.backend, args.step),
        )
        print(" ".join(report.submitted.get(run.path.name, [])))
        return 0
    root = Path(args.output_root).expanduser()
    if (problem := output_root_problem(root)) is not None:
        p.error(problem)
    if (reason := writable(root)) is not None:  # claims, records and job folders are written there
        p.error(f"output root {root} cannot be written ({reason}); backfill writes claims and records there")
    if not any(root.glob("*/run.json")):
        print(f"no runs under {root}: nothing to backfill (runs live in OUTPUT_ROOT/<name>-<id>/run.json)")
        return 0
    missing = Missing(args.backend, None, args.retry_failed, args.all_checkpoints)
    report = advance(root, role="backfill", missing=missing)
    for line in report.lines():
        print(line)
    for line in report.submission_summary():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
