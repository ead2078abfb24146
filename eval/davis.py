"""DAVIS-2017 semi-supervised video object segmentation by label propagation (docs/evaluation.md#davis-protocol):
the task, from reading the dataset to its J&F (eval/jf.py), its generated set and its preparation.

On-disk layout (official):
    <root>/ImageSets/2017/<split>.txt           sequence names, one per line
    <root>/JPEGImages/<resolution>/<seq>/*.jpg  frames (00000.jpg, ...)
    <root>/Annotations/<resolution>/<seq>/*.png indexed PNGs, index = object id (255 = void)
Predictions go to <out>/<seq>/<frame>.png (the official results layout), frame 0 = ground truth,
with global_results-<split>.csv and per-sequence_results-<split>.csv as the official tool writes them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from eval import jf
from eval.archives import download, extract
from eval.config import EvalConfig, PropagationParams
from eval.indexmaps import (
    VOID,
    davis_palette,
    describe_ids,
    id_counts,
    image_hw,
    read_index_png,
    read_index_png_and_palette,
    void_to_background,
    write_index_png,
)
from eval.splits import read_listing, select_sequences
from eval.task import EvalTask, Evaluation

if TYPE_CHECKING:  # annotations only: the propagation imports torch when an evaluation runs
    import torch

log = logging.getLogger(__name__)

DAVIS_URL = "https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip"
RSP_DAVIS_SIZE = (880, 480)  # (width, height) of RSP's pre-resized DAVIS
LAYOUT = ("JPEGImages", "Annotations", "ImageSets")  # top-level folders of a DAVIS root


@dataclass(frozen=True)
class DavisSequence:
    name: str
    frames: tuple[Path, ...]  # sorted JPEGs
    annotations: tuple[Path, ...]  # sorted PNGs; annotations[0] belongs to frames[0]


def read_davis(
    root: str | Path, split: str = "val", resolution: str = "480p", sequences: Sequence[str] = ()
) -> list[DavisSequence]:
    """The split's sequences, checked: frames exist, every frame is annotated, every annotation
    has its frame. Raises naming the missing file and how to get it."""
    return [_read_sequence(Path(root), resolution, name) for name in sequence_names(root, split, resolution, sequences)]


def sequence_names(
    root: str | Path, split: str, resolution: str, sequences: Sequence[str] = (), task: str = "davis"
) -> list[str]:
    """The split's sequence names (of `task`: davis, or photo_davis in the same layout)."""
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    what = "a DAVIS-2017 root" if task == "davis" else f"a {task} root (DAVIS-2017 layout)"
    splits = sorted(p.stem for p in listing.parent.glob("*.txt"))
    names = read_listing(
        listing,
        f"split={split!r} does not exist; splits in {listing.parent}: {', '.join(splits)}"
        if splits
        else f"{root} is not {what} (prepare one with `python -m eval.prepare {task} --root {root}`)",
    )
    if not (root / "JPEGImages" / resolution).is_dir():
        found = sorted(p.name for p in (root / "JPEGImages").iterdir() if p.is_dir()) if (root / "JPEGImages").is_dir() else []
        raise FileNotFoundError(
            f"davis_resolution ({resolution!r}) has no folder {root / 'JPEGImages' / resolution}; "
            f"resolutions under {root / 'JPEGImages'}: {', '.join(found) or 'none'} (set davis_resolution to one of them)"
        )
    return select_sequences(names, sequences, listing)


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
    unannotated = [f.stem for f in frames if f.stem not in {m.stem for m in masks}]
    if unannotated:
        # J&F scores every annotated frame but the first and the last (docs/evaluation.md#jf-metric): a
        # missing annotation would silently drop its frame from the score.
        raise FileNotFoundError(
            f"{len(unannotated)} frame(s) of {name} have no annotation in {mask_dir}: {', '.join(unannotated[:5])}"
            f"{' ...' if len(unannotated) > 5 else ''}; every frame is scored (docs/evaluation.md#jf-metric), so a "
            "missing annotation would drop its frame from J&F: restore the annotations (re-extract DAVIS) or "
            "leave the sequence out (sequences=[...])"
        )
    return DavisSequence(name, frames, masks)


def check_davis(cfg: EvalConfig, full: bool) -> list[str]:
    """Every problem of the DAVIS root `cfg` reads (docs/evaluation.md#davis-protocol), all at once:
    the layout and every sequence's files (`_read_sequence`); each first annotation's object ids
    are exactly 1..K (255 = void: unlabelled pixels), since the official rule counts max id objects
    and a stray id would add phantom objects that score 1.0; annotations have their frame's size.
    `full` (evaluation) also reads every later annotation: no id beyond the first frame's objects,
    the first annotation's size; without it (submit time) only layout and first frames are read."""
    try:
        names = sequence_names(cfg.data_root, cfg.split, cfg.davis_resolution, cfg.sequences, cfg.task)
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)]
    out = []
    for name in names:
        try:
            seq = _read_sequence(Path(cfg.data_root), cfg.davis_resolution, name)
            out += _annotation_problems(seq, full)
        except (FileNotFoundError, ValueError) as exc:
            out.append(str(exc))
    return out


def _annotation_problems(seq: DavisSequence, full: bool) -> list[str]:
    first = read_index_png(seq.annotations[0])
    counts = id_counts(first)
    objects = sorted(set(counts) - {0, VOID})
    out = []
    if not objects:
        return [
            f"{seq.annotations[0]} annotates no object (only background and void): {seq.name} would add nothing to "
            "J&F; restore the first annotation or leave the sequence out (sequences=[...])"
        ]
    if objects != list(range(1, len(objects) + 1)):
        gaps = sorted(set(range(1, max(objects) + 1)) - set(objects))
        stray = [i for i in objects if i > len(objects)] or objects
        out.append(
            f"{seq.annotations[0]}: object ids must be 1..K with no gap, found {', '.join(map(str, objects))} "
            f"({describe_ids(counts, stray)}; missing: {', '.join(map(str, gaps[:10]))}{' ...' if len(gaps) > 10 else ''}): "
            f"the official rule counts objects as ids 1..{max(objects)}, so the {len(gaps)} gap id(s) would be phantom "
            "objects scoring 1.0 each. Fix the annotation: set stray pixels to 0 (or to their object's id) and number "
            "the objects 1..K"
        )
    paths = seq.annotations if full else seq.annotations[:1]
    frames = {f.stem: f for f in seq.frames}
    unknown: dict[int, list] = {}  # id -> [annotations, pixels, first file], over the sequence's later annotations
    for mask in paths:
        size = image_hw(frames[mask.stem])
        index = first if mask == seq.annotations[0] else read_index_png(mask)
        if index.shape != size:
            out.append(
                f"{mask} is {index.shape[1]}x{index.shape[0]} but its frame {mask.stem}.jpg is {size[1]}x{size[0]}; "
                "resize annotations with NEAREST to their frames' size (python -m eval.prepare davis --resize)"
            )
            continue
        if mask != seq.annotations[0]:
            for i, n in id_counts(index).items():
                if i not in objects and i not in (0, VOID):
                    seen = unknown.setdefault(i, [0, 0, mask])
                    seen[0], seen[1] = seen[0] + 1, seen[1] + n
    for i, (files, pixels, where) in sorted(unknown.items()):
        more = f" (and {files - 1} later annotation(s) of {seq.name})" if files > 1 else ""
        out.append(
            f"{where}{more} has id {i} ({pixels} pixel{'' if pixels == 1 else 's'} in all), not an object of the first "
            f"frame (ids {', '.join(map(str, objects))}); semi-supervised DAVIS scores first-frame objects only: relabel "
            "or remove those pixels"
        )
    return out


def short_side_size(height: int, width: int, short_side: int = 480, multiple: int = 64) -> tuple[int, int]:
    """DAVIS input size (docs/evaluation.md#davis-protocol): short side `short_side`, long side floor(short * ratio / 64) * 64
    (854x480 -> 832x480, 910 -> 896, 1152 -> 1152). A square frame counts as landscape."""
    if height > width:
        return max(multiple, int(short_side * height / width // multiple) * multiple), short_side
    return short_side, max(multiple, int(short_side * width / height // multiple) * multiple)


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
    # torch: imported when an evaluation runs, so that listing the tasks (status, aggregation) stays light
    from eval.segmentation import index_png_writer, propagate_index_maps

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


def run(e: Evaluation) -> dict[str, float]:
    """Propagate every sequence of the split, write its PNGs, score them like the official tool."""
    sequences = read_davis(e.cfg.data_root, e.cfg.split, e.cfg.davis_resolution, e.cfg.sequences)
    with ThreadPoolExecutor(max_workers=2) as writer:
        for seq in sequences:
            segment_sequence(seq, e.encoder, e.params, e.out_dir, e.device, e.frame_size, e.cfg.batch_frames, writer)
    scores = jf.evaluate(sequences, e.out_dir, e.cfg.workers)
    jf.write_csvs(scores, e.out_dir, e.cfg.split)
    return scores.global_metrics()


def protocol_fields(cfg: EvalConfig) -> dict[str, Any]:
    return {"split": cfg.split, "davis_resolution": cfg.davis_resolution}


# --- generated set ------------------------------------------------------------------------------------


def write_davis(
    root: str | Path,
    n_sequences: int = 3,
    n_frames: int = 10,
    height: int = 96,
    width: int = 160,
    objects: tuple[int, int] = (2, 3),
    seed: int = 0,
    resolution: str = "480p",
) -> Path:
    """A DAVIS-2017 root with `n_sequences` generated sequences in ImageSets/2017/val.txt: camouflage
    scenes (rsp.scenes) of `objects` objects (an inclusive range) that move, zoom and cross each
    other, with exact masks (later objects are painted over earlier ones)."""
    # eval.synthetic imports scipy.ndimage (~0.3 s): only writing a generated set pays for it
    from eval.synthetic import STYLE, save_jpeg
    from rsp.scenes import camouflage_scene

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"synth-{i:03d}" for i in range(n_sequences)]
    palette = davis_palette()
    style = replace(STYLE, objects=tuple(objects))
    for name in names:
        for t, (frame, labels) in enumerate(camouflage_scene(rng, n_frames, height, width, style)):
            save_jpeg(root / "JPEGImages" / resolution / name / f"{t:05d}.jpg", frame)
            write_index_png(root / "Annotations" / resolution / name / f"{t:05d}.png", labels, palette)
    listing = root / "ImageSets" / "2017" / "val.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{n}\n" for n in names))
    return root


# --- preparation --------------------------------------------------------------------------------------


def resize_davis(root: Path, size: tuple[int, int] = RSP_DAVIS_SIZE, resolution: str = "480p") -> str:
    """Write frames and masks resized to `size` (width, height) with NEAREST; returns the new
    resolution folder name ("880x480")."""
    name = f"{size[0]}x{size[1]}"
    for kind, pattern in (("JPEGImages", "*.jpg"), ("Annotations", "*.png")):
        for source in sorted((root / kind / resolution).rglob(pattern)):
            target = root / kind / name / source.relative_to(root / kind / resolution)
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(source) as image:
                resized = image.resize(size, Image.NEAREST)
            if kind == "JPEGImages":
                resized.save(target, quality=95)
            else:
                resized.save(target)  # keeps the palette: ids stay ids
    return name


def prepare_davis(root: Path, url: str = DAVIS_URL, resize: tuple[int, int] | None = None, downloads: Path | None = None) -> list:
    """Download and extract DAVIS-2017 trainval 480p (and, with `resize`, RSP's resized copy)."""
    archive = download(url, (downloads or root.parent) / Path(url).name)
    extract(archive, root, LAYOUT)
    sequences = read_davis(root, "val")
    if resize:
        read_davis(root, "val", resize_davis(root, resize))
    return sequences


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resize {text!r} must look like 880x480 (width x height)") from None
    return width, height


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--downloads", type=Path, help="folder for the archives (default: next to --root)")
    parser.add_argument("--url", default=DAVIS_URL, help="DAVIS archive URL (the official ETH server)")
    parser.add_argument(
        "--resize", type=_size, nargs="?", const=RSP_DAVIS_SIZE, help="also write a WxH copy (880x480: RSP's pre-resize)"
    )


def prepare(args: argparse.Namespace) -> list:
    return prepare_davis(args.root, args.url, args.resize, args.downloads)


TASK = EvalTask(
    name="davis",
    title="DAVIS-2017 video object segmentation (J&F)",
    metrics=jf.GLOBAL_COLUMNS,
    headline=("J&F-Mean", "J-Mean", "F-Mean"),
    best_by="J&F-Mean",
    default_preset="rsp",
    default_frame_size=480,  # short side; the long side is floored to a multiple of 64 (short_side_size)
    run=run,
    protocol_fields=protocol_fields,
    check_data=check_davis,
    write_generated=write_davis,
    smoke_sizes=dict(
        n_sequences=30, n_frames=10, height=96, width=160
    ),  # the CPU study's benchmark: as many sequences as DAVIS-2017 val
    add_prepare_arguments=add_prepare_arguments,
    prepare=prepare,
)
