"""Which code produced a checkpoint or a number: a version that addresses the code's contents.

    <commit>                       the files a job runs are exactly the commit's
    <commit>+dirty.<hash>          they differ from it (edited, added, untracked or deleted files):
                                   <hash> covers the content of every file, so any edit, to an
                                   untracked module too, is a new version
    nogit.<hash>                   no git checkout: the content hash alone

The files are those of CODE_PATHS (what a job imports or reads: tracked and untracked files that
git does not ignore, or every file without git). The launcher snapshots exactly the bytes it
hashed (launch.snapshot) and exports RSP_CODE_VERSION for the job; outside the launcher the
version is computed from the checkout.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CODE_PATHS = ("core", "rsp", "launch", "eval", "experiments", "sweeps")  # what a job needs to run


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30).stdout


def source_files(root: Path = REPO_ROOT) -> list[str]:
    """Paths (relative, sorted) of the files under CODE_PATHS: tracked and untracked-but-not-ignored
    (git), or every file (a walk) outside a git checkout."""
    try:
        out = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *CODE_PATHS, cwd=root)
        files = [p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        files = [str(p.relative_to(root)) for pkg in CODE_PATHS for p in (root / pkg).rglob("*") if p.is_file()]
    return sorted({f for f in files if "__pycache__" not in Path(f).parts and (root / f).is_file()})


def read_tree(root: Path = REPO_ROOT) -> dict[str, tuple[bytes, int]]:
    """path -> (content, mode) of every source file, read once (the snapshot writes these bytes)."""
    out = {}
    for rel in source_files(root):
        path = root / rel
        out[rel] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return out


def _blob_id(content: bytes, length: int) -> str:
    """git's object id of a file with this content (sha1, or sha256 in a sha256 repository)."""
    digest = hashlib.sha1 if length == 40 else hashlib.sha256
    return digest(b"blob %d\0" % len(content) + content).hexdigest()


def tree_version(files: dict[str, tuple[bytes, int]], root: Path = REPO_ROOT) -> str:
    """The version of `files` (read_tree): the commit when they are exactly HEAD's, else the
    commit (if any) plus a hash of every path and content."""
    try:
        commit = _git("rev-parse", "--short=12", "HEAD", cwd=root).strip()
        listing = _git("ls-tree", "-r", "-z", "HEAD", "--", *CODE_PATHS, cwd=root)
    except (OSError, subprocess.SubprocessError):
        commit, listing = "", ""
    head = {}
    for entry in filter(None, listing.split("\0")):
        meta, _, path = entry.partition("\t")
        head[path] = meta.split()[2]
    if commit and set(head) == set(files) and all(_blob_id(files[p][0], len(i)) == i for p, i in head.items()):
        return commit
    digest = hashlib.sha256()
    for path in sorted(files):
        content = files[path][0]
        digest.update(f"{path}\0{len(content)}\0".encode() + content)
    return f"{commit}+dirty.{digest.hexdigest()[:12]}" if commit else f"nogit.{digest.hexdigest()[:12]}"


def describe_tree(root: Path = REPO_ROOT) -> str:
    return tree_version(read_tree(root), root)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    return os.environ.get("RSP_CODE_VERSION") or describe_tree()
