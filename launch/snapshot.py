"""A copy of the code taken at submit time, which the job imports instead of the live checkout.

Edits made while a job waits in the queue or between its requeued attempts never leak into it.
Snapshots are content-addressed (core.provenance: the commit, plus a hash of every file's content
when they differ from it) under <output_root>/.code/<version>/: the snapshot holds exactly the
bytes its version was computed from (read once), so resubmitting unchanged code reuses one copy
and any edit, to an untracked module too, gets a new one. The job puts the snapshot first on
PYTHONPATH and exports RSP_CODE_VERSION (recorded in every checkpoint).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.provenance import CODE_PATHS, REPO_ROOT, read_tree, tree_version

PACKAGES = CODE_PATHS
COMPLETE = ".complete"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    version: str


def take_snapshot(dest_root: str | Path, root: Path = REPO_ROOT) -> Snapshot:
    files = read_tree(root)
    version = tree_version(files, root)
    dest = Path(dest_root) / version
    if (dest / COMPLETE).exists():
        return Snapshot(dest, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=dest.parent))
    for rel, (content, mode) in files.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chmod(target, mode)
    (staging / COMPLETE).write_text(version + "\n")
    if dest.exists() and not (dest / COMPLETE).exists():  # an incomplete copy from a killed submit
        shutil.rmtree(dest, ignore_errors=True)
    try:
        staging.rename(dest)
    except OSError:  # another submit of the same version won the race: its copy holds the same bytes
        shutil.rmtree(staging, ignore_errors=True)
        if not (dest / COMPLETE).exists():
            raise
    return Snapshot(dest, version)
