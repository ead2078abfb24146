"""DAVIS-2017 semi-supervised video object segmentation by label propagation (docs/evaluation.md#davis-protocol).

On-disk layout (official):
    <root>/ImageSets/2017/<split>.txt           sequence names, one per line
    <root>/JPEGImages/<resolution>/<seq>/*.jpg  frames (00000.jpg, ...)
    <root>/Annotations/<resolution>/<seq>/*.png indexed PNGs, index = object id (255 = void)
Predictions go to <out>/<seq>/<frame>.png (the official results layout), frame 0 = ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.config import PropagationParams, read_listing, select_sequences
from eval.features import short_side_size
from eval.indexmaps import read_index_png_and_palette, void_to_background
from eval.segmentation import index_png_writer, propagate_index_maps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DavisSequence:
    name: str
    frames: tuple[Path, ...]  # sorted JPEGs
    annotations: tuple[Path, ...]  # sorted PNGs; annotations[0] belongs to frames[0]


def read_davis(
    root: str | Path, split: str = "val", resolution: str = "480p", sequences: Sequence[str] = ()
) -> list[DavisSequence]:
    """The split's sequences, checked: frames exist, the first frame is annotated, every annotation
    has its frame. Raises naming the missing file and how to get it."""
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    names = read_listing(
        listing,
        f"{root} is not a DAVIS-2017 root (prepare one with "
        f"`python -m eval.prepare davis --root {root}`) or split={split!r} does not exist",
    )
    return [_read_sequence(root, resolution, name) for name in select_sequences(names, sequences, listing)]


def _read_sequence(root: Path, resolution: str, name: str) -> DavisSequence:
    frame_dir = root / "JPEGImages" / resolution / name
    mask_dir = root / "Annotations" / resolution / name
    frames = tuple(sorted(frame_dir.glob("*.jpg")))
    masks = tuple(sorted(mask_dir.glob("*.png")))
    if not frames:
        raise FileNotFoundError(f"no frames (*.jpg) in {frame_dir}; the sequence {name} is incomplete, re-extract DAVIS")
    if not masks or masks[0].stem != frames[0].stem:
        raise FileNotFoundError(
            f"{mask_dir / (frames[0].stem + '.png')} is missing: semi-supervised propagation needs the "
            f"first frame's annotation of {name}"
        )
    frame_stems = {f.stem for f in frames}
    orphans = [m for m in masks if m.stem not in frame_stems]
    if orphans:
        raise FileNotFoundError(f"{frame_dir / (orphans[0].stem + '.jpg')} is missing but {orphans[0]} annotates it")
    return DavisSequence(name, frames, masks)


def segment_sequence(
    seq: DavisSequence,
    encoder: torch.nn.Module,
    params: PropagationParams,
    out_dir: Path,
    device: torch.device,
    short_side: int = 480,
    batch_frames: int = 0,
    writer: ThreadPoolExecutor | None = None,
) -> int:
    """Propagate frame 0's objects through `seq` and write <out_dir>/<seq>/<frame>.png (frame 0 is
    the ground truth). PNGs are written on `writer`'s threads while the next frame propagates.
    Returns the number of frames written."""
    first, palette = read_index_png_and_palette(seq.annotations[0])
    void_to_background(first)
    size = short_side_size(*first.shape, short_side)
    target = out_dir / seq.name
    target.mkdir(parents=True, exist_ok=True)
    with index_png_writer(writer) as write:
        write(target / f"{seq.frames[0].stem}.png", first, palette)
        for t, index in propagate_index_maps(seq.frames, first, encoder, params, size, device, batch_frames):
            write(target / f"{seq.frames[t].stem}.png", index, palette)
    log.info("%s: %d frames propagated at %dx%d", seq.name, len(seq.frames), size[1], size[0])
    return len(seq.frames)
