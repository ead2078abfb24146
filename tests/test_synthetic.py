"""Generated datasets: layout, labels, decodability, keyframe interval, idempotence, CLI."""

from __future__ import annotations

import decord
import numpy as np
import pytest

from rsp import synthetic
from rsp.config import SYNTHETIC_SCENES
from rsp.generated_videos import synthetic_frames
from rsp.scenes import SceneStyle, camouflage_scene
from rsp.synthetic import SCENE_SIZES, ensure_synthetic_dataset, generate_dataset
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


def test_camouflage_objects_move_zoom_and_depend_only_on_the_seed():
    a = list(camouflage_scene(np.random.default_rng(4), 8, 96, 160, SceneStyle(objects=(3, 3))))
    b = list(camouflage_scene(np.random.default_rng(4), 8, 96, 160, SceneStyle(objects=(3, 3))))
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0][0], next(camouflage_scene(np.random.default_rng(5), 1, 96, 160))[0])
    labels = np.stack([lab for _, lab in a])  # (T, H, W)
    assert set(np.unique(labels[0])) == {0, 1, 2, 3}
    ys, xs = np.nonzero(labels[0] == 3)  # the topmost object is never hidden
    ys2, xs2 = np.nonzero(labels[-1] == 3)
    assert np.hypot(ys.mean() - ys2.mean(), xs.mean() - xs2.mean()) > 0.03 * 160 * 7 * 0.5  # >= half its slowest travel
    assert len(ys) != len(ys2)  # it zoomed


def test_camouflage_light_changes_between_frames_and_a_still_style_keeps_it():
    """Same scene, one style with the light changes and one without: only the former changes the
    brightness of the background from frame to frame."""
    still = SceneStyle(speed=(0.0, 0.0), zoom=0.0, pan=0.0, gain=0.0, shadow=0.0, blur=(0.0, 0.0), noise=0.0)
    frames = [f.astype(float) for f, _ in camouflage_scene(np.random.default_rng(0), 3, 48, 64, still)]
    assert np.abs(frames[0] - frames[2]).max() == 0
    lit = [f.astype(float) for f, _ in camouflage_scene(np.random.default_rng(0), 3, 48, 64)]
    assert np.abs(lit[0] - lit[2]).mean() > 5


def test_a_dataset_of_another_scene_is_refused_not_reused(tmp_path):
    ensure_synthetic_dataset(tmp_path, 2, num_frames=4, scene="camouflage")
    assert ensure_synthetic_dataset(tmp_path, 2, num_frames=4, scene="camouflage") == tmp_path / "labels.csv"
    with pytest.raises(
        ValueError, match=r"holds generated camouflage videos, not the shapes videos.*data.synthetic_scene=shapes"
    ):
        ensure_synthetic_dataset(tmp_path, 2, num_frames=4)


def test_the_config_lists_the_generated_scenes():
    assert tuple(synthetic.SCENES) == SYNTHETIC_SCENES == tuple(synthetic.SCENE_SIZES)


def test_camouflage_videos_are_byte_identical_per_seed(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_dataset(tmp_path / name, 2, num_frames=6, seed=seed, scene="camouflage")
    video = "train/class_001/video_000001.mp4"
    assert (tmp_path / "a" / video).read_bytes() == (tmp_path / "b" / video).read_bytes()
    assert (tmp_path / "a" / video).read_bytes() != (tmp_path / "c" / video).read_bytes()
    reader = decord.VideoReader(str(tmp_path / "a" / video), num_threads=1)
    assert len(reader) == 6 and reader[0].shape == (*SCENE_SIZES["camouflage"][:2], 3)


def test_ensure_generates_once_and_then_returns_the_existing_labels(tmp_path):
    labels = ensure_synthetic_dataset(tmp_path, 3, height=32, width=32, num_frames=10)
    stamp = labels.stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path, 3, height=32, width=32, num_frames=10) == labels
    assert labels.stat().st_mtime_ns == stamp and len(read_labels(labels)) == 3


@pytest.mark.slow  # a generated set written twice, once in spawned workers: ~9 s
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
