"""Checkpoint manifests: what a committed checkpoint is and whether its file is intact.

Kept apart from rsp/checkpoint.py (and free of torch) so that status tools and the SLURM teardown,
which only read manifests, start in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from core.atomicio import sha256_file

log = logging.getLogger(__name__)

FORMAT = "rsp-checkpoint/1"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


# --- pins: a pending evaluation keeps a checkpoint from retention (torch-free: schedulers pin) ------


def pin(directory: Path, step: int, tag: str) -> Path:
    """Protect checkpoint `step` in `directory` from retention until `unpin(directory, step, tag)`."""
    path = Path(directory) / "pins" / f"{checkpoint_name(step)}.{tag}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def unpin(directory: Path, step: int, tag: str) -> None:
    (Path(directory) / "pins" / f"{checkpoint_name(step)}.{tag}").unlink(missing_ok=True)


def pinned_steps(directory: Path) -> set[int]:
    pins = Path(directory) / "pins"
    return {int(p.name.split("_")[1].split(".")[0]) for p in pins.glob("step_*.pt.*")} if pins.is_dir() else set()


@dataclass(frozen=True)
class Manifest:
    step: int
    file: str  # name of the .pt file in the same directory
    sha256: str
    bytes: int
    config_hash: str
    milestone: bool  # permanent: retention never removes it, evaluation jobs are scheduled for it
    model_name: str
    code_version: str
    created: float  # unix time of the commit
    format: str = FORMAT
    # sha256 of the model's weights alone (rsp.checkpoint.weights_digest): equal for checkpoints of
    # equal weights whatever else they hold; "" in manifests written before it existed
    weights_sha256: str = ""

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def list_manifests(directory: Path) -> list[Manifest]:
    """Every readable manifest in `directory`, oldest first (unreadable ones are logged and skipped)."""
    out = []
    for path in sorted(Path(directory).glob("step_*.json")):
        try:
            out.append(Manifest.read(path))
        except (ValueError, TypeError, OSError) as exc:
            log.warning("ignoring unreadable checkpoint manifest %s: %s", path, exc)
    return sorted(out, key=lambda m: m.step)


def verify(directory: Path, manifest: Manifest) -> str | None:
    """None when the manifest's file is complete and unaltered, else the reason it is not."""
    path = Path(directory) / manifest.file
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != manifest.bytes:
        return f"{path} has {size} bytes, its manifest says {manifest.bytes} (truncated or rewritten)"
    if sha256_file(path) != manifest.sha256:
        return f"{path} does not match the sha256 in its manifest (corrupted)"
    return None
