"""Segmentation by label propagation: frames + the first frame's index map -> index maps of the
others (docs/evaluation.md#label-propagation). Shared by DAVIS (object ids) and VIP (part classes)."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from eval.config import PropagationParams
from eval.features import encode_frames
from eval.indexmaps import one_hot_grid, soft_to_index_map, write_index_png
from eval.propagation import propagate


@torch.inference_mode()
def propagate_index_maps(
    frames: Sequence[Path],
    first: np.ndarray,
    encoder: torch.nn.Module,
    params: PropagationParams,
    size: tuple[int, int],
    device: torch.device,
    batch_frames: int = 0,
    wanted: Container[int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (t, (H, W) uint8 index map) for t = 1..len(frames)-1 in `wanted` (default all); every frame
    is propagated, but only wanted ones pay for the full-size index map (VIP scores a few frames).
    `first` is frame 0's index map (H, W); the network sees frames resized to `size` (h, w), both
    divisible by the patch size."""
    H, W = first.shape
    features, grid = encode_frames(encoder, frames, (H, W), size, device, batch_frames)
    labels = one_hot_grid(first, grid).to(device)
    C = labels.shape[1]
    for t, soft in propagate(features, labels, grid, params):
        if wanted is None or t in wanted:
            yield t, soft_to_index_map(soft.T.reshape(C, *grid), encoder.patch_size, (H, W))


PngWrite = Callable[[Path, np.ndarray, list[int]], None]  # (path, (H, W) index map, palette)


@contextmanager
def index_png_writer(pool: ThreadPoolExecutor | None = None) -> Iterator[PngWrite]:
    """A write(path, index_map, palette) that saves PNGs on `pool`'s threads (two of its own when
    None) while the caller propagates the next frame; leaving the block waits for every write and
    re-raises the first error."""
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=2)
    pending = []
    try:
        yield lambda path, index_map, palette: pending.append(pool.submit(write_index_png, path, index_map, palette))
        for job in pending:
            job.result()
    finally:
        if own_pool:
            pool.shutdown()
