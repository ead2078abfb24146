"""The rules of one run's config, all at once: every field rule of the training config (rsp.config),
the cluster (launch.validation.cluster), the effective batch against the recipe, the data
(launch.validation.data), the evaluation (launch.validation.evaluation), the time limit against the
checkpoint, the devices (launch.validation.devices), a name, and an output root that can be
written (a read-only filesystem fails here, not hours later in the queue)."""

from __future__ import annotations

import shutil
from pathlib import Path

from core.atomicio import size_text, writable
from core.schema import ConfigError, diff, identity_dict
from launch.config import RunConfig, train_config
from launch.rundir import RunDirectory, slug
from launch.validation.cluster import checkpoint_size, cluster_problems, time_problems
from launch.validation.data import data_problems, survey
from launch.validation.devices import device_problems
from launch.validation.evaluation import evaluation_problems
from rsp.optim import resolve_schedule
from rsp.video import DataError


def batch_problems(cfg: RunConfig) -> list[str]:
    c, want = cfg.cluster, cfg.optim.effective_batch
    have = c.world_size * cfg.data.batch_size * cfg.optim.accum_iter
    if want is None or have == want or want < 1 or have < 1:  # values out of range are their own rules' to report
        return []
    per_step = c.world_size * cfg.data.batch_size
    fix = (
        f"set optim.accum_iter={want // per_step}"
        if want % per_step == 0
        else f"choose data.batch_size and optim.accum_iter so that {c.world_size} x batch x accum = {want}"
    )
    return [
        f"effective batch = {c.nodes} node(s) x {c.processes_per_node} process(es) x data.batch_size {cfg.data.batch_size} "
        f"x optim.accum_iter {cfg.optim.accum_iter} = {have} videos, but the recipe's optim.effective_batch is {want}; {fix} "
        "(or set optim.effective_batch=null to train with a different batch on purpose)"
    ]


def known_total_steps(cfg: RunConfig) -> int | None:
    """The run's length in optimizer steps, when it can be known before the run starts:
    schedule.total_steps, or the schedule resolved against the number of videos its labels file
    lists (or it will generate). None when neither is known (no data yet)."""
    if cfg.schedule.total_steps:
        return cfg.schedule.total_steps
    d, world = cfg.data, cfg.cluster.world_size
    videos = d.synthetic_videos or None
    if videos is None and d.root and Path(d.root).is_dir():
        try:
            videos = survey(Path(d.root), d.labels).videos
        except (DataError, OSError):  # reported by data_problems
            return None
    if not isinstance(videos, int) or world < 1 or d.batch_size < 1 or videos < d.batch_size * world:
        return None
    try:
        return resolve_schedule(train_config(cfg), videos // (d.batch_size * world), world).total_steps
    except ConfigError:  # the batch does not fit the data: reported by data_problems
        return None


def problems(cfg: RunConfig, checkpoint_bytes: float | None = None) -> list[str]:
    """Every problem of one run's config (never just the first); SLURM's own judgement of the job
    comes after these, in launch.validation.validate."""
    if checkpoint_bytes is None:
        checkpoint_bytes = checkpoint_size(cfg)
    out = cfg.problems() + cluster_problems(cfg.cluster) + batch_problems(cfg) + data_problems(cfg)
    if not cfg.name.strip():
        out.append(f"name ({cfg.name!r}) is empty; pass name=NAME (the readable part of the run directory's name)")
    out += evaluation_problems(cfg.evaluation, cfg.model.name) + time_problems(cfg, checkpoint_bytes) + device_problems(cfg)
    if not cfg.output_root.strip():
        out.append("output_root is empty; pass output_root=DIR (runs live in DIR/<name>-<id>/)")
    elif "\n" in cfg.output_root or "\r" in cfg.output_root:
        out.append(f"output_root ({cfg.output_root!r}) contains a line break; choose a path without one")
    elif (reason := writable(Path(cfg.output_root))) is not None:
        out.append(f"output_root ({cfg.output_root}) is not writable: {reason}; choose another output_root")
    else:
        out += disk_problems(cfg, checkpoint_bytes)
    return out


def checkpoints_kept(cfg: RunConfig, total_steps: int) -> int:
    """How many checkpoints the run holds at its fullest: the newest checkpoint.keep_last ordinary
    ones, one more being written, and every milestone (kept for good: step 0, every
    milestone_every_steps, the last step)."""
    c = cfg.checkpoint
    milestones = 1 + int(c.initial_milestone) + (total_steps // c.milestone_every_steps if c.milestone_every_steps > 0 else 0)
    return c.keep_last + 1 + milestones


def disk_problems(cfg: RunConfig, checkpoint_bytes: float) -> list[str]:
    """The checkpoints the run will keep against the free space under output_root now (other runs
    writing there meanwhile are not counted: a floor, not a reservation)."""
    total = known_total_steps(cfg)
    if not checkpoint_bytes or total is None or cfg.checkpoint.keep_last < 1 or cfg.checkpoint.milestone_every_steps < 0:
        return []
    existing = Path(cfg.output_root)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    kept = checkpoints_kept(cfg, total)
    need = kept * checkpoint_bytes
    if need <= free:
        return []
    return [
        f"output_root ({cfg.output_root}) has {size_text(free)} free, but the run keeps up to {kept} checkpoints of "
        f"{size_text(checkpoint_bytes)} ({size_text(need)}: checkpoint.keep_last {cfg.checkpoint.keep_last} + one "
        f"being written + {kept - cfg.checkpoint.keep_last - 1} milestone(s) over {total} steps); free space there, choose "
        "another output_root, or keep fewer (checkpoint.keep_last, checkpoint.milestone_every_steps)"
    ]


def same_name_warnings(cfg: RunConfig, most: int = 3) -> list[str]:
    """[a warning] when `cfg` is a new run and output_root holds a run of the same name whose
    result-affecting settings differ in at most `most` keys: raising schedule.total_steps "to train
    longer", or lowering the batch after running out of memory, starts a new run at step 0 (a run
    never continues another's checkpoints, docs/launching.md#launching), which the user may not expect."""
    if RunDirectory.for_config(cfg).exists:
        return []
    mine = {**identity_dict(train_config(cfg)), "world_size": cfg.cluster.world_size}
    closest: tuple[str, list[str]] | None = None
    for path in sorted(Path(cfg.output_root).glob(f"{slug(cfg.name)}-*/run.json")):
        try:
            other = RunDirectory(path.parent).config()
        except ConfigError:  # a damaged run: status names it
            continue
        found = diff({**identity_dict(train_config(other)), "world_size": other.cluster.world_size}, mine)
        if found and (closest is None or len(found) < len(closest[1])):
            closest = (path.parent.name, found)
    if closest is None or len(closest[1]) > most:
        return []
    return [
        f"{cfg.output_root} holds run {closest[0]} of the same name, with other settings ({'; '.join(closest[1])}): "
        "this is a new run and trains from step 0, since a run never continues another's checkpoints"
    ]
