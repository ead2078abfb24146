"""Typed configuration of an evaluation: which checkpoint, which task, which propagation protocol.

`EvalConfig` is the single source of truth for `python -m eval.run` (registered in Hydra's ConfigStore
as "eval") and for the results pipeline (`eval.run.evaluate(cfg)`). Fields that cannot change the
numbers (paths, device, batch sizes, worker counts) carry ``metadata=RUNTIME_ONLY``. What a config
means under its task (the resolved preset, frame size, protocol and its hash, and the rules that
need the task) is eval/protocol.py, which reads the task registry (eval/registry.py).

Propagation presets (docs/evaluation.md#presets). Published numbers name the protocol that produced them:
    dino     topk 5, queue 7,  radius 12, T 0.1   DINO's DAVIS defaults (ViT-S/16 ~61.8 J&F)
    rsp      topk 7, queue 30, radius 30, T 0.1   RSP's published DAVIS numbers
    siammae  topk 7, queue 20, radius 20, T 0.7   CropMAE / SiamMAE-style evaluations
    vip      topk 10, queue 20, radius 20, T 0.7  SiamMAE-style VIP evaluation (T is our choice:
                                                  no source gives a VIP temperature, docs/evaluation.md#presets)
`preset=auto` picks the task's default (each task module says which); any of topk, n_last_frames,
radius, temperature set explicitly overrides the preset's value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.atomicio import writable
from core.schema import RUNTIME_ONLY

CHECKPOINT_FORMATS = ("auto", "ours", "rsp_reference", "timm", "dino", "mae")
DINO_BRANCHES = ("teacher", "student")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PropagationParams:
    """Label-propagation hyperparameters (docs/evaluation.md#label-propagation)."""

    topk: int  # sources kept per target cell, jointly over all context frames
    n_last_frames: int  # length of the FIFO queue of previous frames (their soft predictions)
    radius: int  # grid cells; a source counts only if |di| <= radius and |dj| <= radius; 0: no limit
    temperature: float  # affinity = exp(cos / temperature)

    def problems(self) -> list[str]:
        out = []
        if self.topk < 1:
            out.append(f"topk ({self.topk}) must be >= 1 source per target cell")
        if self.n_last_frames < 0:
            out.append(f"n_last_frames ({self.n_last_frames}) must be >= 0 frames")
        if self.radius < 0:
            out.append(f"radius ({self.radius}) must be >= 0 grid cells (0 disables the neighbourhood)")
        if not self.temperature > 0:
            out.append(f"temperature ({self.temperature}) must be > 0")
        return out


PRESETS: dict[str, PropagationParams] = {
    "dino": PropagationParams(topk=5, n_last_frames=7, radius=12, temperature=0.1),
    "rsp": PropagationParams(topk=7, n_last_frames=30, radius=30, temperature=0.1),
    "siammae": PropagationParams(topk=7, n_last_frames=20, radius=20, temperature=0.7),
    "vip": PropagationParams(topk=10, n_last_frames=20, radius=20, temperature=0.7),
}
OVERRIDABLE = ("topk", "n_last_frames", "radius", "temperature")


@dataclass
class EvalConfig:
    """One evaluation of one checkpoint on one task. Paths may be relative to the working directory."""

    checkpoint: str = field(default="", metadata=RUNTIME_ONLY)  # .pt/.pth file to evaluate
    checkpoint_format: str = field(default="auto", metadata=RUNTIME_ONLY)  # auto | ours | rsp_reference | timm | dino | mae
    trust_checkpoint: bool = field(default=False, metadata=RUNTIME_ONLY)  # allow pickled objects (reference RSP files)
    dino_branch: str = "teacher"  # DINO training checkpoints: which network to evaluate
    num_heads: int | None = None  # attention heads; None: from our registry, else width / 64
    task: str = "davis"  # a registered task: eval.registry.TASKS (davis | vip | jhmdb | photo_davis)
    preset: str = "auto"  # a name in PRESETS the task accepts, or auto (the task's default)
    topk: int | None = None  # overrides the preset when set
    n_last_frames: int | None = None  # overrides the preset when set
    radius: int | None = None  # overrides the preset when set (grid cells)
    temperature: float | None = None  # overrides the preset when set
    frame_size: int | None = None  # px; None: the task's default (EvalTask.default_frame_size)
    pose_topk: int = 5  # JHMDB: grid cells averaged per joint when decoding (docs/evaluation.md#jhmdb-protocol)
    pose_sigma: float = 0.5  # JHMDB: Gaussian std of a joint's label map, in grid cells (docs/evaluation.md#jhmdb-protocol)
    data_root: str = field(default="", metadata=RUNTIME_ONLY)  # dataset root in its official layout
    split: str = "val"  # DAVIS ImageSets/2017/<split>.txt, VIP lists/<split>_videos.txt
    jhmdb_split: int = 1  # JHMDB: test videos of splits/*_test_split<N>.txt (docs/evaluation.md#jhmdb-protocol: split 1)
    davis_resolution: str = "480p"  # DAVIS subfolder of JPEGImages/ and Annotations/
    sequences: list[str] = field(default_factory=list)  # a subset of the split's sequences (empty: all)
    output_dir: str = field(default="", metadata=RUNTIME_ONLY)  # "": <run>/eval/<stem>-<task>-<hash[:10]> (eval.run)
    device: str = field(default="auto", metadata=RUNTIME_ONLY)  # auto (cuda when present) | cpu | cuda
    batch_frames: int = field(default=0, metadata=RUNTIME_ONLY)  # frames per forward pass; 0: auto (GPU 8, CPU ~2k tokens)
    workers: int = field(default=0, metadata=RUNTIME_ONLY)  # processes for the DAVIS metric; 0: one per core
    # torch CPU threads; 0: torch's default (one per core). Small models on a busy machine run far
    # faster on 1: a tiny ViT's 30-sequence generated DAVIS took 93 s with 2 threads and 4 s with 1
    # on a 2-core machine under load (its threads wait for each other at every operation).
    cpu_threads: int = field(default=0, metadata=RUNTIME_ONLY)

    def field_problems(self) -> list[str]:
        """The rules that need no task; eval.protocol.problems adds the task's (name, preset, resolved
        propagation parameters)."""
        out = []
        if not self.checkpoint:
            out.append("checkpoint is empty; pass checkpoint=PATH to a .pt/.pth file")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            out.append(f"checkpoint_format ({self.checkpoint_format!r}) must be one of {', '.join(CHECKPOINT_FORMATS)}")
        if self.dino_branch not in DINO_BRANCHES:
            out.append(f"dino_branch ({self.dino_branch!r}) must be one of {', '.join(DINO_BRANCHES)}")
        if not self.data_root:
            out.append("data_root is empty; pass data_root=PATH to the dataset in its official layout")
        if self.frame_size is not None and self.frame_size < 16:
            out.append(f"frame_size ({self.frame_size}) must be >= 16 px (or null for the task's default)")
        if self.pose_topk < 1:
            out.append(f"pose_topk ({self.pose_topk}) must be >= 1 grid cell")
        if not self.pose_sigma > 0:
            out.append(f"pose_sigma ({self.pose_sigma}) must be > 0 grid cells")
        if self.device not in DEVICES:
            out.append(f"device ({self.device!r}) must be one of {', '.join(DEVICES)}")
        if self.batch_frames < 0:
            out.append(f"batch_frames ({self.batch_frames}) must be >= 1, or 0 for automatic")
        if self.jhmdb_split not in (1, 2, 3):
            out.append(f"jhmdb_split ({self.jhmdb_split}) must be 1, 2 or 3")
        if self.workers < 0:
            out.append(f"workers ({self.workers}) must be >= 0 (0: one per core)")
        if self.cpu_threads < 0:
            out.append(f"cpu_threads ({self.cpu_threads}) must be >= 0 (0: torch's default, one per core)")
        if self.num_heads is not None and self.num_heads < 1:
            out.append(f"num_heads ({self.num_heads}) must be >= 1 or null")
        if self.output_dir and (reason := writable(Path(self.output_dir))):
            out.append(f"output_dir ({self.output_dir}) cannot be written ({reason}); choose another output_dir")
        return out


def register_configs() -> None:
    """Register `EvalConfig` as the Hydra config "eval" (idempotent)."""
    from hydra.core.config_store import ConfigStore  # hydra: ~0.5 s to import; only the eval.run CLI composes

    ConfigStore.instance().store(name="eval", node=EvalConfig)
