"""Evaluation datasets are checked before anything is evaluated (each task's check_data), one test
per rule: the message names the file, the value and the fix. Nothing that would silently change a
number passes (a stray DAVIS id, a frame without its annotation, a VIP class outside 0..19, a NaN
joint), and the official layouts pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from eval.config import EvalConfig
from eval.davis import resize_davis, write_davis
from eval.indexmaps import davis_palette, read_index_png, write_index_png
from eval.jhmdb import write_jhmdb
from eval.registry import get_task
from eval.vip import write_vip


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_inputs")
    return {
        "davis": write_davis(root / "davis", n_sequences=2, n_frames=6, height=64, width=112),
        "jhmdb": write_jhmdb(root / "jhmdb", n_videos=2, n_frames=5, height=64, width=80),
        "vip": write_vip(root / "vip", n_videos=2, n_frames=11, height=64, width=112),
    }


def copy(originals, task: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(originals[task], tmp_path / task))


def check(task: str, root: Path, **fields) -> list[str]:
    return get_task(task).check_data(EvalConfig(checkpoint="x.pt", task=task, data_root=str(root), **fields), True)


def only_problem(found: list[str], *parts: str) -> str:
    hits = [p for p in found if all(part in p for part in parts)]
    assert hits, f"no problem names {parts}: {found}"
    return hits[0]


def edit_ids(path: Path, change) -> None:
    ids = read_index_png(path).copy()
    change(ids)
    write_index_png(path, ids, davis_palette())


def test_generated_sets_pass(originals):
    assert [check(task, originals[task]) for task in ("davis", "jhmdb", "vip")] == [[], [], []]


# --- DAVIS -----------------------------------------------------------------------------------------------


def first_annotation(root: Path, seq: str = "synth-000") -> Path:
    return root / "Annotations" / "480p" / seq / "00000.png"


def test_davis_stray_id_is_named_with_its_pixel_count(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    edit_ids(first_annotation(root), lambda a: a.__setitem__((0, 0), 200))
    p = only_problem(check("davis", root), "00000.png", "id 200 (1 pixel)", "must be 1..K", "set stray pixels to 0")
    assert "phantom objects" in p


def test_davis_id_gap_is_refused(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    k = int(max(set(np.unique(read_index_png(first_annotation(root)))) - {0, 255}))  # the generator draws 2-3 objects
    edit_ids(first_annotation(root), lambda a: np.place(a, a == k, k + 2))  # the last object renumbered: a gap of 2
    found = ", ".join(map(str, [*range(1, k), k + 2]))
    only_problem(check("davis", root), "00000.png", f"found {found}", f"missing: {k}, {k + 1}", "number the objects 1..K")


def test_davis_void_pixels_are_not_objects(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    for png in (root / "Annotations" / "480p").rglob("*.png"):
        edit_ids(png, lambda a: a.__setitem__((slice(0, 2), slice(0, 2)), 255))
    assert check("davis", root) == []


def test_davis_frame_without_annotation_is_refused(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    (root / "Annotations" / "480p" / "synth-000" / "00003.png").unlink()
    only_problem(check("davis", root), "1 frame(s) of synth-000 have no annotation", "00003", "restore the annotations")


def test_davis_annotation_of_another_size_is_refused(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    path = root / "Annotations" / "480p" / "synth-000" / "00002.png"
    with Image.open(path) as image:
        image.resize((56, 32), Image.NEAREST).save(path)
    only_problem(check("davis", root), "00002.png is 56x32 but its frame 00002.jpg is 112x64", "resize annotations with NEAREST")


def test_davis_later_id_not_in_the_first_frame_is_refused(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    edit_ids(root / "Annotations" / "480p" / "synth-000" / "00003.png", lambda a: a.__setitem__((slice(0, 4), slice(0, 4)), 7))
    only_problem(check("davis", root), "00003.png", "has id 7 (16 pixels in all)", "relabel or remove")


def test_davis_first_annotation_without_objects_is_refused(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    edit_ids(first_annotation(root), lambda a: a.fill(0))
    only_problem(check("davis", root), "00000.png annotates no object", "leave the sequence out")


def test_davis_rgb_annotation_is_refused(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    with Image.open(first_annotation(root)) as image:
        image.convert("RGB").save(first_annotation(root))
    only_problem(check("davis", root), "00000.png is a RGB image", "indexed (P)", "Image.fromarray(ids, mode='P')")


def test_davis_damaged_png_and_jpeg_are_named(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    first_annotation(root).write_bytes(b"not a png")
    (root / "JPEGImages" / "480p" / "synth-001" / "00002.jpg").write_bytes(b"garbage")
    found = check("davis", root)
    only_problem(found, "00000.png cannot be read as a PNG", "restore the file")
    only_problem(found, "00002.jpg cannot be read as an image", "re-extract")


def test_davis_sequence_listed_twice_is_refused(originals, tmp_path):
    root = copy(originals, "davis", tmp_path)
    listing = root / "ImageSets" / "2017" / "val.txt"
    listing.write_text(listing.read_text() + "synth-000\n")
    only_problem(check("davis", root), "val.txt lists synth-000 more than once", "list each video once")


def test_davis_unknown_resolution_names_the_ones_there(originals, tmp_path):
    only_problem(check("davis", originals["davis"], davis_resolution="1080p"), "davis_resolution ('1080p')", "480p")


def test_davis_rsp_resized_layout_passes(originals, tmp_path):
    """The reference's 880x480-style copy (frames and masks resized with NEAREST) is valid input."""
    root = copy(originals, "davis", tmp_path)
    name = resize_davis(root, (176, 96))
    assert check("davis", root, davis_resolution=name) == []


# --- JHMDB -----------------------------------------------------------------------------------------------


def joints_file(root: Path) -> Path:
    return sorted((root / "joint_positions").rglob("joint_positions.mat"))[0]


@pytest.mark.parametrize(
    "change, parts",
    [
        (lambda p: savemat(p, {"pos_world": np.zeros((2, 15, 5))}), ("has no pos_img", "its variables: pos_world", "restore it")),
        (lambda p: savemat(p, {"pos_img": np.zeros((2, 13, 5))}), ("pos_img has shape (2, 13, 5), expected (2, 15, frames)",)),
        (lambda p: savemat(p, {"pos_img": np.ones((2, 15, 3))}), ("annotates 3 frames but walk/synth_000 has 5 frames",)),
        (lambda p: savemat(p, {"pos_img": "abc"}), ("pos_img holds <U3 values, not numbers",)),
        (lambda p: p.write_text("not a mat file"), ("cannot be read as a MATLAB .mat file", "restore it")),
    ],
)
def test_jhmdb_joints_file_rule(originals, tmp_path, change, parts):
    root = copy(originals, "jhmdb", tmp_path)
    change(joints_file(root))
    only_problem(check("jhmdb", root), "joint_positions.mat", *parts)


def test_jhmdb_nan_joint_is_refused(originals, tmp_path):
    root = copy(originals, "jhmdb", tmp_path)
    pos = loadmat(joints_file(root))["pos_img"]
    pos[1, 3, 2] = np.nan
    savemat(joints_file(root), {"pos_img": pos})
    only_problem(check("jhmdb", root), "1 NaN or infinite coordinate(s) (frame 3 joint 4)", "leave the video out")


def test_jhmdb_malformed_split_line_is_refused(originals, tmp_path):
    root = copy(originals, "jhmdb", tmp_path)
    split = next((root / "splits").glob("*.txt"))
    split.write_text(split.read_text() + "broken line here\n")
    only_problem(check("jhmdb", root), split.name, "line 3", "'<video>.avi 1|2'")


# --- VIP -------------------------------------------------------------------------------------------------


def vip_annotation(root: Path, index: int) -> Path:
    return sorted((root / "Annotations" / "Category_ids").glob("*/*.png"))[index]


def test_vip_id_outside_the_classes_is_named_with_its_pixel_count(originals, tmp_path):
    root = copy(originals, "vip", tmp_path)
    edit_ids(vip_annotation(root, 1), lambda a: a.__setitem__((slice(0, 2), slice(0, 3)), 30))
    only_problem(check("vip", root), "000005.png has id 30 (6 pixels)", "ids 0..19", "relabel them")


def test_vip_unlabelled_255_passes(originals, tmp_path):
    root = copy(originals, "vip", tmp_path)
    edit_ids(vip_annotation(root, 1), lambda a: a.__setitem__((slice(0, 2), slice(0, 3)), 255))
    assert check("vip", root) == []


def test_vip_annotation_of_another_size_is_refused(originals, tmp_path):
    root = copy(originals, "vip", tmp_path)
    path = vip_annotation(root, 1)
    with Image.open(path) as image:
        image.resize((56, 32), Image.NEAREST).save(path)
    only_problem(check("vip", root), "is 56x32 but its frame 000005.jpg is 112x64", "resize with NEAREST")


def test_vip_video_with_one_annotated_frame_is_refused(originals, tmp_path):
    root = copy(originals, "vip", tmp_path)
    for path in (root / "Annotations" / "Category_ids" / "videos1").glob("*.png"):
        if path.stem != "000000":
            path.unlink()
    only_problem(check("vip", root), "videos1 has one annotated frame", "nothing of this video would be scored")
