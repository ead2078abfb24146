"""JHMDB pose propagation and PCK (CRW/UVC protocol, docs/evaluation.md#jhmdb-protocol). No reference code was
released for ViTs; the choices the protocol's sources leave open are ours and stated where they are made.

On-disk layout (official):
    <root>/splits/<class>_test_split<N>.txt              "<video>.avi 1|2" (2 = test)
    <root>/Rename_Images/<class>/<video>/00001.png ...   frames (320x240)
    <root>/joint_positions/<class>/<video>/joint_positions.mat   pos_img: 2 x 15 x T, 1-indexed
Labels: each joint is an unnormalized Gaussian (peak 1, std `sigma` grid cells) on the feature
grid, cut to zero beyond 3 sigma in x or y (our choice, as in UVC's heat maps); channel 0 is the
background, 1 where every joint channel is 0. Frames are resized to 320x320.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.io import loadmat

from eval.config import PropagationParams, select_sequences
from eval.features import encode_frames, image_hw
from eval.propagation import propagate

NUM_JOINTS = 15
PCK_BOX_FACTOR = 0.6  # normalizer = 0.6 x diagonal of the GT joints' bounding box (docs/evaluation.md#jhmdb-protocol)


@dataclass(frozen=True)
class JhmdbVideo:
    name: str  # "<class>/<video>"
    frames: tuple[Path, ...]
    joints_file: Path


def read_jhmdb(root: str | Path, split: int = 1, sequences: Sequence[str] = ()) -> list[JhmdbVideo]:
    """Test videos of split `split` (every splits/*_test_split<split>.txt line marked 2)."""
    root = Path(root)
    split_files = sorted((root / "splits").glob(f"*_test_split{split}.txt"))
    if not split_files:
        raise FileNotFoundError(
            f"no {root / 'splits'}/*_test_split{split}.txt: {root} is not a JHMDB root "
            f"(prepare one with `python -m eval.prepare jhmdb --root {root}`)"
        )
    names = []
    for split_file in split_files:
        cls = split_file.name[: -len(f"_test_split{split}.txt")]
        for line in split_file.read_text().split("\n"):
            parts = line.split()
            if len(parts) == 2 and parts[1] == "2":
                names.append(f"{cls}/{Path(parts[0]).stem}")
    listing = f"the test videos (label 2) of {root / 'splits'}/*_test_split{split}.txt"
    return [_read_video(root, name) for name in select_sequences(names, sequences, listing)]


def _read_video(root: Path, name: str) -> JhmdbVideo:
    frames = tuple(sorted((root / "Rename_Images" / name).glob("*.png")))
    if not frames:
        raise FileNotFoundError(f"no frames (*.png) in {root / 'Rename_Images' / name}; extract Rename_Images.tar.gz")
    joints = root / "joint_positions" / name / "joint_positions.mat"
    if not joints.is_file():
        raise FileNotFoundError(f"{joints} is missing; extract joint_positions.zip into {root}")
    return JhmdbVideo(name, frames, joints)


def read_joints(video: JhmdbVideo) -> np.ndarray:
    """(T, 15, 2) x, y in pixels, 0-indexed (the file's are 1-indexed); T must equal the frame count."""
    pos = loadmat(video.joints_file)["pos_img"]  # (2, 15, T)
    if pos.ndim != 3 or pos.shape[:2] != (2, NUM_JOINTS):
        raise ValueError(f"{video.joints_file}: pos_img has shape {pos.shape}, expected (2, 15, frames)")
    if pos.shape[2] != len(video.frames):
        raise ValueError(
            f"{video.joints_file} annotates {pos.shape[2]} frames but {video.name} has {len(video.frames)} frames; "
            "re-extract the video's frames"
        )
    return np.transpose(pos, (2, 1, 0)).astype(np.float64) - 1.0


def joint_labels(joints: np.ndarray, frame_hw: tuple[int, int], grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """joints (15, 2) px -> (h*w, 16) labels: background, then one Gaussian per joint."""
    (H, W), (h, w) = frame_hw, grid
    gx, gy = joints[:, 0] * w / W, joints[:, 1] * h / H  # grid coordinates, (15,)
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))  # (h, w)
    dx, dy = jj[None] - gx[:, None, None], ii[None] - gy[:, None, None]  # (15, h, w)
    maps = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    maps[(np.abs(dx) > 3 * sigma) | (np.abs(dy) > 3 * sigma)] = 0.0
    background = (maps == 0).all(axis=0, keepdims=True).astype(np.float64)
    labels = np.concatenate([background, maps]).reshape(NUM_JOINTS + 1, h * w).T
    return torch.from_numpy(labels).float()


def decode_joints(soft: torch.Tensor, grid: tuple[int, int], frame_hw: tuple[int, int], topk: int) -> np.ndarray:
    """soft (h*w, 16) -> (15, 2) px: per joint the weighted mean of the integer coordinates of its
    `topk` strongest cells, scaled back to the frame (background dropped)."""
    (h, w), (H, W) = grid, frame_hw
    values, cells = soft[:, 1:].T.topk(min(topk, h * w), dim=1)  # (15, k)
    weights = values / values.sum(dim=1, keepdim=True)
    x = (weights * (cells % w)).sum(dim=1) * W / w
    y = (weights * torch.div(cells, w, rounding_mode="floor")).sum(dim=1) * H / h
    return torch.stack([x, y], dim=1).double().cpu().numpy()


def pck(pred: np.ndarray, gt: np.ndarray, alphas: Sequence[float] = (0.1, 0.2)) -> dict[str, float]:
    """pred, gt (M, 15, 2) over all scored frames (k > 0). A joint is correct when its distance
    divided by 0.6 x the diagonal of the frame's GT joint box is <= alpha; PCK per joint, then the
    mean over joints."""
    extent = gt.max(axis=1) - gt.min(axis=1)  # (M, 2)
    normalizer = PCK_BOX_FACTOR * np.sqrt((extent**2).sum(axis=1))  # (M,)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.linalg.norm(pred - gt, axis=2) / normalizer[:, None]  # (M, 15)
    return {f"PCK@{a}": float(np.mean((ratio <= a).mean(axis=0))) for a in alphas}


@torch.inference_mode()
def predict_video(
    video: JhmdbVideo,
    encoder: torch.nn.Module,
    params: PropagationParams,
    side: int,
    device: torch.device,
    topk: int,
    sigma: float,
    batch_frames: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, ground-truth) joints (T-1, 15, 2) for frames 1..T-1."""
    gt = read_joints(video)
    frame_hw = image_hw(video.frames[0])
    p = encoder.patch_size
    features, grid = encode_frames(encoder, video.frames, frame_hw, (side // p * p, side // p * p), device, batch_frames)
    labels = joint_labels(gt[0], frame_hw, grid, sigma).to(device)
    pred = [decode_joints(soft, grid, frame_hw, topk) for _, soft in propagate(features, labels, grid, params)]
    return np.stack(pred), gt[1:]


def evaluate(
    videos: Sequence[JhmdbVideo],
    encoder,
    params: PropagationParams,
    side: int,
    device: torch.device,
    topk: int = 5,
    sigma: float = 0.5,
    batch_frames: int = 0,
) -> tuple[dict[str, float], dict[str, list]]:
    """(PCK@0.1 and @0.2 over all videos, predicted joints per video as lists)."""
    preds, gts, per_video = [], [], {}
    for video in videos:
        pred, gt = predict_video(video, encoder, params, side, device, topk, sigma, batch_frames)
        preds.append(pred)
        gts.append(gt)
        per_video[video.name] = np.round(pred, 3).tolist()
    if not sum(len(p) for p in preds):
        raise ValueError("no frame after the first in any video; nothing to score")
    return pck(np.concatenate(preds), np.concatenate(gts)), per_video
