"""The fast propagation engine against the reference algorithm (testkit/reference_eval.py), and against
the answer when the features are an oracle's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval import jf
from eval.config import PRESETS, PropagationParams
from eval.davis import read_davis, segment_sequence, write_davis
from eval.indexmaps import davis_palette, one_hot_grid, read_index_png, soft_to_index_map, write_index_png
from eval.propagation import neighbourhood_mask, propagate
from rsp.encoder import ViTEncoder
from rsp.model import create_model
from testkit.reference_eval import loop_neighbourhood_mask, reference_label_propagation, reference_segment_sequence


@pytest.fixture(scope="module")
def tiny_encoder() -> ViTEncoder:
    torch.manual_seed(0)
    model = create_model("rsp_vit_tiny_patch8", img_size=64)
    return ViTEncoder.from_state_dict(model.encoder_state_dict(), num_heads=3).eval()


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    return write_davis(tmp_path_factory.mktemp("davis"), n_sequences=2, n_frames=10, height=64, width=112, seed=3)


@pytest.mark.parametrize("h, w, radius", [(4, 6, 1), (5, 7, 2), (6, 9, 3), (3, 4, 2)])
def test_vectorized_neighbourhood_equals_the_loops(h, w, radius):
    assert torch.equal(neighbourhood_mask(h, w, radius).float(), loop_neighbourhood_mask(h, w, radius))


def test_neighbourhood_that_masks_nothing_is_skipped():
    assert neighbourhood_mask(5, 7, 0) is None  # radius 0 disables the restriction, as in the reference
    assert neighbourhood_mask(5, 7, 6) is None  # spans the grid: nothing to mask
    assert neighbourhood_mask(5, 7, 5) is not None


def reference_soft_labels(features, first_labels, grid, params):
    """The reference's loop over frames, on given features: (N - 1, hw, C)."""
    h, w = grid
    C = first_labels.shape[1]
    mask = loop_neighbourhood_mask(h, w, params.radius) if params.radius > 0 else None
    segs = [first_labels.T.reshape(1, C, h, w)]
    feats = [features[0].T]
    out = []
    for t in range(1, len(features)):
        seg = reference_label_propagation(features[t], torch.stack(feats), torch.cat(segs), mask, params.topk, params.temperature)
        out.append(seg.reshape(C, h * w).T)
        if params.n_last_frames:
            if len(feats) == 1 + params.n_last_frames:
                feats.pop(1)
                segs.pop(1)
            feats.append(features[t].T)
            segs.append(seg)
    return torch.stack(out)


@pytest.mark.parametrize(
    "params", [PRESETS["dino"], PRESETS["rsp"], PropagationParams(3, 2, 1, 0.7), PropagationParams(4, 0, 0, 0.1)]
)
def test_engine_equals_reference_on_random_features(params):
    torch.manual_seed(1)
    grid, N, D, C = (5, 6), 7, 16, 3
    features = F.normalize(torch.randn(N, 30, D), dim=-1)
    first = F.one_hot(torch.randint(0, C, (30,)), C).float()
    fast = torch.stack([soft for _, soft in propagate(features, first, grid, params)])
    assert torch.allclose(fast, reference_soft_labels(features, first, grid, params), atol=1e-6)


def test_ties_beyond_the_candidates_are_kept_like_the_reference():
    """Identical frames make many affinities equal to the k-th one: more than k + margin of them."""
    torch.manual_seed(2)
    grid, C = (4, 5), 2
    frame = F.normalize(torch.randn(1, 20, 8), dim=-1)
    frame[0, :12] = frame[0, 0]  # 12 identical cells per frame, and 6 identical frames
    features = frame.repeat(6, 1, 1)
    first = F.one_hot(torch.arange(20) % C, C).float()
    params = PropagationParams(topk=3, n_last_frames=5, radius=0, temperature=0.1)
    fast = torch.stack([soft for _, soft in propagate(features, first, grid, params)])
    assert torch.allclose(fast, reference_soft_labels(features, first, grid, params), atol=1e-6)


def test_row_chunking_changes_nothing_beyond_rounding():
    torch.manual_seed(3)
    features = F.normalize(torch.randn(5, 42, 8), dim=-1)
    first = F.one_hot(torch.randint(0, 3, (42,)), 3).float()
    params = PropagationParams(5, 3, 2, 0.1)
    whole = [soft for _, soft in propagate(features, first, (6, 7), params)]
    chunked = [soft for _, soft in propagate(features, first, (6, 7), params, chunk_bytes=4 * 3 * 42)]  # 1-row chunks
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, chunked, strict=True))  # GEMV vs GEMM rounding


@pytest.mark.parametrize("preset", ["rsp", "dino"])
def test_fast_pipeline_writes_the_same_pngs_as_the_reference_loop(tiny_encoder, davis_root, tmp_path, preset):
    params = PRESETS[preset]
    for seq in read_davis(davis_root):
        segment_sequence(seq, tiny_encoder, params, tmp_path / "fast", torch.device("cpu"), short_side=64)
        reference_segment_sequence(
            seq.frames,
            seq.annotations[0],
            tiny_encoder,
            tmp_path / "ref" / seq.name,
            params.topk,
            params.n_last_frames,
            params.radius,
            params.temperature,
            short_side=64,
        )
        for frame in seq.frames:
            fast = read_index_png(tmp_path / "fast" / seq.name / f"{frame.stem}.png")
            ref = read_index_png(tmp_path / "ref" / seq.name / f"{frame.stem}.png")
            assert fast.shape == (64, 112) and np.array_equal(fast, ref), f"{seq.name}/{frame.stem}"
        with Image.open(tmp_path / "fast" / seq.name / f"{seq.frames[3].stem}.png") as image:
            assert image.mode == "P"  # indexed PNGs, as the official tools read them


def oracle_features(masks: list[np.ndarray], grid: tuple[int, int], patch: int, num_labels: int) -> torch.Tensor:
    """Each cell's share of every label inside its patch: features that know the answer."""
    h, w = grid
    out = []
    for mask in masks:
        one_hot = F.one_hot(torch.from_numpy(mask).long(), num_labels).permute(2, 0, 1)[None].float()
        share = F.adaptive_avg_pool2d(F.interpolate(one_hot, size=(h * patch, w * patch), mode="nearest"), (h, w))
        out.append(F.normalize(share[0].flatten(1).T + 1e-3, dim=-1))  # (hw, C)
    return torch.stack(out)


def write_predictions(seqs, out, grid, patch, size, soft_labels):
    """Index maps from soft_labels(masks, C) -> iterator of (t, (hw, C)), in the results layout."""
    for seq in seqs:
        masks = [read_index_png(p) for p in seq.annotations]
        C = int(masks[0].max()) + 1
        write_index_png(out / seq.name / "00000.png", masks[0], davis_palette())
        for t, soft in soft_labels(masks, C):
            index = soft_to_index_map(soft.T.reshape(C, *grid), patch, size)
            write_index_png(out / seq.name / f"{t:05d}.png", index, davis_palette())
    return jf.evaluate(seqs, out, workers=1).global_metrics()


def test_oracle_features_recover_the_generated_masks(tmp_path):
    """Propagation scores as well as the true masks themselves seen at grid resolution (the best
    a patch-8 grid can express), and J > 0.85 in absolute terms."""
    size, patch = (192, 320), 8
    grid = (size[0] // patch, size[1] // patch)
    seqs = read_davis(write_davis(tmp_path / "d", n_sequences=2, n_frames=10, height=size[0], width=size[1], seed=5))

    def propagated(masks, C):
        return propagate(oracle_features(masks, grid, patch, C), one_hot_grid(masks[0], grid), grid, PRESETS["rsp"])

    def true_masks_on_the_grid(masks, C):
        return ((t, one_hot_grid(masks[t], grid, C)) for t in range(1, len(masks)))

    ours = write_predictions(seqs, tmp_path / "propagated", grid, patch, size, propagated)
    best = write_predictions(seqs, tmp_path / "grid", grid, patch, size, true_masks_on_the_grid)
    # acceptance thresholds with a margin (measured 2026-11-29: ours J 0.901, J&F 0.921; the grid-resolution
    # masks J&F 0.906), not a pin of the exact values
    assert ours["J-Mean"] > 0.85 and ours["J&F-Mean"] >= best["J&F-Mean"] - 0.02, (ours, best)
