"""Generated datasets: layout, labels, decodability, keyframe interval, idempotence, CLI."""

from __future__ import annotations

import decord
import numpy as np
import pytest

from rsp import synthetic
from rsp.synthetic import ensure_synthetic_dataset, generate_dataset, synthetic_frames
from rsp.video import read_labels


def test_generated_dataset_has_the_kinetics_layout_and_our_labels(tmp_path):
    labels = generate_dataset(tmp_path, 5, num_classes=2, height=48, width=64, num_frames=70, keyint=30)
    entries = read_labels(labels)
    assert [e.path for e in entries][:2] == ["train/class_000/video_000000.mp4", "train/class_001/video_000001.mp4"]
    assert [e.class_idx for e in entries] == [0, 1, 0, 1, 0] and {e.num_frames for e in entries} == {70}
    reader = decord.VideoReader(str(tmp_path / entries[3].path), num_threads=1)
    assert len(reader) == 70 and reader[0].shape == (48, 64, 3)
    assert reader.get_key_indices() == [0, 30, 60]  # keyint 30 over 70 frames, exactly (scenecut=0)


def test_frames_move_and_depend_only_on_the_seed():
    a = list(synthetic_frames(np.random.default_rng(1), 4, 32, 40))
    b = list(synthetic_frames(np.random.default_rng(1), 4, 32, 40))
    c = next(synthetic_frames(np.random.default_rng(2), 1, 32, 40))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)) and not np.array_equal(a[0], c)
    assert all(np.abs(a[i].astype(int) - a[i + 1]).mean() > 1 for i in range(3))  # neighbours differ
    assert a[0].std() > 10  # textured, not flat


def test_ensure_generates_once_and_then_returns_the_existing_labels(tmp_path):
    labels = ensure_synthetic_dataset(tmp_path, 3, height=32, width=32, num_frames=10)
    stamp = labels.stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path, 3, height=32, width=32, num_frames=10) == labels
    assert labels.stat().st_mtime_ns == stamp and len(read_labels(labels)) == 3


def test_a_seed_gives_byte_identical_videos_serial_or_parallel(tmp_path):
    generate_dataset(tmp_path / "a", 4, height=48, width=80, num_frames=12, jobs=1)
    generate_dataset(tmp_path / "b", 4, height=48, width=80, num_frames=12, jobs=2)
    videos = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mp4"))
    assert len(videos) == 4
    for rel in videos:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"height \(33\) and width \(32\) must be even"):
        generate_dataset(tmp_path, 1, height=33, width=32)
    with pytest.raises(ValueError, match="num_videos"):
        generate_dataset(tmp_path, 0)


def test_command_line_writes_both_kinds(tmp_path, capsys):
    synthetic.main(
        ["dataset", "--root", str(tmp_path / "ds"), "--videos", "2", "--height", "32", "--width", "32", "--frames", "6"]
    )
    assert len(read_labels(tmp_path / "ds" / "labels.csv")) == 2
    synthetic.main(["kinetics-raw", "--out", str(tmp_path / "raw"), "--videos", "6", "--frames", "6"])
    assert (tmp_path / "raw" / "train" / "k400_train_path.txt").read_text() == "part_0.tar.gz\npart_1.tar.gz\n"
    assert "2 good, 2 replaced, 1 broken, 1 unavailable" in capsys.readouterr().out
