"""What SLURM reports, read-only: job states (squeue, then sacct for ended jobs), every allocation of
a job from accounting (`sacct -D -X`: one row per start, requeues included), and the cluster's
configuration (`scontrol show config`). launch/backends.py submits; this module only asks.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default MaxArraySize (localslurm/scripts/start.sh repeats it: bash cannot import it)
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "PREEMPTED",
}


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """States of many jobs with one squeue call (active jobs) and one sacct call (the rest)."""
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%T", "--jobs", ",".join(sorted(set(job_ids)))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        states[jid.strip()] = state.strip()
    rest = [j for j in job_ids if j not in states]
    if rest:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(set(rest)))],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in out.stdout.splitlines():
            jid, _, state = line.partition("|")
            states.setdefault(jid.strip(), state.split()[0] if state else "UNKNOWN")
    return {j: states.get(j, "UNKNOWN") for j in job_ids}


@dataclass(frozen=True)
class Allocation:
    """One allocation of a job as SLURM's accounting saw it: one row of `sacct -D -X` (a requeued job
    has one per time it started; an array task is its own job)."""

    job_id: str  # as we submitted it: "123" or "123_4"
    state: str
    submit: float  # unix time it became eligible (a requeue resubmits it)
    start: float | None  # None: never started
    end: float | None  # None: still running
    elapsed_s: int  # SLURM's ElapsedRaw
    gpus: int  # from AllocTRES (gres/gpu=N)
    cpus: int  # from AllocTRES (cpu=N)


SACCT_FIELDS = "JobID,State,Submit,Start,End,ElapsedRaw,AllocTRES"


def _sacct_time(text: str) -> float | None:
    if not text or text in ("Unknown", "None"):
        return None
    return datetime.fromisoformat(text).timestamp()  # sacct prints local time without a zone, as does fromisoformat


def parse_alloc_tres(text: str) -> dict[str, int]:
    """AllocTRES "billing=2,cpu=2,gres/gpu=1,mem=1G,node=1" -> {"cpus": 2, "gpus": 1}."""
    tres = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    typed = [int(v) for k, v in tres.items() if k.startswith("gres/gpu:") and v.isdigit()]  # gres/gpu:a100=2
    gpus = int(tres["gres/gpu"]) if tres.get("gres/gpu", "").isdigit() else sum(typed)  # SLURM lists both forms
    return {"cpus": int(tres["cpu"]) if tres.get("cpu", "").isdigit() else 0, "gpus": gpus}


def parse_sacct_allocations(text: str) -> dict[str, list[Allocation]]:
    """`sacct -D -X -P -n -o SACCT_FIELDS` output -> job id -> its allocations, oldest first."""
    out: dict[str, list[Allocation]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 7 or not parts[0]:
            continue
        job, state, submit, start, end, elapsed, tres = parts
        alloc = parse_alloc_tres(tres)
        out.setdefault(job, []).append(
            Allocation(
                job_id=job,
                state=state.split()[0] if state else "UNKNOWN",
                submit=_sacct_time(submit) or 0.0,
                start=_sacct_time(start),
                end=_sacct_time(end),
                elapsed_s=int(elapsed) if elapsed.isdigit() else 0,
                gpus=alloc["gpus"],
                cpus=alloc["cpus"],
            )
        )
    for rows in out.values():
        rows.sort(key=lambda a: (a.start is None, a.start or 0.0, a.submit))
    return out


def slurm_allocations(job_ids: Sequence[str]) -> dict[str, list[Allocation]]:
    """Every allocation of many jobs (each requeue of a job included) from ONE sacct call."""
    if not job_ids:
        return {}
    out = subprocess.run(
        ["sacct", "-D", "-X", "-P", "-n", "-o", SACCT_FIELDS, "-j", ",".join(sorted(set(job_ids)))],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SLURM_TIME_FORMAT": "standard"},  # ISO 8601 local time, whatever the user's setting
    )
    if out.returncode != 0:
        raise RuntimeError(f"sacct failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return parse_sacct_allocations(out.stdout)


def total_cpus(cpus_per_node: str) -> int:
    """SLURM_JOB_CPUS_PER_NODE ("4(x2),2": 4 CPUs on each of 2 nodes, then 2) -> 10; 0 if empty."""
    total = 0
    for count, repeat in re.findall(r"(\d+)(?:\(x(\d+)\))?", cpus_per_node):
        total += int(count) * int(repeat or 1)
    return total


def parse_slurm_config(text: str) -> dict[str, str]:
    """`scontrol show config` output as key -> value."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def slurm_config() -> dict[str, str]:
    """`scontrol show config` of the cluster SLURM_CONF points at ({} when it cannot be asked)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_slurm_config(out)


def max_array_size() -> int:
    """The cluster's MaxArraySize (an array's indices run 0..MaxArraySize-1)."""
    return int(slurm_config().get("MaxArraySize", DEFAULT_MAX_ARRAY_SIZE))
