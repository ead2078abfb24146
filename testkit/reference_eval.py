"""Reference-style implementations: the baseline bench/eval_speed.py measures the fast evaluation code
against, and the oracles tests/test_eval_*.py check it with (docs/evaluation.md#davis-protocol, docs/evaluation.md#jf-metric).

They implement docs/evaluation.md#label-propagation and docs/evaluation.md#jf-metric.
They follow the published tools step by step, slow on purpose:
- `loop_neighbourhood_mask`: the four nested Python loops of the reference.
- `reference_segment_sequence`: per-frame feature extraction, the target repeated per context
  frame and one batched product, the (ctx, hw, hw) affinities materialized, the mask multiplied in,
  top-k along the source axis of the transposed matrix, threshold, column normalization, labels
  product, queue of soft predictions, upsampling, per-channel min-max loop, argmax, PNG.
- `reference_davis_scores`: the official tool's approach: per object, per frame, unpacked boundary
  maps, disk dilation, one process.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from eval.davis import short_side_size
from eval.features import load_rgb, preprocess
from eval.indexmaps import read_index_png, read_palette, write_index_png

# --- propagation -------------------------------------------------------------------------------------


def loop_neighbourhood_mask(h: int, w: int, radius: int) -> torch.Tensor:
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * radius + 1):
                for q in range(2 * radius + 1):
                    y, x = i - radius + p, j - radius + q
                    if 0 <= y < h and 0 <= x < w:
                        mask[i, j, y, x] = 1
    return mask.reshape(h * w, h * w)


def reference_label_propagation(feat_tar, feat_sources, segs, mask, topk, temperature):
    """feat_tar (hw, D) and feat_sources (ctx, D, hw) unnormalized; segs (ctx, C, h, w); mask (hw, hw)
    or None. Returns the soft target labels (1, C, h, w) like the reference."""
    ctx = feat_sources.shape[0]
    feat_tar = F.normalize(feat_tar, dim=1, p=2)
    feat_sources = F.normalize(feat_sources, dim=1, p=2)
    feat_tar = feat_tar.unsqueeze(0).repeat(ctx, 1, 1)
    aff = torch.exp(torch.bmm(feat_tar, feat_sources) / temperature)  # (ctx, hw target, hw source)
    if mask is not None:
        aff *= mask.unsqueeze(0)
    hw = aff.shape[-1]
    aff = aff.transpose(2, 1).reshape(-1, hw)  # (ctx * hw sources, hw targets)
    tk_val, _ = torch.topk(aff, dim=0, k=topk)
    tk_val_min, _ = torch.min(tk_val, dim=0)
    aff[aff < tk_val_min] = 0
    aff = aff / torch.sum(aff, keepdim=True, dim=0)
    _, C, h, w = segs.shape
    segs = segs.reshape(ctx, C, -1).transpose(2, 1).reshape(-1, C).T  # (C, ctx * hw)
    return torch.mm(segs, aff).reshape(1, C, h, w)


def reference_norm_mask(mask: torch.Tensor) -> torch.Tensor:
    for c in range(mask.shape[0]):
        channel = mask[c]
        if channel.max() > 0:
            channel = channel - channel.min()
            channel = channel / channel.max()
            mask[c] = channel
    return mask


@torch.inference_mode()
def reference_segment_sequence(
    frames,
    first_mask_path,
    encoder,
    out_dir: Path,
    topk,
    n_last_frames,
    radius,
    temperature,
    short_side=480,
    mask_builder=loop_neighbourhood_mask,
    timings=None,
):
    """The reference's per-sequence loop; writes <out_dir>/<frame stem>.png. `timings` (a dict)
    receives the seconds spent building the mask and in label_propagation per frame."""
    timings = {} if timings is None else timings
    first = read_index_png(first_mask_path)
    H, W = first.shape
    size = short_side_size(H, W, short_side)
    p = encoder.patch_size
    h, w = size[0] // p, size[1] // p

    device = next(encoder.parameters()).device

    def feature(path):
        x = preprocess(load_rgb(path)[None], size).to(device)
        return encoder.forward_features(x)[0, 1:]  # (hw, D)

    small = np.array(Image.fromarray(first).resize((w, h), Image.NEAREST))
    C = int(first.max()) + 1
    first_seg = F.one_hot(torch.from_numpy(small).long(), C).permute(2, 0, 1)[None].float().to(device)  # (1, C, h, w)
    palette = read_palette(first_mask_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_index_png(out_dir / f"{Path(frames[0]).stem}.png", first, palette)
    frame1_feat = feature(frames[0]).T  # (D, hw)
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    start = time.perf_counter()
    mask = mask_builder(h, w, radius).to(device) if radius > 0 else None
    timings["mask_s"] = time.perf_counter() - start
    timings["propagation_s"] = []
    for t in range(1, len(frames)):
        feat_tar = feature(frames[t])
        start = time.perf_counter()
        feats = torch.stack([frame1_feat] + [f for f, _ in queue])
        segs = torch.cat([first_seg] + [s for _, s in queue])
        seg = reference_label_propagation(feat_tar, feats, segs, mask, topk, temperature)
        timings["propagation_s"].append(time.perf_counter() - start)
        if n_last_frames and len(queue) == n_last_frames:
            queue.pop(0)
        if n_last_frames:
            queue.append((feat_tar.T, seg.clone()))
        up = F.interpolate(seg, scale_factor=p, mode="bilinear", align_corners=False, recompute_scale_factor=False)[0]
        _, index = torch.max(reference_norm_mask(up), dim=0)
        index = np.array(Image.fromarray(index.cpu().numpy().astype(np.uint8)).resize((W, H), Image.NEAREST))
        write_index_png(out_dir / f"{Path(frames[t]).stem}.png", index, palette)


# --- DAVIS J&F, the official tool's way ----------------------------------------------------------------


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(r, r)
    return (x**2 + y**2) <= radius**2


def dilate(binary: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Dilation as the union of the image shifted by every point of the structuring element."""
    H, W = binary.shape
    r = structure.shape[0] // 2
    padded = np.zeros((H + 2 * r, W + 2 * r), dtype=bool)
    padded[r : r + H, r : r + W] = binary
    out = np.zeros_like(binary)
    for dy, dx in zip(*np.nonzero(structure), strict=True):
        out |= padded[dy : dy + H, dx : dx + W]
    return out


def reference_f(foreground: np.ndarray, gt: np.ndarray) -> float:
    bound_pix = math.ceil(0.008 * np.linalg.norm(foreground.shape))
    fg_boundary, gt_boundary = seg2bmap(foreground), seg2bmap(gt)
    fg_dil = dilate(fg_boundary, disk(bound_pix))
    gt_dil = dilate(gt_boundary, disk(bound_pix))
    gt_match, fg_match = gt_boundary & fg_dil, fg_boundary & gt_dil
    n_fg, n_gt = np.sum(fg_boundary), np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision, recall = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def reference_j(segmentation: np.ndarray, annotation: np.ndarray) -> float:
    inters = np.sum(segmentation & annotation)
    union = np.sum(segmentation | annotation)
    return 1.0 if np.isclose(union, 0) else inters / union


def reference_statistics(values: np.ndarray) -> tuple[float, float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        M = np.nanmean(values)
        R = np.nanmean(values > 0.5)
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        D = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return M, R, D


def reference_davis_scores(sequences, results_dir: Path) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
    """(global metrics, per-object rows) the way the official tool computes them."""
    J = {"M": [], "R": [], "D": []}
    Fm = {"M": [], "R": [], "D": []}
    rows = []
    for seq in sequences:
        masks = [read_index_png(p) for p in seq.annotations]
        masks = [np.where(m == 255, 0, m) for m in masks]
        n_obj = int(masks[0].max())
        scored = list(seq.annotations[1:-1])
        gts = masks[1:-1]
        preds = [read_index_png(Path(results_dir) / seq.name / p.name) for p in scored]
        for obj in range(1, n_obj + 1):
            j = np.array([reference_j(p == obj, g == obj) for p, g in zip(preds, gts, strict=True)])
            f = np.array([reference_f(p == obj, g == obj) for p, g in zip(preds, gts, strict=True)])
            for store, values in ((J, j), (Fm, f)):
                m, r, d = reference_statistics(values)
                store["M"].append(m)
                store["R"].append(r)
                store["D"].append(d)
            rows.append((f"{seq.name}_{obj}", J["M"][-1], Fm["M"][-1]))
    glob = {
        "J&F-Mean": (np.mean(J["M"]) + np.mean(Fm["M"])) / 2.0,
        "J-Mean": np.mean(J["M"]),
        "J-Recall": np.mean(J["R"]),
        "J-Decay": np.mean(J["D"]),
        "F-Mean": np.mean(Fm["M"]),
        "F-Recall": np.mean(Fm["R"]),
        "F-Decay": np.mean(Fm["D"]),
    }
    return {k: float(v) for k, v in glob.items()}, rows
