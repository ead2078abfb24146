"""Keypoint propagation: the first frame's joints become one label map per joint
on the feature grid, label propagation carries them through the video, and each propagated map is
decoded back to a position. Used by the JHMDB task (eval/jhmdb.py).

Labels: each joint is an unnormalized Gaussian (peak 1, std `sigma` grid cells) on the feature
grid, cut to zero beyond 3 sigma in x or y (our choice, as in UVC's heat maps); channel 0 is the
background, 1 where every joint channel is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eval.config import PropagationParams
from eval.features import encode_frames
from eval.indexmaps import image_hw
from eval.propagation import propagate


def joint_labels(joints: np.ndarray, frame_hw: tuple[int, int], grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """joints (J, 2) px -> (h*w, J + 1) labels: background, then one Gaussian per joint."""
    (H, W), (h, w) = frame_hw, grid
    gx, gy = joints[:, 0] * w / W, joints[:, 1] * h / H  # grid coordinates, (J,)
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))  # (h, w)
    dx, dy = jj[None] - gx[:, None, None], ii[None] - gy[:, None, None]  # (J, h, w)
    maps = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    maps[(np.abs(dx) > 3 * sigma) | (np.abs(dy) > 3 * sigma)] = 0.0
    background = (maps == 0).all(axis=0, keepdims=True).astype(np.float64)
    labels = np.concatenate([background, maps]).reshape(len(joints) + 1, h * w).T
    return torch.from_numpy(labels).float()


def decode_joints(soft: torch.Tensor, grid: tuple[int, int], frame_hw: tuple[int, int], topk: int) -> np.ndarray:
    """soft (h*w, J + 1) -> (J, 2) px: per joint the weighted mean of the integer coordinates of its
    `topk` strongest cells, scaled back to the frame (background dropped)."""
    (h, w), (H, W) = grid, frame_hw
    values, cells = soft[:, 1:].T.topk(min(topk, h * w), dim=1)  # (J, k)
    weights = values / values.sum(dim=1, keepdim=True)
    x = (weights * (cells % w)).sum(dim=1) * W / w
    y = (weights * torch.div(cells, w, rounding_mode="floor")).sum(dim=1) * H / h
    return torch.stack([x, y], dim=1).double().cpu().numpy()


@torch.inference_mode()
def propagate_keypoints(
    frames: Sequence[Path],
    first: np.ndarray,
    encoder: torch.nn.Module,
    params: PropagationParams,
    side: int,
    device: torch.device,
    topk: int,
    sigma: float,
    batch_frames: int = 0,
) -> np.ndarray:
    """Predicted joints (T-1, J, 2) px of frames 1..T-1, from frame 0's joints `first` (J, 2) px.
    Frames are resized to a `side` x `side` square (floored to the patch size)."""
    frame_hw = image_hw(frames[0])
    p = encoder.patch_size
    features, grid = encode_frames(encoder, frames, frame_hw, (side // p * p, side // p * p), device, batch_frames)
    labels = joint_labels(first, frame_hw, grid, sigma).to(device)
    return np.stack([decode_joints(soft, grid, frame_hw, topk) for _, soft in propagate(features, labels, grid, params)])
