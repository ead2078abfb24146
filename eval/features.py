"""What the network sees: preprocessing and batched feature extraction (each task sets its frame size).

Features do not depend on labels, so every frame of a video is encoded up front in batches
(docs/evaluation.md#features); propagation then only reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)  # docs/evaluation.md#features: the reference normalizes with 0.228 (not ImageNet's 0.229)


def load_rgb(path: Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB; raises naming the file when it is missing or not `expected_size` (H, W)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"frame {path} is missing; re-extract the dataset's frames")
    try:
        with Image.open(path) as image:
            rgb = np.array(image.convert("RGB"))
    except OSError as err:  # PIL: not an image, truncated, damaged
        raise ValueError(f"frame {path} cannot be decoded ({err}); the file is damaged: re-extract the dataset's frames") from err
    if expected_size is not None and rgb.shape[:2] != tuple(expected_size):
        raise ValueError(
            f"frame {path} is {rgb.shape[1]}x{rgb.shape[0]} but its annotation is "
            f"{expected_size[1]}x{expected_size[0]}; frames and masks must have the same size "
            "(resize both with eval.prepare, masks with NEAREST)"
        )
    return rgb


def preprocess(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, h, w) normalized float32. Bilinear resize like the reference's
    cv2.resize (half-pixel centres, no antialiasing) rounded back to 8 bits as cv2 does, then /255
    and mean/std normalization."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def iter_frames(paths: Sequence[Path], expected_size: tuple[int, int] | None = None, threads: int = 4) -> Iterable[np.ndarray]:
    """Decoded frames in order; decoding runs ahead on a few threads (PIL releases the GIL)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from pool.map(lambda p: load_rgb(p, expected_size), paths)


def auto_batch_frames(device: torch.device, tokens_per_frame: int) -> int:
    """Frames per forward pass when none is given: on a GPU 8; on a CPU about 2k tokens, where a
    larger batch adds no parallelism and only grows the working set (480p ViT-S/16: 1 frame)."""
    return 8 if device.type == "cuda" else max(1, 2048 // tokens_per_frame)


@torch.inference_mode()
def extract_features(
    encoder: torch.nn.Module,
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    device: torch.device,
    batch_frames: int = 0,
) -> torch.Tensor:
    """Last block's output after the final LayerNorm, CLS dropped, in fp32 (docs/evaluation.md#features): (N, h*w, D)
    on `device`, cells row-major. Not yet L2-normalized: propagation normalizes each frame the
    way the reference does for its role (target or context)."""
    encoder = encoder.to(device).eval()
    tokens = (size[0] // encoder.patch_size) * (size[1] // encoder.patch_size)
    batch_frames = batch_frames or auto_batch_frames(device, tokens)
    out, batch = [], []

    def flush() -> None:
        x = preprocess(np.stack(batch), size).to(device, non_blocking=True)
        tokens = encoder.forward_features(x)[:, 1:].float()  # (B, h*w, D)
        out.append(tokens)
        batch.clear()

    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_frames:
            flush()
    if batch:
        flush()
    if not out:
        raise ValueError("no frames to encode")
    return torch.cat(out)


def encode_frames(
    encoder: torch.nn.Module,
    frames: Sequence[Path],
    frame_hw: tuple[int, int],
    size: tuple[int, int],
    device: torch.device,
    batch_frames: int = 0,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Features (N, h*w, D) of the frame files (each must be `frame_hw` (H, W)) resized to `size`
    (h*p, w*p), and the feature grid (h, w). Raises when the patch size does not divide `size`."""
    p = encoder.patch_size
    if size[0] % p or size[1] % p:
        raise ValueError(f"input size {size[1]}x{size[0]} is not divisible by the patch size {p}")
    features = extract_features(encoder, iter_frames(frames, frame_hw), size, device, batch_frames)
    return features, (size[0] // p, size[1] // p)
