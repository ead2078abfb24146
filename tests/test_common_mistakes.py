"""Mistakes a new user makes, found by trying every front door as one would (docs/launching.md#common-
mistakes), each answered by one clear line that names the key or file and the fix, never a traceback
and never a silent success. One table per front door, in this process: submit-time validation,
the generated and natural training sets, `python -m rsp.synthetic`, records and typed configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fixtures_data import unavailable

from core.schema import ConfigError, from_dict
from eval.config import EvalConfig
from launch.config import absolutize, compose
from launch.validation.run import problems
from rsp.natural import listed_source_problems
from rsp.photos import evaluation_only_photos, training_photos
from rsp.synthetic import generate_dataset
from rsp.synthetic import main as synthetic_main
from rsp.video import read_labels
from testkit.launching import merged


def run_problems(tmp_path: Path, videos: Path, *overrides: str) -> list[str]:
    base = ["experiment=smoke", f"data.root={videos}", "data.synthetic_videos=0", "evaluation.tasks=[]"]
    return problems(absolutize(compose(merged(*base, f"output_root={tmp_path / 'runs'}", *overrides)), tmp_path))


def one_with(found: list[str], *parts: str) -> str:
    hits = [p for p in found if all(part in p for part in parts)]
    assert hits, f"no problem names {parts}: {found}"
    return hits[0]


# --- launch/submit.py: values of the wrong kind, typos in nested keys --------------------------------


@pytest.mark.parametrize(
    "overrides, parts",
    [
        (  # used to raise KeyError from the generated set's max_gap check
            ["data.synthetic_videos=4", "data.synthetic_scene=naturall"],
            ("data.synthetic_scene ('naturall') must be one of shapes, camouflage, natural",),
        ),
        (  # used to raise TypeError from eval.config's rules
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides={davis: {frame_size: abc}}"],
            ("evaluation.overrides.davis.frame_size ('abc') must be an int or null, not str",),
        ),
        (
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides.davis.topk=[5]"],
            ("evaluation.overrides.davis.topk ([5]) must be an int or null, not list",),
        ),
        (  # the whole-dict form used to fail in Hydra ("To append to your config use +...": the wrong fix)
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides={davis: {framesize: 96}}"],
            ("evaluation.overrides.davis.framesize is not a field of EvalConfig", "frame_size"),
        ),
    ],
)
def test_a_submit_mistake_is_one_clear_problem(train_videos, tmp_path, overrides, parts):
    found = run_problems(tmp_path, train_videos, *[o.replace("/tmp", str(tmp_path)) for o in overrides])
    one_with(found, *parts)


def test_typed_configs_name_every_value_of_the_wrong_type():
    with pytest.raises(ConfigError) as err:
        from_dict(EvalConfig, {"frame_size": "abc", "topk": True, "task": 3, "radius": None})
    assert err.value.problems == [
        "frame_size ('abc') must be an int or null, not str",
        "topk (True) must be an int or null, not bool",
        "task (3) must be a str, not int",
    ]
    assert from_dict(EvalConfig, {"temperature": 1, "topk": None}).temperature == 1.0  # an int where a float goes is fine


# --- training data: generated and natural sets ---------------------------------------------------------


def test_a_generated_set_records_sizes_and_a_replaced_video_is_refused(tmp_path):
    root = tmp_path / "gen"
    generate_dataset(root, 2, num_classes=1, height=32, width=32, num_frames=8)
    entries = read_labels(root / "labels.csv")
    assert all(e.size == (root / e.path).stat().st_size and e.mtime_ns == -1 for e in entries)
    (root / entries[0].path).write_bytes(b"")  # truncated after labelling: used to train on silently (counted broken)
    found = run_problems(tmp_path, root, "data.batch_size=1", "data.max_gap=4", "data.min_gap=1", "model.img_size=32")
    one_with(found, "1 of the 2 videos", "changed after it was written", entries[0].path, "is a generated set: delete it")


@pytest.fixture(scope="module")
def odd_sources(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("sources")
    (tmp / "notes.jpg").write_text("not a photo")
    (tmp / "notes.txt").write_text("not a photo either")
    (tmp / "empty").mkdir()
    held_out = evaluation_only_photos()
    if held_out:
        shutil.copy(held_out[0], tmp / "copy.png")
    return {name: str(tmp / name) for name in ("notes.jpg", "notes.txt", "empty", "copy.png", "missing.jpg")}


@pytest.mark.parametrize(
    "name, parts",
    [
        ("notes.jpg", ("notes.jpg cannot be decoded", "replace the file or drop it")),  # used to be skipped with a warning
        ("notes.txt", ("notes.txt is neither a photograph", "nor a video")),
        ("empty", ("folder", "holds no photographs or videos")),
        ("missing.jpg", ("missing.jpg does not exist", "fix the path or drop it")),
        ("copy.png", ("copy.png (a copy of", "is an evaluation-only photograph")),
    ],
)
def test_a_listed_natural_source_that_cannot_serve_is_named(odd_sources, name, parts):
    if name == "copy.png" and not os.path.exists(odd_sources[name]):
        unavailable("no evaluation-only photograph is installed (Debian package opencv-doc)")
    found = listed_source_problems([odd_sources[name]])
    assert len(found) == 1, found
    one_with(found, *parts)


def test_installed_training_photos_pass():
    assert listed_source_problems([str(p) for p in training_photos()[:2]]) == []


# --- python -m rsp.synthetic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["--videos", "0"], ("num_videos (0) and num_classes (4) must be >= 1",)),
        (["--videos", "2", "--height", "7"], ("height (7) and width (128) must be even", "choose even sizes")),
        (["--videos", "2", "--scene", "natural", "--sources", "/nonexistent/x.jpg"], ("/nonexistent/x.jpg does not exist",)),
    ],
)
def test_the_synthetic_command_refuses_in_one_line(tmp_path, capsys, argv, parts):
    rc = synthetic_main(["dataset", "--root", str(tmp_path / "set"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and all(p in err for p in parts) and "Traceback" not in err, err
    assert not (tmp_path / "set" / "labels.csv").exists()
