"""VIP human-part propagation and mIoU (docs/evaluation.md#vip-protocol): the task, from reading the dataset to its
mIoU, its generated set and its preparation. No reference code was released; the choices the
protocol's sources leave open are ours and stated where they are made.

On-disk layout (VIP_Fine):
    <root>/lists/<split>_videos.txt                          video names, one per line
    <root>/Images/<video>/*.jpg                              frames
    <root>/Annotations/Category_ids/<video>/*.png            class ids 0..19 on annotated frames
Propagation starts at the first annotated frame (earlier frames are skipped); every later annotated
frame is scored. Id 255 in an annotation (unlabelled) is ignored when scoring and counts as
background in the first frame; any other id >= 20 is refused (check_vip). mIoU comes from one 20x20
confusion matrix over all scored frames.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.archives import extract
from eval.config import EvalConfig, PropagationParams
from eval.indexmaps import davis_palette, describe_ids, id_counts, image_hw, read_index_png, write_index_png
from eval.splits import read_listing, select_sequences
from eval.task import EvalTask, Evaluation, dataset_problems

if TYPE_CHECKING:  # annotations only: the propagation imports torch when an evaluation runs
    import torch

LAYOUT = ("Images", "Annotations", "lists")  # top-level folders of a VIP_Fine root

CLASSES = (  # VIP's part classes, by id
    "background",
    "hat",
    "hair",
    "sun-glasses",
    "upper-clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "gloves",
    "scarf",
    "skirt",
    "torso-skin",
    "face",
    "right-arm",
    "left-arm",
    "right-leg",
    "left-leg",
    "right-shoe",
    "left-shoe",
)
NUM_CLASSES = len(CLASSES)  # 20
IGNORED = 255  # unlabelled pixels: never scored, background in the first frame


@dataclass(frozen=True)
class VipVideo:
    name: str
    frames: tuple[Path, ...]  # from the first annotated frame on
    annotations: dict[str, Path]  # frame stem -> class-id PNG


def read_vip(root: str | Path, split: str = "val", sequences: Sequence[str] = ()) -> list[VipVideo]:
    return [_read_video(Path(root), name) for name in video_names(root, split, sequences)]


def video_names(root: str | Path, split: str, sequences: Sequence[str] = ()) -> list[str]:
    root = Path(root)
    listing = root / "lists" / f"{split}_videos.txt"
    names = read_listing(
        listing,
        f"{root} is not a VIP_Fine root (prepare one with "
        f"`python -m eval.prepare vip --root {root} --archive VIP_Fine.zip`) or split={split!r} does not exist",
    )
    return select_sequences(names, sequences, listing)


def _read_video(root: Path, name: str) -> VipVideo:
    frames = sorted((root / "Images" / name).glob("*.jpg"))
    annotations = {p.stem: p for p in sorted((root / "Annotations" / "Category_ids" / name).glob("*.png"))}
    if not frames:
        raise FileNotFoundError(f"no frames (*.jpg) in {root / 'Images' / name}; extract VIP_Fine completely")
    if not annotations:
        raise FileNotFoundError(f"no annotations in {root / 'Annotations' / 'Category_ids' / name}")
    stems = [f.stem for f in frames]
    missing = sorted(set(annotations) - set(stems))
    if missing:
        raise FileNotFoundError(f"{root / 'Images' / name / (missing[0] + '.jpg')} is missing but has an annotation")
    if len(annotations) < 2:
        raise FileNotFoundError(
            f"{name} has one annotated frame ({next(iter(annotations.values()))}): propagation starts there and scores "
            "the later annotated frames, so nothing of this video would be scored; restore its annotations or leave it "
            "out (sequences=[...])"
        )
    start = min(stems.index(s) for s in annotations)
    return VipVideo(name, tuple(frames[start:]), annotations)


def check_vip(cfg: EvalConfig, full: bool) -> list[str]:
    """Every problem of the VIP root `cfg` reads, all at once: the listing, each video's frames and
    annotations (`_read_video`); `full` also reads every annotation: an indexed or grey PNG of its
    frame's size whose ids are classes 0..19 or 255 (unlabelled), so that no pixel is silently
    dropped from the confusion matrix."""

    def problems_of(name: str) -> list[str]:
        video = _read_video(Path(cfg.data_root), name)
        annotations = video.annotations.items() if full else ()
        return [p for stem, path in annotations for p in _annotation_problems(path, video.frames[0].parent / f"{stem}.jpg")]

    return dataset_problems(lambda: video_names(cfg.data_root, cfg.split, cfg.sequences), problems_of)


def _annotation_problems(path: Path, frame: Path) -> list[str]:
    index = read_index_png(path)
    size = image_hw(frame)
    if index.shape != size:
        return [
            f"{path} is {index.shape[1]}x{index.shape[0]} but its frame {frame.name} is {size[1]}x{size[0]}; "
            "annotations must have their frame's size (resize with NEAREST)"
        ]
    counts = id_counts(index)
    unknown = set(counts) - set(range(NUM_CLASSES)) - {IGNORED}
    if unknown:
        return [
            f"{path} has {describe_ids(counts, unknown)}, not a VIP class (ids 0..{NUM_CLASSES - 1}, or {IGNORED} for "
            "unlabelled pixels); those pixels would be dropped from the score: relabel them"
        ]
    return []


def confusion(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(20, 20) counts, rows = ground truth; gt ids >= 20 are ignored."""
    valid = gt < NUM_CLASSES
    codes = gt[valid].astype(np.int64) * NUM_CLASSES + pred[valid].astype(np.int64)
    return np.bincount(codes, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def mean_iou(matrix: np.ndarray) -> float:
    """IoU_c = diag / (gt_c + pred_c - diag), nanmean over classes (absent classes skipped)."""
    diag = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=1) + matrix.sum(axis=0) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = diag / union
    return float(np.nanmean(iou))


def long_side_size(height: int, width: int, long_side: int, multiple: int) -> tuple[int, int]:
    """VIP input size (docs/evaluation.md#vip-protocol): long side `long_side`, short side scaled and floored to `multiple`
    (our choice: the protocol's sources fix only the long side; the patch must divide both)."""
    if width >= height:
        return max(multiple, int(long_side * height / width // multiple) * multiple), long_side
    return long_side, max(multiple, int(long_side * width / height // multiple) * multiple)


def score_video(
    video: VipVideo,
    encoder: torch.nn.Module,
    params: PropagationParams,
    long_side: int,
    device: torch.device,
    out_dir: Path | None = None,
    batch_frames: int = 0,
) -> np.ndarray:
    """Confusion matrix of the video's scored frames; predictions of those frames go to
    <out_dir>/<video>/<frame>.png when out_dir is given."""
    # torch: imported when an evaluation runs, so that listing the tasks (status, aggregation) stays light
    from eval.segmentation import index_png_writer, propagate_index_maps

    first = read_index_png(video.annotations[video.frames[0].stem])
    first[first >= NUM_CLASSES] = 0
    p = encoder.patch_size
    size = long_side_size(*first.shape, long_side, p)
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    palette = davis_palette()
    scored = {t for t, frame in enumerate(video.frames) if frame.stem in video.annotations}
    maps = propagate_index_maps(video.frames, first, encoder, params, size, device, batch_frames, wanted=scored)
    with index_png_writer() as write:
        for t, index in maps:
            stem = video.frames[t].stem
            gt = read_index_png(video.annotations[stem])
            if gt.shape != index.shape:
                raise ValueError(
                    f"annotation {video.annotations[stem]} is {gt.shape[1]}x{gt.shape[0]}, "
                    f"its frame {index.shape[1]}x{index.shape[0]}"
                )
            matrix += confusion(gt, index)
            if out_dir is not None:
                write(out_dir / video.name / f"{stem}.png", index, palette)
    return matrix


def run(e: Evaluation) -> dict[str, float]:
    """Propagate every video of the split; mIoU from one confusion matrix over all scored frames."""
    videos = read_vip(e.cfg.data_root, e.cfg.split, e.cfg.sequences)
    matrix = sum(score_video(v, e.encoder, e.params, e.frame_size, e.device, e.out_dir, e.cfg.batch_frames) for v in videos)
    if not matrix.sum():
        raise ValueError("no annotated frame after the first in any video; nothing to score")
    return {"mIoU": mean_iou(matrix)}


def protocol_fields(cfg: EvalConfig) -> dict[str, Any]:
    return {"split": cfg.split}


# --- generated set ------------------------------------------------------------------------------------

# (class id, top, left, height, width) of each part, in units of the person's height (VIP's classes:
# 2 hair, 13 face, 5 upper-clothes, 14/15 right/left arm, 9 pants, 18/19 right/left shoe).
VIP_PARTS = [
    (5, 0.2, 0.1, 0.35, 0.3),
    (14, 0.22, -0.02, 0.3, 0.1),
    (15, 0.22, 0.42, 0.3, 0.1),
    (9, 0.55, 0.12, 0.35, 0.26),
    (18, 0.9, 0.08, 0.08, 0.14),
    (19, 0.9, 0.28, 0.08, 0.14),
    (13, 0.05, 0.17, 0.15, 0.16),
    (2, 0.0, 0.15, 0.07, 0.2),
]


def write_vip(
    root: str | Path,
    n_videos: int = 2,
    n_frames: int = 11,
    height: int = 96,
    width: int = 160,
    annotate_every: int = 5,
    seed: int = 0,
    split: str = "val",
) -> Path:
    """A VIP_Fine-style root: Images/<vid>/*.jpg, Annotations/Category_ids/<vid>/*.png on every
    `annotate_every`-th frame (frame 0 included), lists/<split>_videos.txt. Each video is a person
    whose body parts are cut from textures of the background's palette (eval.synthetic), walking
    towards the middle at 1.5-3% of the width per frame under a changing light."""
    # eval.synthetic imports scipy.ndimage (~0.3 s): only writing a generated set pays for it
    from eval.synthetic import Stage, save_jpeg

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"videos{v + 1}" for v in range(n_videos)]
    palette = davis_palette()
    for name in names:
        stage = Stage.draw(rng, height, width)
        size = rng.uniform(0.7, 0.9) * height
        top, left = rng.uniform(0.0, height - size), rng.uniform(0.1, 0.6) * width
        vx = (1 if left < 0.35 * width else -1) * rng.uniform(0.015, 0.03) * width  # towards the middle: stays in view
        parts = []
        for label, dy, dx, h, w in VIP_PARTS:
            ph, pw = max(2, int(h * size)), max(2, int(w * size))
            parts.append((label, top + dy * size, left + dx * size, stage.texture(rng, ph, pw)))
        for t in range(n_frames):
            frame = stage.background(height, width, t)
            labels = np.zeros((height, width), np.uint8)
            for label, y, x, texture in parts:  # the parts move together, later ones on top
                _paste(frame, labels, texture, label, int(round(y)), int(round(x + vx * t)))
            save_jpeg(root / "Images" / name / f"{t:06d}.jpg", stage.lit(frame, rng, t))
            if t % annotate_every == 0:
                write_index_png(root / "Annotations" / "Category_ids" / name / f"{t:06d}.png", labels, palette)
    listing = root / "lists" / f"{split}_videos.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{n}\n" for n in names))
    return root


def _paste(frame: np.ndarray, labels: np.ndarray, texture: np.ndarray, label: int, y0: int, x0: int) -> None:
    """Paint the rectangle `texture` with its top-left corner at (y0, x0), clipped to the frame."""
    H, W = labels.shape
    ys, xs = slice(max(0, y0), min(H, y0 + texture.shape[0])), slice(max(0, x0), min(W, x0 + texture.shape[1]))
    if ys.start < ys.stop and xs.start < xs.stop:
        frame[ys, xs] = texture[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        labels[ys, xs] = label


# --- preparation --------------------------------------------------------------------------------------


def prepare_vip(root: Path, archive: Path) -> list:
    """Extract a downloaded VIP_Fine archive (its cloud drives need a browser)."""
    if not archive.is_file():
        what = "is a directory, not the archive" if archive.is_dir() else "does not exist"
        raise FileNotFoundError(f"{archive} {what}; download VIP_Fine (see the VIP dataset page) and pass --archive")
    extract(archive, root, LAYOUT)
    return read_vip(root, "val")


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", type=Path, required=True, help="the downloaded VIP_Fine archive (.zip or .tar)")


def prepare(args: argparse.Namespace) -> list:
    return prepare_vip(args.root, args.archive)


TASK = EvalTask(
    name="vip",
    title="VIP human-part propagation (mIoU)",
    metrics=("mIoU",),
    headline=("mIoU",),
    best_by="mIoU",
    default_preset="vip",
    default_frame_size=880,  # long side
    run=run,
    protocol_fields=protocol_fields,
    check_data=check_vip,
    write_generated=write_vip,
    smoke_sizes=dict(n_videos=4, n_frames=11, height=96, width=160),
    add_prepare_arguments=add_prepare_arguments,
    prepare=prepare,
)
