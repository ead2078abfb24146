"""Download and prepare the evaluation datasets (for users with network access): one subcommand per
registered task (eval/registry.py), each the task's own preparation step.

    python -m eval.prepare davis --root data/DAVIS [--resize 880x480]
    python -m eval.prepare jhmdb --root data/JHMDB
    python -m eval.prepare vip --root data/VIP_Fine --archive ~/Downloads/VIP_Fine.zip

DAVIS-2017 trainval 480p comes from the official ETH server. `--resize 880x480` also writes the
frames and masks resized with NEAREST to JPEGImages/880x480 and Annotations/880x480, the
pre-resize RSP's published numbers used (evaluate with davis_resolution=880x480; the network
still sees 832x480). JHMDB's frames, joints and splits come from the dataset's file server (the
URLs as published at the time of writing; `--base-url` if they move). VIP is distributed through
cloud drives that need a browser: download VIP_Fine yourself and pass the archive.
`--downloads DIR` keeps (and reuses) the archives; an archive already there is not fetched again.
Each command ends by reading the prepared root with the evaluator's own reader.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("python -m eval.prepare", "downloaded archives are kept; run it again to continue")

from core.atomicio import writable
from eval.registry import TASKS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.prepare", description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK", help=", ".join(TASKS))
    for task in TASKS.values():
        sub = tasks.add_parser(task.name, help=task.title, description=task.title)
        sub.add_argument("--root", type=Path, required=True, help="where the prepared dataset goes")
        task.add_prepare_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if reason := writable(args.root):
        parser.error(f"--root {args.root} cannot be written ({reason}); choose another folder")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        items = TASKS[args.task].prepare(args)
    except (OSError, ValueError) as err:  # no network, a missing or damaged archive: one line, no traceback
        print(f"error: {args.task}: {err}", file=sys.stderr)
        return 2
    print(f"{args.task}: {len(items)} evaluation videos ready in {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
