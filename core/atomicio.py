"""Crash-safe file writes: a temporary file in the same directory, fsync, atomic rename, fsync of
the directory. A reader sees either the old file or the complete new one, never a torn one, even
when the writer is killed with SIGKILL or the node loses power after the call returns.

Used for checkpoints, manifests, run records and evaluation result records, i.e. everything that
many processes on a shared filesystem may read while it is being replaced. `writable` asks, before
anything is written, whether a folder could be (submit-time checks, --out options).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARKER = ".tmp-"  # temporary files carry this in their name; `remove_stale_temporaries` clears them
PARTIAL_PREFIX = ".partial-"  # `atomic_path` temporaries: a prefix keeps the extension (ffmpeg needs it)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HashingFile:
    """Write-only file wrapper that computes the sha256 and size of everything written through it."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        return self.raw.write(view)

    def flush(self) -> None:
        self.raw.flush()


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[HashingFile]:
    """Context manager yielding a hashing binary file; on success the data replaces `path`
    atomically and durably; on any exception the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}{TMP_MARKER}")
    try:
        with os.fdopen(fd, "wb") as raw:
            hashing = HashingFile(raw)
            yield hashing
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path of `path` for a writer that needs a file name (ffmpeg, tar,
    PyAV); when the block succeeds the file is fsynced and renamed onto `path`, else removed. The
    temporary keeps the extension (`.partial-<pid>-<name>`) so format detection still works."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write `data` to `path` crash-safely; returns its sha256 (hex)."""
    with atomic_writer(path) as f:
        f.write(data)
    return f.sha256.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def create_json_exclusive(path: str | Path, obj: Any) -> bool:
    """Create `path` holding `obj` only if it does not exist yet, complete and durable, in one step:
    the JSON is written to a temporary sibling and hard-linked onto `path` (a link never replaces an
    existing file, and is atomic on local and network filesystems alike, where O_EXCL is not). False
    when `path` already existed: another process created it first, and its content stands."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}{TMP_MARKER}")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Delete temporary files a killed writer left behind in `directory` (and, when `recursive`,
    in every folder below it); returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    stale = [p for p in candidates if (TMP_MARKER in p.name or p.name.startswith(PARTIAL_PREFIX)) and p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


@functools.cache
def writable(path: Path) -> str | None:
    """None when `path` could be created and written, else why not (a data root that will hold
    generated videos, an output root, an evaluation root). Probes the nearest existing ancestor with
    a temporary file, so a refused submission leaves no directory behind. Cached: a sweep checks
    each distinct path once."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".rsp-write-test-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class SpaceReserve:
    """A file of `size` bytes kept on a disk so that, once the disk is full, the records that say
    why (an attempt's end, a run's status, a log line) can still be written: `release()` deletes it
    when a write ran out of space. Best effort: on a disk already full it reserves nothing, and on a
    shared disk another writer may take the space first."""

    def __init__(self, path: str | Path, size: int = 1 << 20):
        self.path = Path(path)
        try:
            with open(self.path, "wb") as f:
                f.truncate(0)
                os.posix_fallocate(f.fileno(), 0, size)  # real blocks (a sparse file would free nothing)
        except OSError:
            self.path.unlink(missing_ok=True)

    def release(self) -> bool:
        """Free the reserved space; False when there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def out_of_space(exc: BaseException | None) -> bool:
    """Whether `exc` or an exception it was raised from is ENOSPC. torch.save hides it: its zip
    writer answers the OSError a full device raised with a RuntimeError ("unexpected pos ...")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def size_text(n_bytes: float) -> str:
    """A size in GiB, or in MiB below one GiB (a nearly full disk reads "6.1 MiB", not "0.00 GiB")."""
    return f"{n_bytes / 1024**3:.2f} GiB" if n_bytes >= 1024**3 else f"{n_bytes / 1024**2:.1f} MiB"
