"""Metrics against hand-computed values and against the official tool's approach (testkit/reference_eval.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eval import jf, jhmdb, keypoints, vip
from eval.davis import read_davis, write_davis
from eval.indexmaps import davis_palette, write_index_png
from testkit.reference_eval import dilate, disk, reference_davis_scores, reference_f, reference_statistics, seg2bmap

SQUARE = np.array([[0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=bool)
# The official seg2bmap marks a pixel when it differs from its right, lower or lower-right neighbour.
SQUARE_BOUNDARY = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=bool)


def packed(mask: np.ndarray) -> np.ndarray:
    return jf.pack_rows(mask[None])


def unpack(words: np.ndarray, width: int) -> np.ndarray:
    return np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[..., :width].astype(bool)


# --- J and F by hand --------------------------------------------------------------------------------


def test_boundary_map_matches_hand_computed_map():
    assert (seg2bmap(SQUARE) == SQUARE_BOUNDARY).all()
    assert (unpack(jf.boundaries(packed(SQUARE), 6), 6)[0] == SQUARE_BOUNDARY).all()


def test_boundary_last_row_and_column_use_their_single_neighbour():
    seg = np.zeros((3, 70), dtype=bool)  # wider than one 64-pixel word
    seg[1:, 68:] = True  # touches the last row and the last column
    expected = seg2bmap(seg)
    assert expected[2, 67] and not expected[2, 69] and expected[0, 69]
    assert (unpack(jf.boundaries(packed(seg), 70), 70)[0] == expected).all()


def test_jaccard_by_hand_and_both_empty_is_one():
    gt = SQUARE
    pred = np.zeros_like(gt)
    pred[1:3, 2:4] = True  # overlaps 2 of the 4 gt pixels, union 6
    j = jf.jaccard(packed(pred), packed(gt))
    assert j[0] == pytest.approx(2 / 6)
    empty = np.zeros_like(gt)
    assert jf.jaccard(packed(empty), packed(empty))[0] == 1.0
    assert jf.jaccard(packed(empty), packed(gt))[0] == 0.0


def test_f_by_hand_square_shifted_two_columns():
    """Radius ceil(0.008 * sqrt(4^2 + 6^2)) = 1 (a plus-shaped disk); 5 of the 8 boundary pixels of
    each map lie within 1 px of the other's: P = R = F = 0.625."""
    gt = SQUARE
    pred = np.zeros_like(gt)
    pred[1:3, 3:5] = True
    assert jf.boundary_radius(4, 6) == 1
    f = jf.f_measure(packed(pred), packed(gt), 1, 6)
    assert f[0] == pytest.approx(0.625)
    assert reference_f(pred, gt) == pytest.approx(0.625)


@pytest.mark.parametrize(
    "pred_empty, gt_empty, expected",
    [(True, False, 0.0), (False, True, 0.0), (True, True, 1.0), (False, False, 1.0)],
)
def test_f_empty_mask_conventions(pred_empty, gt_empty, expected):
    """pred empty: P 1 R 0 -> F 0; gt empty: P 0 R 1 -> F 0; both empty: F 1; identical: F 1."""
    empty = np.zeros_like(SQUARE)
    pred = empty if pred_empty else SQUARE
    gt = empty if gt_empty else SQUARE
    assert jf.f_measure(packed(pred), packed(gt), 1, 6)[0] == expected
    assert reference_f(pred, gt) == expected


def test_tolerance_radius_of_davis_sizes():
    # hand computation: ceil(0.008 * sqrt(480^2 + 854^2)) = ceil(7.84) = 8; ceil(0.008 * sqrt(480^2 + 880^2)) = ceil(8.02) = 9
    assert jf.boundary_radius(480, 854) == 8
    assert jf.boundary_radius(480, 880) == 9


@pytest.mark.parametrize("radius, width", [(1, 20), (4, 64), (8, 130), (9, 200)])
def test_packed_disk_dilation_equals_dilation_by_every_disk_point(radius, width):
    rng = np.random.default_rng(radius)
    x = rng.random((3, 40, width)) < 0.01
    x[0, 0, 0] = x[1, -1, -1] = True  # corners: nothing wraps across rows or frames
    fast = unpack(jf.dilate_disk(jf.pack_rows(x), radius), width)
    for i in range(3):
        assert (fast[i] == dilate(x[i], disk(radius))).all()


def test_statistics_mean_recall_and_decay_bins_by_hand():
    """n = 8: bin edges round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7]; bins share endpoints."""
    values = np.arange(1, 9) / 10
    mean, recall, decay = jf.statistics(values)
    assert mean == pytest.approx(0.45)
    assert recall == pytest.approx(3 / 8)
    assert decay == pytest.approx(np.mean([0.1, 0.2, 0.3]) - np.mean([0.6, 0.7, 0.8]))
    assert (mean, recall, decay) == reference_statistics(values)


# --- whole result folders ---------------------------------------------------------------------------


def write_case(root, sequences: dict[str, list[np.ndarray]], predictions: dict[str, list[np.ndarray]]):
    """A DAVIS root with the given annotation frames, and a results folder with the predictions."""
    palette = davis_palette()
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
    for name, masks in sequences.items():
        frame_dir = root / "JPEGImages" / "480p" / name
        frame_dir.mkdir(parents=True)
        for t, mask in enumerate(masks):
            Image.new("RGB", mask.shape[::-1]).save(frame_dir / f"{t:05d}.jpg")
            write_index_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", mask, palette)
        for t, pred in enumerate(predictions[name]):
            write_index_png(root / "results" / name / f"{t:05d}.png", pred, palette)
    return read_davis(root), root / "results"


def square(shape, top, left, size, value=1):
    out = np.zeros(shape, dtype=np.uint8)
    out[top : top + size, left : left + size] = value
    return out


def test_dataset_score_averages_objects_not_sequences(tmp_path):
    """Hand computation: sequence A (1 object, perfect) and B (object 1 perfect, object 2 never predicted): the
    object-level J-Mean is (1 + 1 + 0) / 3, not the sequence-level (1 + 0.5) / 2."""
    a = [square((20, 30), 5, 5, 8)] * 4
    b = [square((20, 30), 2, 2, 6) + square((20, 30), 10, 15, 6, value=2)] * 4
    preds_b = [m.copy() for m in b]
    for p in preds_b[1:]:
        p[p == 2] = 0
    seqs, results = write_case(tmp_path, {"a": a, "b": b}, {"a": a, "b": preds_b})
    scores = jf.evaluate(seqs, results, workers=1)
    metrics = scores.global_metrics()
    assert metrics["J-Mean"] == pytest.approx(2 / 3)
    assert [name for name, *_ in scores.per_object()] == ["a_1", "b_1", "b_2"]
    assert metrics["J&F-Mean"] == pytest.approx((metrics["J-Mean"] + metrics["F-Mean"]) / 2)


def test_first_and_last_frames_are_not_scored(tmp_path):
    masks = [square((20, 30), 5, 5, 8)] * 5
    preds = [m.copy() for m in masks]
    preds[0] = np.zeros_like(masks[0])  # wrong first and last predictions change nothing
    preds[-1] = np.zeros_like(masks[0])
    seqs, results = write_case(tmp_path, {"s": masks}, {"s": preds})
    metrics = jf.evaluate(seqs, results, workers=1).global_metrics()
    assert metrics["J-Mean"] == 1.0 and metrics["F-Mean"] == 1.0


def test_official_csv_files(tmp_path):
    masks = [square((20, 30), 5, 5, 8)] * 4
    seqs, results = write_case(tmp_path, {"s": masks}, {"s": masks})
    global_csv, per_seq_csv = jf.write_csvs(jf.evaluate(seqs, results, workers=1), tmp_path / "out")
    assert global_csv.name == "global_results-val.csv" and per_seq_csv.name == "per-sequence_results-val.csv"
    table = pd.read_csv(global_csv)
    assert list(table.columns) == list(jf.GLOBAL_COLUMNS)
    assert table["J&F-Mean"][0] == 1.0
    assert per_seq_csv.read_text().splitlines() == ["Sequence,J-Mean,F-Mean", "s_1,1.000,1.000"]


def perturbed_predictions(seqs, results, seed=0):
    """Predictions made from the ground truth by shifting, dropping and adding blobs."""
    rng = np.random.default_rng(seed)
    for seq in seqs:
        for path in seq.annotations:
            gt = np.array(Image.open(path))
            pred = np.roll(gt, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
            if rng.random() < 0.2:
                pred[pred == 1] = 0
            y, x = rng.integers(0, gt.shape[0] - 10), rng.integers(0, gt.shape[1] - 10)
            pred[y : y + 8, x : x + 8] = rng.integers(0, gt.max() + 1)
            write_index_png(results / seq.name / path.name, pred, davis_palette())


@pytest.mark.parametrize("height, width", [(120, 213), (480, 854)])
def test_fast_jf_equals_official_approach(tmp_path, height, width):
    frames = 8 if height < 200 else 4
    write_davis(tmp_path / "d", n_sequences=3, n_frames=frames, height=height, width=width, seed=height)
    seqs = read_davis(tmp_path / "d")
    perturbed_predictions(seqs, tmp_path / "res")
    fast = jf.evaluate(seqs, tmp_path / "res", workers=2)
    reference_global, reference_rows = reference_davis_scores(seqs, tmp_path / "res")
    assert fast.global_metrics() == reference_global  # identical, not approximately equal
    assert fast.per_object() == reference_rows
    assert 0 < reference_global["J-Mean"] < 1


# --- bad input ----------------------------------------------------------------------------------------


def test_prediction_with_unknown_object_id_names_the_file(tmp_path):
    masks = [square((20, 30), 5, 5, 8)] * 4
    preds = [m.copy() for m in masks]
    preds[1][0, 0] = 3
    seqs, results = write_case(tmp_path, {"s": masks}, {"s": preds})
    with pytest.raises(ValueError, match=r"00001\.png has object id 3 .* 1 objects"):
        jf.evaluate(seqs, results, workers=1)


def test_annotation_with_object_missing_from_first_frame_is_an_error(tmp_path):
    masks = [square((20, 30), 5, 5, 8)] * 4
    masks[2] = masks[2] + square((20, 30), 14, 20, 4, value=2)
    seqs, results = write_case(tmp_path, {"s": masks}, {"s": masks})
    with pytest.raises(ValueError, match=r"00002\.png has object id 2 but the first frame has only 1"):
        jf.evaluate(seqs, results, workers=1)


def test_missing_rgb_and_missized_predictions_name_the_file(tmp_path):
    masks = [square((20, 30), 5, 5, 8)] * 4
    seqs, results = write_case(tmp_path, {"s": masks}, {"s": masks})
    (results / "s" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"00002\.png is missing"):
        jf.evaluate(seqs, results, workers=1)
    Image.new("RGB", (30, 20)).save(results / "s" / "00002.png")
    with pytest.raises(ValueError, match=r"00002\.png is a RGB image, not an indexed"):
        jf.evaluate(seqs, results, workers=1)
    write_index_png(results / "s" / "00002.png", np.zeros((10, 30), np.uint8), davis_palette())
    with pytest.raises(ValueError, match=r"00002\.png is 30x10 but its annotation is 30x20"):
        jf.evaluate(seqs, results, workers=1)


def test_empty_sequence_list_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no sequences to evaluate"):
        jf.evaluate([], tmp_path)


# --- JHMDB PCK and VIP mIoU ------------------------------------------------------------------------------


def test_pck_by_hand():
    """GT joints span a 30 x 40 box: diagonal 50, normalizer 0.6 * 50 = 30 px, so a joint is
    correct at 0.1 within 3 px and at 0.2 within 6 px."""
    gt = np.zeros((1, 15, 2))
    gt[0, 0] = [30, 40]
    errors = np.array([0, 2.9, 3.0, 5, 6.0, 10] + [0] * 9)
    pred = gt.copy()
    pred[0, :, 0] += errors
    result = jhmdb.pck(pred, gt)
    assert result["PCK@0.1"] == pytest.approx(12 / 15)  # errors 0 x10, 2.9, 3.0
    assert result["PCK@0.2"] == pytest.approx(14 / 15)  # all but the 10 px one


def test_pck_averages_per_joint_over_frames():
    gt = np.zeros((2, 15, 2))
    gt[:, 1] = [30, 40]
    pred = gt.copy()
    pred[0, 0] += 100  # joint 0 wrong in one of two frames: its PCK is 0.5
    assert jhmdb.pck(pred, gt)["PCK@0.1"] == pytest.approx((0.5 + 14) / 15)


def test_miou_by_hand_skips_absent_classes_and_ignores_255():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 5]], dtype=np.uint8)
    matrix = vip.confusion(gt, pred)
    assert matrix.sum() == 7  # the 255 pixel is ignored
    # class 0: inter 3, union 4; class 1: inter 2, union 4; class 2: inter 0, union 1; others absent
    assert vip.mean_iou(matrix) == pytest.approx((3 / 4 + 2 / 4 + 0) / 3)


def test_jhmdb_labels_and_decoding_round_trip():
    joints = np.array([[8.0, 12.0]] * 15)
    joints[3] = [100.0, 100.0]  # outside a 40x40 frame: an all-zero channel
    labels = keypoints.joint_labels(joints, (40, 40), (10, 10), sigma=0.5).reshape(10, 10, 16)
    assert labels[3, 2, 1] == pytest.approx(1.0)  # joint at grid (x 2, y 3): peak 1
    assert labels[3, 3, 1] == pytest.approx(np.exp(-2.0))  # one cell away: exp(-1 / (2 * 0.25))
    assert labels[3, 5, 1] == 0.0  # beyond 3 sigma
    assert labels[..., 4].sum() == 0 and labels[0, 9, 0] == 1 and labels[3, 2, 0] == 0
    decoded = keypoints.decode_joints(labels.reshape(100, 16), (10, 10), (40, 40), topk=5)
    assert decoded[0] == pytest.approx([8.0, 12.0], abs=0.5)
