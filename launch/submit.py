"""Submit a pretraining run (or a sweep of them): the front door.

    python launch/submit.py experiment=rsp_vits16_k400 cluster=slurm cluster.nodes=4 model.kl_scale=0.1
    python launch/submit.py experiment=smoke                      # this machine, followed to the end
    python launch/submit.py sweep=smoke                           # a sweep on this machine, followed to its table
    python launch/submit.py sweep=kl_weight --dry-run             # the plan and its problems, nothing submitted
    python launch/submit.py experiment=smoke --dry-run            # resolved config + exact job script
    python launch/submit.py experiment=smoke --cfg job            # the resolved config only (Hydra's convention)
    python launch/submit.py sweep=smoke --unprune RUN             # resume a run successive halving pruned

Everything is validated before anything is queued: a dry run lists every problem and succeeds, a
submission with a problem queues nothing and exits 2. Submitting a run that is already pending,
running or finished starts nothing and says where it is; an incomplete one (killed from outside)
is resubmitted and resumes; a failed one only with --retry-failed; a pruned one only with --unprune.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line(
        "launch/submit.py",
        "what was submitted goes on (python launch/status.py shows it); the same command again submits only what is missing",
    )

import yaml

from core.commandline import HintingArgumentParser
from core.schema import ConfigError, schema_keys, to_dict
from launch.backends import backend_class
from launch.config import EXPERIMENTS_DIR, RunConfig, absolutize, compose
from launch.dispatch import claimed, ensure_generated_data, resources_for, still_as_decided, submit_runs
from launch.follow import follow, follow_sweep
from launch.plan import Plan, plan_sweep, print_plan
from launch.rundir import RunDirectory, run_id
from launch.runstate import SUBMITTABLE, RunState, reconcile
from launch.sweeps.expand import SWEEPS_DIR, load_sweep
from launch.sweeps.rungs import SweepDirectory, unprune
from launch.validation import validate

log = logging.getLogger("launch.submit")


def first_sentence(text: str, width: int = 96) -> str:
    sentence = " ".join(text.split()).split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 3].rsplit(" ", 1)[0] + "..."


def yaml_comment(path: Path) -> str:
    """The comment that opens an experiment or cluster file (after its `# @package` line)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("# "))
    return " ".join(lines)


def sweep_description(path: Path) -> str:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return "(not valid YAML)"
    return str(raw.get("description", "")) if isinstance(raw, dict) else ""


def config_groups() -> str:
    """The config groups and their options, as Hydra's --help lists them (with each one's own words)."""
    lines = ["== Config groups: choose an option with GROUP=OPTION =="]
    groups = {
        "experiment": {p.stem: yaml_comment(p) for p in sorted((EXPERIMENTS_DIR / "experiment").glob("*.yaml"))},
        "cluster": {p.stem: yaml_comment(p) for p in sorted((EXPERIMENTS_DIR / "cluster").glob("*.yaml"))},
        "sweep": {p.stem: sweep_description(p) for p in sorted(SWEEPS_DIR.glob("*.yaml"))},
    }
    where = {"experiment": "experiments/experiment/", "cluster": "experiments/cluster/", "sweep": "sweeps/"}
    for group, items in groups.items():
        lines.append(f"{group} ({where[group]}*.yaml):")
        lines += [f"  {name:<16} {first_sentence(about)}" for name, about in items.items()]
    lines += [
        "",
        "Any key of the schema (launch.config.RunConfig) can be set: model.kl_scale=0.1 cluster.nodes=4;",
        "`--cfg job` prints every key of the resolved config.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = HintingArgumentParser(
        prog="launch/submit.py",
        description=__doc__,
        epilog="Settings are key=value overrides (Hydra syntax), not --flags: e.g. optim.lr=0.001 data.batch_size=32 "
        "cluster.nodes=2. Sections: " + ", ".join(sorted({k.split(".")[0] for k in schema_keys(RunConfig)})) + ". "
        "Quote values with ~, spaces, non-ASCII letters or quotes: 'data.root=\"~/my data\"'.\n\n" + config_groups(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        keys=schema_keys(RunConfig),
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides: experiment=NAME cluster=NAME key=value ... or sweep=NAME")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config / plan, its problems and the job script; submit nothing"
    )
    p.add_argument("--cfg", choices=["job"], help="job: print the resolved config (every run's, for a sweep) and exit")
    p.add_argument("--retry-failed", action="store_true", help="resubmit runs that failed (budgets start over)")
    p.add_argument(
        "--unprune",
        action="append",
        default=[],
        metavar="RUN",
        help="sweeps: resume a pruned run (id, name or directory); repeatable",
    )
    p.add_argument("--no-wait", action="store_true", help="local backend: return once submitted instead of following the run")
    return p.parse_intermixed_args(argv)


def prepare(overrides: Sequence[str], cwd: Path) -> RunConfig:
    return absolutize(compose(list(overrides)), cwd)


def check(cfg: RunConfig) -> list[str]:
    """Every problem of the run (launch.validation; for SLURM, sbatch --test-only too once the rest
    is fine); its warnings and data notes are shown."""
    findings = validate([cfg])
    findings.show()
    return findings.problems


def describe_state(state: RunState) -> str:
    return f"{state.run.path.name}: {state.state} ({state.detail}) in {state.run.path}"


def submit_one(cfg: RunConfig, args: argparse.Namespace) -> int:
    if args.cfg:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.unprune:
        raise ConfigError(["--unprune RUN resumes a run of a sweep: pass sweep=NAME too"], what="command line")
    found = check(cfg)
    if found and not args.dry_run:
        raise ConfigError(found, what="run configuration (nothing was submitted)")
    run = RunDirectory.for_config(cfg)
    state = reconcile([run], Path(cfg.output_root))[0]
    wanted = SUBMITTABLE + (("failed",) if args.retry_failed else ())
    action = "submit" if state.state in wanted else "nothing"
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        print(f"run {cfg.name} (id {run_id(cfg)}) -> {run.path}\nstate: {state.state} ({state.detail})\naction: {action}")
        backend = backend_class(cfg.cluster.backend)(Path(cfg.output_root) / ".jobs" / "DRYRUN")
        if (script := backend.job_script(resources_for(cfg))) is not None:
            print("\n# sbatch script (submitted as is, with the job's pickle):")
            print(script)
        if found:
            print(f"\n{len(found)} problem(s); a submission would queue nothing until they are fixed:")
            print("\n".join(f"  - {p}" for p in found))
        return 0
    if action == "nothing":
        hint = "; pass --retry-failed to run it again" if state.state == "failed" else ""
        print(f"nothing submitted: {describe_state(state)}{hint}")
        return 0
    ensure_generated_data(cfg)
    with claimed([cfg]):  # another submit of this run may have decided the same meanwhile
        taken = still_as_decided([state], Path(cfg.output_root))[0]
        if taken is not None:
            print(f"nothing submitted: another submit took this run meanwhile: {describe_state(taken)}")
            return 0
        job_ids = submit_runs([cfg], [run], [resources_for(cfg)], cfg.cluster.backend, Path(cfg.output_root))
    print(f"submitted {cfg.cluster.backend} job {job_ids[0]} for run {cfg.name} (id {run_id(cfg)})\nrun directory: {run.path}")
    if backend_class(cfg.cluster.backend).followed_in_terminal and cfg.cluster.wait and not args.no_wait:
        return follow(run, job_ids[0])
    return 0


def submit_sweep(name: str, extra: Sequence[str], args: argparse.Namespace, cwd: Path) -> int:
    """Plan (and unless --dry-run, submit) a sweep; print the plan table and its problems. On the
    local backend the terminal then follows the sweep to its results table (cluster.wait)."""
    sweep = load_sweep(name)
    plan = plan_sweep(sweep, extra, cwd, retry_failed=args.retry_failed)
    if args.cfg:
        for row in plan.rows:
            print(f"# run {row.run.name} (id {run_id(row.run.cfg)}): {' '.join(row.run.overrides)}")
            print(yaml.safe_dump(to_dict(row.run.cfg), sort_keys=False), end="---\n")
        return 0
    if args.unprune and not args.dry_run:
        if plan.problems:  # refused below, before anything is unpruned
            print_plan(plan)
            return plan.submit()
        unprune_runs(plan, args.unprune)
        plan = plan_sweep(sweep, extra, cwd, retry_failed=args.retry_failed)
    print_plan(plan)
    if args.dry_run:
        return 0
    rc = plan.submit()
    cfg = plan.rows[0].run.cfg
    followed = backend_class(plan.backend).followed_in_terminal
    if rc == 0 and followed and cfg.cluster.wait and not args.no_wait and plan.pending_rows():
        return follow_sweep([r.rundir for r in plan.rows], SweepDirectory(plan.output_root, plan.sweep.name))
    return rc


def unprune_runs(plan: Plan, names: Sequence[str]) -> None:
    """--unprune: find each named run among the sweep's (id, name or directory name), check that
    every one is pruned, then bring them back (nothing is unpruned when one name is wrong)."""
    pruned = [r for r in plan.rows if r.rundir.exists and r.rundir.prune_marker() is not None]
    chosen, wrong = [], []
    for name in names:
        rows = [r for r in plan.rows if name in (run_id(r.run.cfg), r.run.name, r.rundir.path.name)]
        if len(rows) != 1 or rows[0] not in pruned:
            what = "is not pruned" if len(rows) == 1 else f"names {len(rows)} runs of sweep {plan.sweep.name}"
            wrong.append(f"--unprune {name!r} {what}; the sweep's pruned runs: {', '.join(r.run.name for r in pruned) or 'none'}")
        else:
            chosen.append(rows[0])
    if wrong:
        raise ConfigError(wrong, what="command line (nothing was unpruned or submitted)")
    for row in chosen:  # exempt in the sweep that pruned it (a run may belong to several)
        marker = unprune(SweepDirectory(plan.output_root, row.rundir.prune_marker().sweep), row.rundir)
        print(f"unpruned {row.run.name} (pruned at step {marker.rung}): it resumes from its last checkpoint")


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
        return submit_one(prepare(args.overrides, Path.cwd()), args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
