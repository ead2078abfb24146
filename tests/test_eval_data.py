"""Dataset readers on the official layouts, the generated benchmarks, bad input, and preparation
through a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import shutil
import zipfile

import fixtures_data
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat

from eval import archives, davis, jhmdb, vip
from eval.config import PRESETS
from eval.davis import read_davis, segment_sequence, short_side_size, write_davis
from eval.features import auto_batch_frames, preprocess
from eval.indexmaps import davis_palette, one_hot_grid, write_index_png
from eval.jhmdb import read_jhmdb, read_joints, write_jhmdb
from eval.vip import long_side_size, read_vip, write_vip
from rsp.encoder import ViTEncoder


def test_davis_input_sizes_follow_the_reference():
    # hand computation of the reference's rule (docs/evaluation.md#davis-protocol): long side
    # floor(480 * W / H / 64) * 64, e.g. 854 -> floor(13.3) * 64 = 832; VIP: short side floor(880 * 300 / 500 / 16) * 16 = 528
    assert short_side_size(480, 854) == (480, 832)
    assert short_side_size(480, 910) == (480, 896)
    assert short_side_size(480, 1152) == (480, 1152)
    assert short_side_size(854, 480) == (832, 480)  # portrait
    assert long_side_size(480, 854, 880, 16) == (480, 880)
    assert long_side_size(500, 300, 880, 16) == (880, 528)


def test_automatic_feature_batch():
    # hand computation of the rule: CPU 2048 // tokens per frame (832x480 at patch 16: 1560 tokens), GPU 8
    assert auto_batch_frames(torch.device("cpu"), 1560) == 1  # 480p at patch 16: one frame per pass on a CPU
    assert auto_batch_frames(torch.device("cpu"), 192) == 10
    assert auto_batch_frames(torch.device("cuda"), 6240) == 8


def test_preprocess_normalizes_with_the_reference_std():
    frame = np.full((1, 4, 4, 3), 255, dtype=np.uint8)
    x = preprocess(frame, (4, 4))
    # std 0.228 is what the reference evaluations normalize with: RSP's eval_video_segmentation_davis.py at
    # 53c5593 and DINO's eval_video_segmentation.py at 04c0ad95 (docs/evaluation.md#features)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.228, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_first_frame_labels_are_nearest_resized_one_hot():
    mask = np.zeros((16, 32), dtype=np.uint8)
    mask[:8, 16:] = 2
    labels = one_hot_grid(mask, (2, 4))
    assert labels.shape == (8, 3)  # C = max id + 1, even with id 1 absent
    assert labels.argmax(1).tolist() == [0, 0, 2, 2, 0, 0, 0, 0]


def test_generated_davis_has_several_objects_and_occlusion(tmp_path):
    root = write_davis(tmp_path, n_sequences=2, n_frames=30, height=96, width=160, objects=(3, 3), seed=1)
    seqs = read_davis(root)
    assert [s.name for s in seqs] == ["synth-000", "synth-001"] and len(seqs[0].frames) == 30
    with Image.open(seqs[0].annotations[0]) as first:
        assert first.mode == "P" and np.array(first).max() == 3
    areas = np.array([[np.sum(np.array(Image.open(p)) == k) for k in (1, 2, 3)] for p in seqs[0].annotations])
    assert (areas[0] > 0).all()
    assert (areas.min(axis=0) < areas.max(axis=0) * 0.9).any()  # some object gets (partly) hidden or leaves


def test_generated_jhmdb_stores_one_indexed_joints(tmp_path):
    root = write_jhmdb(tmp_path, n_videos=2, n_frames=6)
    videos = read_jhmdb(root)
    assert [v.name for v in videos] == ["walk/synth_000", "walk/synth_001"]
    assert loadmat(videos[0].joints_file)["pos_img"].shape == (2, 15, 6)
    joints = read_joints(videos[0])
    assert joints.shape == (6, 15, 2)
    with Image.open(videos[0].frames[0]) as frame:
        assert frame.size == (320, 240)
        # the figure's joint disc is drawn where the 0-indexed position says
        x, y = joints[0, 2].round().astype(int)
        assert np.array(frame)[y, x].tolist() != np.array(frame)[0, 0].tolist()


def test_generated_vip_annotates_every_nth_frame(tmp_path):
    root = write_vip(tmp_path, n_videos=2, n_frames=11, annotate_every=5)
    videos = read_vip(root)
    assert len(videos[0].frames) == 11 and sorted(videos[0].annotations) == ["000000", "000005", "000010"]
    ids = np.unique(np.array(Image.open(videos[0].annotations["000000"])))
    assert {0, 2, 5, 9, 13}.issubset(set(ids.tolist())) and ids.max() < 20


# --- bad input -----------------------------------------------------------------------------------------


def test_davis_reader_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/2017/val\.txt is missing.*eval\.prepare davis"):
        read_davis(tmp_path)
    root = write_davis(tmp_path / "d", n_sequences=1, n_frames=3)
    (root / "Annotations" / "480p" / "synth-000" / "00000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"00000\.png is missing: .*first frame's annotation"):
        read_davis(root)
    with pytest.raises(ValueError, match="sequences nope are not in"):
        read_davis(root, sequences=["nope"])
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match="val.txt lists no videos"):
        read_davis(root)


def test_davis_frame_missing_for_an_annotation(tmp_path):
    root = write_davis(tmp_path, n_sequences=1, n_frames=3)
    (root / "JPEGImages" / "480p" / "synth-000" / "00002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"00002\.jpg is missing but .*00002\.png annotates it"):
        read_davis(root)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ViTEncoder(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=1).eval()


def test_frames_and_masks_of_different_sizes(tmp_path, encoder):
    root = write_davis(tmp_path, n_sequences=1, n_frames=3, height=64, width=112)
    Image.new("RGB", (100, 64)).save(root / "JPEGImages" / "480p" / "synth-000" / "00001.jpg")
    with pytest.raises(ValueError, match=r"00001\.jpg is 100x64 but its annotation is 112x64"):
        segment_sequence(read_davis(root)[0], encoder, PRESETS["dino"], tmp_path / "out", torch.device("cpu"), 64)


def test_rgb_first_annotation_is_rejected(tmp_path, encoder):
    root = write_davis(tmp_path, n_sequences=1, n_frames=3, height=64, width=112)
    Image.new("RGB", (112, 64)).save(root / "Annotations" / "480p" / "synth-000" / "00000.png")
    with pytest.raises(ValueError, match=r"00000\.png is a RGB image, not an indexed \(P\) or grey \(L\) PNG"):
        segment_sequence(read_davis(root)[0], encoder, PRESETS["dino"], tmp_path / "out", torch.device("cpu"), 64)


def test_jhmdb_joint_count_must_match_frames(tmp_path):
    root = write_jhmdb(tmp_path, n_videos=1, n_frames=4)
    next((root / "Rename_Images").rglob("00004.png")).unlink()
    with pytest.raises(ValueError, match=r"joint_positions\.mat annotates 4 frames but walk/synth_000 has 3 frames"):
        read_joints(read_jhmdb(root)[0])
    with pytest.raises(FileNotFoundError, match="not a JHMDB root"):
        read_jhmdb(tmp_path / "nothing")


def test_vip_reader_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lists/val_videos\.txt is missing"):
        read_vip(tmp_path)
    root = write_vip(tmp_path / "v", n_videos=1, n_frames=6, annotate_every=5)
    (root / "Images" / "videos1" / "000005.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000005\.jpg is missing but has an annotation"):
        read_vip(root)


# --- preparation from a real HTTP server ----------------------------------------------------------------


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    with fixtures_data.http_server(served) as (url, _):
        yield served, url


def test_a_cut_download_is_never_taken_for_the_archive_and_a_rerun_resumes_it(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    data = np.random.default_rng(0).bytes(100_000)
    (served / "archive.zip").write_bytes(data)
    target = tmp_path / "dl" / "archive.zip"
    with fixtures_data.http_server(served) as (url, log):
        log.truncate_once.add("/archive.zip")
        with pytest.raises(OSError, match="fetch it by hand"):
            archives.download(f"{url}/archive.zip", target)
        assert not target.exists()
        assert archives.download(f"{url}/archive.zip", target) == target
        assert log.requests[-1][2].startswith("bytes=")  # resumed, not fetched again
    assert target.read_bytes() == data


def zip_folder(folder, archive, top: str = ""):
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{top}{path.relative_to(folder)}")


def test_prepare_davis_downloads_extracts_and_pre_resizes(tmp_path, http_server):
    served, url = http_server
    source = write_davis(tmp_path / "source", n_sequences=2, n_frames=3, height=48, width=80)
    zip_folder(source, served / "DAVIS-2017-trainval-480p.zip", top="DAVIS/")  # the real archive's top folder
    seqs = davis.prepare_davis(
        tmp_path / "DAVIS", f"{url}/DAVIS-2017-trainval-480p.zip", resize=(88, 48), downloads=tmp_path / "dl"
    )
    assert len(seqs) == 2 and (tmp_path / "dl" / "DAVIS-2017-trainval-480p.zip").is_file()
    resized = read_davis(tmp_path / "DAVIS", resolution="88x48")
    with (
        Image.open(resized[0].annotations[0]) as mask,
        Image.open(source / seqs[0].annotations[0].relative_to(tmp_path / "DAVIS")) as original,
    ):
        assert mask.size == (88, 48) and mask.mode == "P"
        assert set(np.unique(np.array(mask))) <= set(np.unique(np.array(original)))  # NEAREST: ids stay ids
    shutil.rmtree(served)  # a second run reuses the downloaded archive
    assert len(davis.prepare_davis(tmp_path / "DAVIS", f"{url}/DAVIS-2017-trainval-480p.zip", downloads=tmp_path / "dl")) == 2


def test_prepare_jhmdb_from_its_three_archives(tmp_path, http_server):
    served, url = http_server
    source = write_jhmdb(tmp_path / "source", n_videos=2, n_frames=3)
    for folder, archive in (
        ("Rename_Images", "Rename_Images.tar.gz"),
        ("joint_positions", "joint_positions.zip"),
        ("splits", "splits.zip"),
    ):
        if archive.endswith(".zip"):
            zip_folder(source / folder, served / archive, top=f"{folder}/")
        else:
            shutil.make_archive(str(served / "Rename_Images"), "gztar", source, folder)
    videos = jhmdb.prepare_jhmdb(tmp_path / "JHMDB", url, downloads=tmp_path / "dl")
    assert [v.name for v in videos] == ["walk/synth_000", "walk/synth_001"]


def test_prepare_vip_from_a_local_archive(tmp_path):
    source = write_vip(tmp_path / "source", n_videos=1, n_frames=6)
    zip_folder(source, tmp_path / "VIP_Fine.zip", top="VIP_Fine/")
    assert [v.name for v in vip.prepare_vip(tmp_path / "VIP", tmp_path / "VIP_Fine.zip")] == ["videos1"]
    with pytest.raises(FileNotFoundError, match="download VIP_Fine"):
        vip.prepare_vip(tmp_path / "VIP", tmp_path / "missing.zip")


def test_write_index_png_round_trip(tmp_path):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_index_png(tmp_path / "a" / "m.png", ids, davis_palette())
    with Image.open(tmp_path / "a" / "m.png") as image:
        assert image.mode == "P" and np.array_equal(np.array(image), ids)
        assert image.getpalette()[3:6] == [128, 0, 0]  # DAVIS colour of object 1
