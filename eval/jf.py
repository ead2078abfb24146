"""DAVIS J&F with the semantics of the official davis2017-evaluation (semi-supervised; docs/evaluation.md#jf-metric).

Scored frames: every annotated frame but the first and the last. Objects of a sequence: ids 1..max
id of the first annotation (void 255 counts as background). J = |P & G| / |P | G| (1 when both are
empty). F: boundary maps (a pixel differs from its right, lower or lower-right neighbour; the last
row and column look at their one neighbour), each dilated by a disk of radius
ceil(0.008 * image diagonal); precision |Bp & dil(Bg)| / |Bp|, recall |Bg & dil(Bp)| / |Bg|, with the
official empty-mask conventions. Per object: Mean, Recall (share > 0.5), Decay (first quarter minus
last quarter, bins sharing endpoints). Dataset: mean over all objects.

Speed with identical values: every object's masks of a whole sequence are bit-packed along rows
(64 pixels per word), so boundaries, disk dilation (union of horizontal runs, one per disk row) and
all counts are word operations and popcounts; sequences run in parallel processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval.indexmaps import read_index_png, void_to_background

BOUNDARY_FRACTION = 0.008  # tolerance radius = ceil(0.008 * sqrt(H^2 + W^2)) px
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass
class ObjectScores:
    name: str  # "<sequence>_<object id>", as in the official per-sequence CSV
    J: np.ndarray  # (scored frames,)
    F: np.ndarray


@dataclass
class DavisScores:
    objects: list[ObjectScores] = field(default_factory=list)

    def global_metrics(self) -> dict[str, float]:
        """The official global row: means over all objects of Mean, Recall and Decay."""
        if not self.objects:
            raise ValueError("no objects were scored; check the sequence list")
        # np.mean of each list, as the official tool does (a 2-D mean sums in another order)
        J = [float(np.mean(column)) for column in zip(*(statistics(o.J) for o in self.objects), strict=True)]
        F = [float(np.mean(column)) for column in zip(*(statistics(o.F) for o in self.objects), strict=True)]
        values = [(J[0] + F[0]) / 2.0, J[0], J[1], J[2], F[0], F[1], F[2]]
        return {name: float(v) for name, v in zip(GLOBAL_COLUMNS, values, strict=True)}

    def per_object(self) -> list[tuple[str, float, float]]:
        return [(o.name, statistics(o.J)[0], statistics(o.F)[0]) for o in self.objects]


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame values, as the official db_statistics
    (bin edges round(linspace(1, n, 5) + 1e-10) - 1; int64 where the official's uint8 wraps past 255)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(per_frame)
        recall = np.nanmean(per_frame > 0.5)
        ids = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(np.int64)
        bins = [per_frame[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


def boundary_radius(height: int, width: int) -> int:
    """F's tolerance in px: ceil(0.008 * diagonal) (854x480 -> 8, 880x480 -> 9)."""
    return math.ceil(BOUNDARY_FRACTION * math.hypot(height, width))


# --- one sequence ---------------------------------------------------------------------------------


def score_sequence(name: str, annotations: Sequence[Path], predictions_dir: Path) -> list[ObjectScores]:
    """Scores of every object of one sequence, from its annotation PNGs and <predictions_dir>/<frame>.png."""
    first = void_to_background(read_index_png(annotations[0]))
    num_objects = int(first.max())
    scored = list(annotations[1:-1])
    if not scored:
        return [ObjectScores(f"{name}_{i}", np.zeros(0), np.zeros(0)) for i in range(1, num_objects + 1)]
    gt = np.empty((len(scored), *first.shape), dtype=np.uint8)  # (T, H, W), filled in place
    pred = np.empty_like(gt)
    for t, path in enumerate(scored):
        gt[t] = _read_gt(path, first.shape, num_objects)
        pred[t] = _read_prediction(predictions_dir / path.name, first.shape, num_objects)
    radius = boundary_radius(*gt.shape[1:])
    out = []
    for obj in range(1, num_objects + 1):
        g, p = pack_rows(gt == obj), pack_rows(pred == obj)  # (T, H, words)
        out.append(ObjectScores(f"{name}_{obj}", jaccard(p, g), f_measure(p, g, radius, gt.shape[2])))
    return out


def _read_gt(path: Path, shape: tuple[int, int], num_objects: int) -> np.ndarray:
    gt = read_index_png(path)
    if gt.shape != shape:
        raise ValueError(f"annotation {path} is {gt.shape[1]}x{gt.shape[0]}, the first frame's is {shape[1]}x{shape[0]}")
    void_to_background(gt)
    if gt.max() > num_objects:
        raise ValueError(
            f"annotation {path} has object id {gt.max()} but the first frame has only {num_objects} objects; "
            "the semi-supervised protocol scores first-frame objects only: relabel or remove that object"
        )
    return gt


def _read_prediction(path: Path, shape: tuple[int, ...], num_objects: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"prediction {path} is missing; every annotated frame but the first and last needs one")
    pred = read_index_png(path)
    if pred.shape != tuple(shape):
        raise ValueError(
            f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but its annotation is {shape[1]}x{shape[0]}; "
            "write predictions at the annotation's size"
        )
    if pred.max() > num_objects:
        raise ValueError(
            f"prediction {path} has object id {pred.max()} but the sequence has {num_objects} objects "
            "(first annotation); ids must be 0..number of objects"
        )
    return pred


# --- bit-packed masks ------------------------------------------------------------------------------


def pack_rows(mask: np.ndarray) -> np.ndarray:
    """(..., H, W) bool -> (..., H, ceil(W / 64)) uint64, pixel x at bit x % 64 of word x // 64."""
    packed = np.packbits(mask, axis=-1, bitorder="little")  # (..., H, ceil(W / 8)) bytes
    padded = np.zeros((*packed.shape[:-1], -(-packed.shape[-1] // 8) * 8), dtype=np.uint8)
    padded[..., : packed.shape[-1]] = packed
    return padded.view("<u8")


def _from_right(x: np.ndarray, s: int) -> np.ndarray:
    """Each pixel takes the value of the pixel s columns to its right (0 beyond the row), 0 < s < 64."""
    out = x >> np.uint64(s)
    out[..., :-1] |= x[..., 1:] << np.uint64(64 - s)
    return out


def _from_left(x: np.ndarray, s: int) -> np.ndarray:
    out = x << np.uint64(s)
    out[..., 1:] |= x[..., :-1] >> np.uint64(64 - s)
    return out


def _from_below(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[..., :-1, :] = x[..., 1:, :]
    return out


def boundaries(seg: np.ndarray, width: int) -> np.ndarray:
    """Packed boundary map of packed masks (..., H, words): the official seg2bmap."""
    right, below = _from_right(seg, 1), _from_below(seg)
    b = (seg ^ right) | (seg ^ below) | (seg ^ _from_right(below, 1))
    b[..., -1, :] = seg[..., -1, :] ^ right[..., -1, :]  # last row: right neighbour only
    word, bit = divmod(width - 1, 64)  # last column: lower neighbour only
    last = np.uint64(1 << bit)
    column = (seg[..., word] ^ below[..., word]) & last
    b[..., word] = (b[..., word] & ~last) | column
    b[..., -1, word] &= ~last  # bottom-right pixel is never a boundary
    return b


def dilate_disk(x: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of packed maps by the disk {dy^2 + dx^2 <= radius^2} (skimage's disk): the
    union over dy of the rows dy away, each widened by floor(sqrt(radius^2 - dy^2)) pixels."""
    half_widths = [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]
    widened = {0: x}
    current = x
    for w in range(1, half_widths[0] + 1):
        current = current | _from_left(current, 1) | _from_right(current, 1)
        widened[w] = current
    out = widened[half_widths[0]].copy()
    for dy in range(1, radius + 1):
        row = widened[half_widths[dy]]
        out[..., dy:, :] |= row[..., :-dy, :]
        out[..., :-dy, :] |= row[..., dy:, :]
    return out


def _count(x: np.ndarray) -> np.ndarray:
    """Set pixels per frame of packed (T, H, words) maps -> (T,) int64."""
    return np.bitwise_count(x).sum(axis=(-2, -1), dtype=np.int64)


def jaccard(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    inter, union = _count(pred & gt), _count(pred | gt)
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    j[np.isclose(union, 0)] = 1.0
    return j


def f_measure(pred: np.ndarray, gt: np.ndarray, radius: int, width: int) -> np.ndarray:
    """Per-frame F of packed masks (T, H, words) of images `width` px wide, with the official
    empty-boundary conventions."""
    bp, bg = boundaries(pred, width), boundaries(gt, width)
    n_fg, n_gt = _count(bp), _count(bg)
    fg_match, gt_match = _count(bp & dilate_disk(bg, radius)), _count(bg & dilate_disk(bp, radius))
    out = np.empty(len(n_fg))
    for i in range(len(out)):  # scalar float arithmetic in the official order (identical values)
        if n_fg[i] == 0 and n_gt[i] > 0:
            precision, recall = 1.0, 0.0
        elif n_fg[i] > 0 and n_gt[i] == 0:
            precision, recall = 0.0, 1.0
        elif n_fg[i] == 0 and n_gt[i] == 0:
            precision, recall = 1.0, 1.0
        else:
            precision, recall = fg_match[i] / float(n_fg[i]), gt_match[i] / float(n_gt[i])
        out[i] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return out


# --- a whole result folder ---------------------------------------------------------------------------


def evaluate(sequences: Sequence, results_dir: Path, workers: int = 0) -> DavisScores:
    """Score <results_dir>/<seq>/<frame>.png for `sequences` (eval.davis.DavisSequence items),
    in parallel over sequences (`workers` processes; 0: one per core, 1: this process)."""
    if not sequences:
        raise ValueError("no sequences to evaluate; check the split file and the sequences= subset")
    jobs = [(s.name, list(s.annotations), Path(results_dir) / s.name) for s in sequences]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        results = [score_sequence(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
            results = list(pool.map(score_sequence, *zip(*jobs, strict=True)))
    return DavisScores([obj for seq in results for obj in seq])


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where available: workers start in milliseconds and run numpy/PIL code only (never
    torch, so the parent's idle torch threads cannot deadlock them); spawn elsewhere."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def write_csvs(scores: DavisScores, out_dir: Path, split: str = "val") -> tuple[Path, Path]:
    """The official global_results-<split>.csv and per-sequence_results-<split>.csv (%.3f)."""
    import pandas as pd  # pandas: ~0.5 s to import; the J&F worker processes never write CSVs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    global_path = out_dir / f"global_results-{split}.csv"
    per_seq_path = out_dir / f"per-sequence_results-{split}.csv"
    pd.DataFrame([scores.global_metrics()], columns=list(GLOBAL_COLUMNS)).to_csv(global_path, index=False, float_format="%.3f")
    rows = scores.per_object()
    pd.DataFrame(rows, columns=["Sequence", "J-Mean", "F-Mean"]).to_csv(per_seq_path, index=False, float_format="%.3f")
    return global_path, per_seq_path
