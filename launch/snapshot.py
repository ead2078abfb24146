"""A copy of the code taken at submit time, which the job imports instead of the live checkout.

Edits made while a job waits in the queue or between its requeued attempts never leak into it.
Snapshots are content-addressed by code version (commit + hash of uncommitted changes) under
<output_root>/.code/<version>/, so resubmitting unchanged code reuses one copy. The job puts the
snapshot first on PYTHONPATH and exports RSP_CODE_VERSION (recorded in every checkpoint).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rsp.provenance import REPO_ROOT, describe_tree

PACKAGES = ("rsp", "launch", "eval", "experiments", "sweeps")  # what a job needs to run
COMPLETE = ".complete"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    version: str


def source_files(root: Path) -> list[Path]:
    """Files of the packages a job needs: tracked and untracked-but-not-ignored (git), or a walk."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *PACKAGES],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        files = [Path(p) for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        files = [p.relative_to(root) for pkg in PACKAGES for p in (root / pkg).rglob("*") if p.is_file()]
    return [f for f in files if "__pycache__" not in f.parts and (root / f).is_file()]


def take_snapshot(dest_root: str | Path, root: Path = REPO_ROOT) -> Snapshot:
    version = describe_tree(root)
    dest = Path(dest_root) / version
    if (dest / COMPLETE).exists() and version != "unknown":
        return Snapshot(dest, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=dest.parent))
    for rel in source_files(root):
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    (staging / COMPLETE).write_text(version + "\n")
    if dest.exists():  # an incomplete copy from a killed submit, or an "unknown" version
        shutil.rmtree(dest)
    staging.rename(dest)
    return Snapshot(dest, version)
