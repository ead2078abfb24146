"""VIP human-part propagation and mIoU (docs/evaluation.md#vip-protocol). No reference code was released; the
choices the protocol's sources leave open are ours and stated where they are made.

On-disk layout (VIP_Fine):
    <root>/lists/<split>_videos.txt                          video names, one per line
    <root>/Images/<video>/*.jpg                              frames
    <root>/Annotations/Category_ids/<video>/*.png            class ids 0..19 on annotated frames
Propagation starts at the first annotated frame (earlier frames are skipped); every later annotated
frame is scored. Ids >= 20 in an annotation (e.g. 255) are ignored when scoring and count as
background in the first frame. mIoU comes from one 20x20 confusion matrix over all scored frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eval.config import PropagationParams, read_listing, select_sequences
from eval.features import long_side_size
from eval.indexmaps import davis_palette, read_index_png
from eval.segmentation import index_png_writer, propagate_index_maps

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


@dataclass(frozen=True)
class VipVideo:
    name: str
    frames: tuple[Path, ...]  # from the first annotated frame on
    annotations: dict[str, Path]  # frame stem -> class-id PNG


def read_vip(root: str | Path, split: str = "val", sequences: Sequence[str] = ()) -> list[VipVideo]:
    root = Path(root)
    listing = root / "lists" / f"{split}_videos.txt"
    names = read_listing(
        listing,
        f"{root} is not a VIP_Fine root (prepare one with "
        f"`python -m eval.prepare vip --root {root} --archive VIP_Fine.zip`) or split={split!r} does not exist",
    )
    return [_read_video(root, name) for name in select_sequences(names, sequences, listing)]


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
    start = min(stems.index(s) for s in annotations)
    return VipVideo(name, tuple(frames[start:]), annotations)


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


def evaluate(
    videos: Sequence[VipVideo],
    encoder,
    params: PropagationParams,
    long_side: int,
    device: torch.device,
    out_dir: Path | None = None,
    batch_frames: int = 0,
) -> dict[str, float]:
    matrix = sum(score_video(v, encoder, params, long_side, device, out_dir, batch_frames) for v in videos)
    if not matrix.sum():
        raise ValueError("no annotated frame after the first in any video; nothing to score")
    return {"mIoU": mean_iou(matrix)}
