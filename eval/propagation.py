"""Video label propagation (docs/evaluation.md#label-propagation), vectorized.

For each target frame t = 1..N-1 the context is frame 0 (its one-hot labels) plus a FIFO queue of
the `n_last_frames` previous frames (their soft predictions). The affinity between a target cell
and every context cell is exp(cos / T); a square neighbourhood (|di|, |dj| <= radius) applies to
every context frame; the top-k affinities are kept jointly over all context frames, normalized, and
average the context labels.

What makes it fast, with the reference's results:
- One (cells x context-cells) product per frame, computed in row chunks into one reused buffer;
  the neighbourhood enters as an additive 0 / -inf bias (`addmm_`), built once per video from
  |di|, |dj| comparisons (no Python loops).
- Only the top-(k + margin) cosines per row are exponentiated and weighted. exp(x / T) is
  non-decreasing, so the k-th largest affinity is exp of the k-th largest cosine, and every
  affinity equal to it (the reference keeps ties) is among the candidates unless the last
  candidate ties too; such rare rows are recomputed densely, exactly as the reference does.
- Affinities stay in fp32 (tf32 is switched off around the product): bf16 changes the top-k.
- Features are L2-normalized the reference's two ways: a target frame as (h*w, D) rows, a context
  frame as a (1, D, h*w) stack along D. Both give the same vectors up to the last bit, and the last
  bit decides near-tied top-k choices, so matching it makes our affinities the reference's bit for
  bit (checked on CPU) and the output PNGs identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from eval.config import PropagationParams

TIE_MARGIN = 8  # extra candidates per row that catch affinities tied with the k-th one
DEFAULT_CHUNK_BYTES = {"cpu": 96 * 2**20, "cuda": 512 * 2**20}  # affinity rows per chunk, in bytes


def neighbourhood_mask(h: int, w: int, radius: int, device: torch.device | str | None = None) -> torch.Tensor | None:
    """(h*w, h*w) bool, True where |di| <= radius and |dj| <= radius; None when nothing is masked
    (radius 0 disables the restriction, as in the reference, and a radius spanning the grid keeps all)."""
    if radius <= 0 or radius >= max(h, w) - 1:
        return None
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius  # (h, h)
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius  # (w, w)
    return (near_rows[:, None, :, None] & near_cols[None, :, None, :]).reshape(h * w, h * w)


def as_target(frame: torch.Tensor) -> torch.Tensor:
    """(hw, D) L2-normalized per row, as the reference normalizes the target frame."""
    return F.normalize(frame, dim=1, p=2)


def as_source(frame: torch.Tensor) -> torch.Tensor:
    """(hw, D) L2-normalized as the reference normalizes context frames: stacked as (1, D, hw)."""
    return F.normalize(frame.T.contiguous()[None], dim=1, p=2)[0].T


@contextmanager
def fp32_matmul() -> Iterator[None]:
    """Full fp32 matrix products (no tf32) inside the block; the caller's setting is restored."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def propagate(
    features: torch.Tensor,
    first_labels: torch.Tensor,
    grid: tuple[int, int],
    params: PropagationParams,
    chunk_bytes: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """features (N, h*w, D) as the encoder gives them (normalized here); first_labels (h*w, C)
    (one-hot of frame 0). Yields (t, soft labels (h*w, C)) for t = 1..N-1, on the features' device."""
    N, hw, D = features.shape
    if hw != grid[0] * grid[1] or first_labels.shape[0] != hw:
        raise ValueError(f"features ({hw} cells) and labels ({first_labels.shape[0]}) do not match the grid {grid}")
    queue = params.n_last_frames
    ctx_feats = features.new_empty(1 + queue, hw, D)  # slot 0: frame 0; slots 1..: ring of the queue
    ctx_labels = features.new_empty(1 + queue, hw, first_labels.shape[1])
    ctx_feats[0] = as_source(features[0])
    ctx_labels[0] = first_labels.to(features)
    mask = neighbourhood_mask(*grid, params.radius, features.device)
    bias = None if mask is None else torch.zeros(hw, hw, device=features.device).masked_fill_(~mask, float("-inf"))
    budget = chunk_bytes or DEFAULT_CHUNK_BYTES.get(features.device.type, DEFAULT_CHUNK_BYTES["cpu"])

    def chunk_rows(n_ctx: int) -> int:
        return min(hw, max(1, budget // (4 * n_ctx * hw)))

    # One affinity buffer for the whole video: a fresh large allocation per frame costs page faults.
    most_ctx = 1 + min(queue, max(N - 2, 0))
    buffer = features.new_empty(max(chunk_rows(n) * n * hw for n in range(1, most_ctx + 1)))
    filled = 0
    for t in range(1, N):
        n_ctx = 1 + filled
        with fp32_matmul():
            soft = propagate_frame(
                as_target(features[t]),
                ctx_feats[:n_ctx].view(-1, D),
                ctx_labels[:n_ctx].view(-1, ctx_labels.shape[-1]),
                bias,
                params,
                chunk_rows(n_ctx),
                buffer,
            )
        if queue:
            slot = 1 + (t - 1) % queue  # overwrites the oldest queued frame once the queue is full
            ctx_feats[slot] = as_source(features[t])
            ctx_labels[slot] = soft
            filled = min(filled + 1, queue)
        yield t, soft


def propagate_frame(
    target: torch.Tensor,
    sources: torch.Tensor,
    source_labels: torch.Tensor,
    bias: torch.Tensor | None,
    params: PropagationParams,
    chunk_rows: int,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """target (hw, D), sources (S, D) with S = n_ctx * hw, source_labels (S, C), bias (hw, hw) of
    0 / -inf or None; `buffer` (flat, >= chunk_rows * S elements) is reused when given.
    Returns the soft labels of the target (hw, C)."""
    hw, S = target.shape[0], sources.shape[0]
    k = min(params.topk, S)
    candidates = min(k + TIE_MARGIN, S)
    out = source_labels.new_empty(hw, source_labels.shape[1])
    rows = min(chunk_rows, hw)
    if buffer is None or buffer.numel() < rows * S:
        buffer = target.new_empty(rows * S)
    buffer = buffer[: rows * S].view(rows, S)
    for start in range(0, hw, chunk_rows):
        stop = min(start + chunk_rows, hw)
        aff = buffer[: stop - start]  # (c, S) cosines, -inf outside the neighbourhood
        if bias is None:
            torch.mm(target[start:stop], sources.T, out=aff)
        else:
            aff.view(stop - start, S // hw, hw).copy_(bias[start:stop, None, :])
            aff.addmm_(target[start:stop], sources.T)
        cos, index = aff.topk(candidates, dim=1)  # sorted, largest first
        weight = cos.div_(params.temperature).exp_()  # the affinities exp(cos / T), (c, candidates)
        threshold = weight[:, k - 1 : k]
        weight = weight * (weight >= threshold)
        out[start:stop] = torch.bmm((weight / weight.sum(1, keepdim=True))[:, None, :], source_labels[index])[:, 0]
        # The last candidate ties with the k-th affinity: more ties may lie beyond the candidates.
        tied = (weight[:, -1] > 0) & (candidates < S)
        if tied.any():
            rows = tied.nonzero()[:, 0]
            out[start + rows] = dense_rows(aff[rows], threshold[rows], source_labels, params.temperature)
    return out


def dense_rows(cos: torch.Tensor, threshold: torch.Tensor, source_labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The reference's computation for a few rows: every affinity >= the k-th one is kept."""
    aff = cos.div(temperature).exp_()  # (r, S)
    aff = aff * (aff >= threshold)
    return (aff / aff.sum(1, keepdim=True)) @ source_labels
