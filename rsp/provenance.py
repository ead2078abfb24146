"""Which code produced a checkpoint or a number.

The launcher snapshots the repository at submit time and exports RSP_CODE_VERSION for the job
(git commit, plus a hash of uncommitted changes). Outside the launcher the version is read from
git directly; "unknown" when neither is available.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30).stdout


def describe_tree(root: Path = REPO_ROOT) -> str:
    """'<commit>' or '<commit>+dirty.<hash of the diff and untracked files>' for a git checkout."""
    try:
        commit = _git("rev-parse", "--short=12", "HEAD", cwd=root).strip()
        status = _git("status", "--porcelain", "--untracked-files=normal", cwd=root)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not status.strip():
        return commit
    digest = hashlib.sha256(_git("diff", "HEAD", cwd=root).encode() + status.encode()).hexdigest()[:8]
    return f"{commit}+dirty.{digest}"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    return os.environ.get("RSP_CODE_VERSION") or describe_tree()
