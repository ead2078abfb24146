"""Checkpoints that survive kills: commit protocol, manifests, verified loading, retention.

Layout of `<run>/checkpoints/`:

    step_00001000.pt     torch.save'd dict; loads with torch.load(weights_only=True)
    step_00001000.json   manifest, written once the .pt is durable: step, sha256, bytes, config hash
    pins/                step_00001000.pt.<tag>: checkpoints that a pending evaluation still needs

Commit order: .pt (temporary file, fsync, rename) -> manifest (same). A kill at any
moment leaves the previous checkpoints intact: an orphan .pt without a manifest is ignored and
removed at the next start; a manifest whose file is missing, truncated or altered fails the sha256
check and the loader falls back to the previous valid checkpoint, saying why.

The .pt file holds {"format", "model", "optimizer", "scaler", "step", "data_position", "rng",
"config", "config_hash", "world_size", "model_name", "code_version"}; the weights alone are
readable as `ckpt["model"]`, like the reference's files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.atomicio import atomic_write_json, atomic_writer, out_of_space, remove_stale_temporaries, size_text
from rsp.manifest import FORMAT, Manifest, checkpoint_name, list_manifests, pin, pinned_steps, unpin, verify

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required; the message names the files and why."""


class DiskFullError(CheckpointError):
    """A checkpoint could not be written for want of space; the committed ones are intact."""


def disk_full_message(directory: Path, writing: str) -> str:
    """One line: what could not be written (`writing`: "checkpoint step 40 in <dir>"), how much is
    free there, what was kept (the checkpoints in `directory`), what to do."""
    free = shutil.disk_usage(directory).free if directory.exists() else 0
    kept = [m.step for m in list_manifests(directory)]
    resume = f"it resumes from step {kept[-1]}" if kept else "it starts again from step 0"
    return (
        f"no space left on device writing {writing} ({size_text(free)} free); kept: "
        f"{len(kept)} committed checkpoint(s) (steps {', '.join(map(str, kept)) or 'none'}), no partial checkpoint. "
        f"Free space there (or move output_root and the run directory), then submit the run again: {resume}"
    )


# Modules whose globals run programs or code when a pickle calls them: never a reason to trust one.
CODE_MODULES = ("os", "posix", "nt", "subprocess", "builtins", "sys", "runpy", "importlib", "pty", "shutil", "socket", "code")


class PickleRefused(CheckpointError):
    """torch.load(weights_only=True) refused a global the pickle references: said as such, never
    as damage (the file may be intact and malicious)."""

    def __init__(self, path: str | Path, name: str):
        self.path, self.name = Path(path), name
        runs_code = name.split(".")[0] in CODE_MODULES
        advice = (
            "a checkpoint holds tensors and plain data, never a call to it: do not load this file with "
            "weights_only=False; get the checkpoint from its source again"
            if runs_code
            else "unpickling it can execute arbitrary code. If the file comes from a source you trust (the reference's "
            "checkpoints store an argparse Namespace under 'args'), pass trust_pickle=True, or trust_checkpoint=true "
            "to python -m eval.run"
        )
        super().__init__(f"{self.path} refused: it references code ({name}); it was not loaded: {advice}")


def refused_global(err: BaseException) -> str | None:
    """The global torch's weights_only unpickler refused ("posix.system", "argparse.Namespace"),
    or None when the error is something else (a truncated or corrupted pickle). Torch words it
    differently across versions."""
    match = re.search(r"(?:Unsupported (?:global: GLOBAL|class)|unsupported GLOBAL) ([\w.]+)", str(err))
    return match.group(1) if match else None


def load_weights_only(path: str | Path, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True; a refused global raises PickleRefused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if (name := refused_global(err)) is None:
            raise
        raise PickleRefused(path, name) from err


def weights_digest(state: dict[str, Any]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in name order: equal for equal
    weights (two runs' step-0 checkpoints from one seed), whatever the optimizer or config hold."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        else:
            digest.update(f"{name}|{value!r}\n".encode())
    return digest.hexdigest()


class CheckpointStore:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    # --- writing --------------------------------------------------------------------------------

    def commit(self, step: int, payload: dict, *, milestone: bool) -> Manifest:
        """Durably write one checkpoint, then its manifest (which makes it committed). The payload's
        config_hash, model_name and code_version are copied into the manifest; its format is set here."""
        missing = [key for key in ("config_hash", "model_name", "code_version") if key not in payload]
        if missing:
            raise ValueError(f"checkpoint payload lacks {', '.join(missing)}; the manifest is made from them")
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / checkpoint_name(step)
        try:
            return self._write(target, step, payload, milestone)
        except (OSError, RuntimeError) as exc:
            if not out_of_space(exc):
                raise
            if not self._manifest_path(target).exists():  # the .pt got in, its manifest did not: never committed
                target.unlink(missing_ok=True)
            raise DiskFullError(disk_full_message(self.dir, f"checkpoint step {step} in {self.dir}")) from exc

    def _write(self, target: Path, step: int, payload: dict, milestone: bool) -> Manifest:
        with atomic_writer(target) as f:
            torch.save({**payload, "format": FORMAT}, f)
        manifest = Manifest(
            step=step,
            file=target.name,
            sha256=f.sha256.hexdigest(),
            bytes=f.size,
            config_hash=payload["config_hash"],
            milestone=milestone,
            model_name=payload["model_name"],
            code_version=payload["code_version"],
            created=time.time(),
            weights_sha256=weights_digest(payload["model"]) if "model" in payload else "",
        )
        atomic_write_json(self._manifest_path(target), dataclasses.asdict(manifest))
        return manifest

    # --- reading --------------------------------------------------------------------------------

    def manifests(self) -> list[Manifest]:
        """Every readable manifest, oldest first (unreadable ones are logged and skipped)."""
        return list_manifests(self.dir)

    def verify(self, manifest: Manifest) -> str | None:
        """None when the manifest's file is complete and unaltered, else the reason it is not."""
        return verify(self.dir, manifest)

    def newest_valid(self, manifests: list[Manifest] | None = None) -> tuple[Manifest | None, list[str]]:
        """The newest checkpoint that passes verification, and the reasons newer ones were rejected.
        `manifests`: this directory's, when the caller has just listed them."""
        rejected = []
        for manifest in reversed(self.manifests() if manifests is None else manifests):
            reason = self.verify(manifest)
            if reason is None:
                return manifest, rejected
            rejected.append(reason)
            log.warning("skipping checkpoint step %d: %s", manifest.step, reason)
        return None, rejected

    def load(self, manifest: Manifest, map_location: Any = "cpu") -> dict:
        return load_weights_only(self.dir / manifest.file, map_location)

    # --- housekeeping ---------------------------------------------------------------------------

    def clean_partial_writes(self, manifests: list[Manifest] | None = None) -> list[Path]:
        """Remove what a killed writer left: temporaries and .pt files that never got a manifest.
        `manifests`: this directory's, when the caller has just listed them."""
        removed = remove_stale_temporaries(self.dir)
        committed = {m.file for m in (self.manifests() if manifests is None else manifests)}
        for path in self.dir.glob("step_*.pt"):
            if path.name not in committed:
                path.unlink()
                removed.append(path)
        for path in removed:
            log.warning("removed partial checkpoint write %s", path)
        return removed

    def pin(self, step: int, tag: str) -> Path:
        """Protect checkpoint `step` from retention until `unpin(step, tag)` (a pending evaluation)."""
        return pin(self.dir, step, tag)

    def unpin(self, step: int, tag: str) -> None:
        unpin(self.dir, step, tag)

    def pinned_steps(self) -> set[int]:
        return pinned_steps(self.dir)

    def prune(self, keep_last: int) -> list[int]:
        """Delete all but the newest `keep_last` ordinary checkpoints; milestones and pinned
        checkpoints stay. The manifest goes first so no reader ever trusts a half-deleted pair."""
        pinned = self.pinned_steps()
        ordinary = [m for m in self.manifests() if not m.milestone]
        removed = []
        for manifest in ordinary[: max(0, len(ordinary) - keep_last)]:
            if manifest.step in pinned:
                continue
            self._manifest_path(self.dir / manifest.file).unlink(missing_ok=True)
            (self.dir / manifest.file).unlink(missing_ok=True)
            removed.append(manifest.step)
        return removed

    @staticmethod
    def _manifest_path(pt_path: Path) -> Path:
        return pt_path.with_suffix(".json")


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load one of our checkpoint files for reading its weights (evaluation, export). When its
    manifest is beside it, the sha256 is verified first. Loads with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    manifest_path = path.with_suffix(".json")
    if manifest_path.is_file():
        try:
            manifest = Manifest.read(manifest_path)
        except (ValueError, TypeError, OSError) as exc:
            raise CheckpointError(
                f"refusing to load {path}: its manifest {manifest_path} cannot be read ({exc}), so the file cannot be "
                "verified; restore the manifest, or move it away to load the checkpoint unverified"
            ) from exc
        reason = CheckpointStore(path.parent).verify(manifest)
        if reason:
            raise CheckpointError(
                f"refusing to load {path}: {reason}; its manifest records the file as committed, so it was damaged "
                "afterwards: load another checkpoint of the run (the loader's newest valid one), or restore this file"
            )
    return load_weights_only(path, map_location)


def cpu_snapshot(obj: Any) -> Any:
    """Deep copy of nested dicts/lists/tuples with every tensor detached, cloned and moved to the
    CPU: training can go on mutating parameters while a background thread writes the copy."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_snapshot(v) for v in obj)
    return obj


class BackgroundCommitter:
    """Runs `CheckpointStore.commit` calls one at a time on a background thread, so a checkpoint
    costs the training loop only its CPU snapshot. A failed write is re-raised by the next
    `submit` or `wait` (it is never lost silently)."""

    def __init__(self, on_done: Callable[[Manifest], None]):
        self._on_done = on_done
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, commit: Callable[[], Manifest]) -> None:
        self.wait()

        def run() -> None:
            try:
                self._on_done(commit())
            except BaseException as exc:  # re-raised on the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name="checkpoint-writer", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def settle(self) -> None:
        """`wait` for a training loop that is raising already: the checkpoint on its way is committed
        before the error leaves (a retry in the same process finds it, and no writer outlives its
        attempt); a failed write is logged, not raised over the error in flight."""
        try:
            self.wait()
        except Exception:
            log.exception("the checkpoint being written when training failed could not be committed")


def describe(manifest: Manifest) -> str:
    kind = "milestone" if manifest.milestone else "checkpoint"
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest.created))
    return f"{kind} step {manifest.step} ({manifest.bytes / 2**20:.1f} MiB, {created})"
