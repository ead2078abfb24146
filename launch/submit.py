"""Submit a pretraining run (or a sweep of them): the front door.

    python launch/submit.py experiment=rsp_vits16_k400 cluster=slurm cluster.nodes=4 model.kl_scale=0.1
    python launch/submit.py experiment=smoke                      # this machine, followed to the end
    python launch/submit.py sweep=kl_weight --dry-run             # the plan, nothing submitted
    python launch/submit.py experiment=smoke --dry-run            # resolved config + exact job script

Everything is validated before anything is queued. Submitting a run that is already pending,
running or finished starts nothing and says where it is; an incomplete one (killed from outside)
is resubmitted and resumes; a failed one only with --retry-failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import yaml

from launch.backends import SlurmBackend
from launch.config import RunConfig, compose
from launch.follow import follow
from launch.plan import plan_sweep, print_plan
from launch.rundir import RunDirectory, run_id
from launch.state import SUBMITTABLE, RunState, reconcile
from launch.submission import ensure_generated_data, resources_for, submit_runs
from launch.sweep import load_sweep
from launch.validate import absolutize, validate, warnings
from rsp.commandline import HintingArgumentParser
from rsp.schema import ConfigError, schema_keys, to_dict

log = logging.getLogger("launch.submit")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = HintingArgumentParser(
        prog="launch/submit.py",
        description=__doc__,
        epilog="Settings are key=value overrides (Hydra syntax), not --flags: e.g. optim.lr=0.001 data.batch_size=32 "
        "cluster.nodes=2. Sections: " + ", ".join(sorted({k.split(".")[0] for k in schema_keys(RunConfig)})) + ". "
        "Quote values with ~, spaces, non-ASCII letters or quotes: 'data.root=\"~/my data\"'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        keys=schema_keys(RunConfig),
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides: experiment=NAME cluster=NAME key=value ... or sweep=NAME")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config / plan and the job script; submit nothing")
    p.add_argument("--retry-failed", action="store_true", help="resubmit runs that failed (budgets start over)")
    p.add_argument("--no-wait", action="store_true", help="local backend: return once submitted instead of following the run")
    return p.parse_intermixed_args(argv)


def prepare(overrides: Sequence[str], cwd: Path) -> RunConfig:
    return absolutize(compose(list(overrides)), cwd)


def check(cfg: RunConfig) -> RunConfig:
    script = None
    if cfg.cluster.backend == "slurm":
        script = SlurmBackend(Path(cfg.output_root) / ".jobs" / "validate").sbatch_script(resources_for(cfg))
    validate(cfg, sbatch_script=script)
    for warning in warnings([cfg]):
        print(f"warning: {warning}", file=sys.stderr)
    return cfg


def describe_state(state: RunState) -> str:
    return f"{state.run.path.name}: {state.state} ({state.detail}) in {state.run.path}"


def submit_one(cfg: RunConfig, args: argparse.Namespace) -> int:
    run = RunDirectory.for_config(cfg)
    state = reconcile([run], Path(cfg.output_root))[0]
    wanted = SUBMITTABLE + (("failed",) if args.retry_failed else ())
    action = "submit" if state.state in wanted else "nothing"
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        print(f"run {cfg.name} (id {run_id(cfg)}) -> {run.path}\nstate: {state.state} ({state.detail})\naction: {action}")
        if cfg.cluster.backend == "slurm":
            print("\n# sbatch script (submitted as is, with the job's pickle):")
            print(SlurmBackend(Path(cfg.output_root) / ".jobs" / "DRYRUN").sbatch_script(resources_for(cfg)))
        return 0
    if action == "nothing":
        hint = "; pass --retry-failed to run it again" if state.state == "failed" else ""
        print(f"nothing submitted: {describe_state(state)}{hint}")
        return 0
    ensure_generated_data(cfg)
    job_ids = submit_runs([cfg], [run], [resources_for(cfg)], cfg.cluster.backend, Path(cfg.output_root))
    print(f"submitted {cfg.cluster.backend} job {job_ids[0]} for run {cfg.name} (id {run_id(cfg)})\nrun directory: {run.path}")
    if cfg.cluster.backend == "local" and cfg.cluster.wait and not args.no_wait:
        return follow(run, job_ids[0])
    return 0


def submit_sweep(name: str, extra: Sequence[str], args: argparse.Namespace, cwd: Path) -> int:
    """Plan (and unless --dry-run, submit) a sweep; print the plan table."""
    plan = plan_sweep(load_sweep(name), extra, cwd, retry_failed=args.retry_failed)
    print_plan(plan)
    if args.dry_run:
        return 0
    return plan.submit()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        sweeps = [o for o in args.overrides if o.startswith("sweep=")]
        if sweeps:
            rest = [o for o in args.overrides if not o.startswith("sweep=")]
            problems = [f"sweep= is given more than once ({', '.join(sweeps)}); submit one sweep at a time"] * (len(sweeps) > 1)
            problems += [
                f"{o}: a sweep's experiment is its file's `experiment:` key; remove {o} from the command line"
                for o in rest
                if o.partition("=")[0].lstrip("+") == "experiment"
            ]
            if problems:
                raise ConfigError(problems, what="command line")
            return submit_sweep(sweeps[0].split("=", 1)[1], rest, args, Path.cwd())
        cfg = check(prepare(args.overrides, Path.cwd()))
        return submit_one(cfg, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
