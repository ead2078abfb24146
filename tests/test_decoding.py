"""The decoder interface (rsp/decoders.py), the labels file's seek modes and how the dataset uses
them, and the error a machine without FFmpeg's shared libraries gives."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchcodec
from fixtures_data import copy_dataset, data_config
from torchcodec import _core

from rsp import decoders
from rsp.data import FramePairDataset
from rsp.decoders import DECODERS, DecoderUnavailable, VideoReadError, check_torchcodec, first_line, open_reader, sequential
from rsp.video import (
    LABELS_HEADER,
    OLD_LABELS_HEADER,
    SEEK_LABELS_HEADER,
    DataError,
    LabelEntry,
    VideoFile,
    read_labels,
    write_labels,
)

# --- a machine without FFmpeg's shared libraries --------------------------------------------------


def _core_library_of_a_missing_ffmpeg() -> str:
    """A torchcodec core library built for an FFmpeg this machine lacks: torchcodec tries the
    newest first, so every version above the one it loaded failed to load here."""
    newer = [v for v in range(_core.ffmpeg_major_version + 1, 10)]
    name = f"libtorchcodec_core{newer[0]}.so" if newer else "libtorchcodec_core_missing.so"
    return str(Path(torchcodec.__file__).parent / name)


def test_missing_ffmpeg_libraries_give_an_error_naming_what_to_install():
    with pytest.raises(DecoderUnavailable) as err:
        check_torchcodec(lambda: torch.ops.load_library(_core_library_of_a_missing_ffmpeg()))
    message = str(err.value)
    assert "torchcodec cannot load FFmpeg's shared libraries (lib" in message and " not found)" in message
    assert "apt-get install ffmpeg" in message and "conda install -c conda-forge ffmpeg" in message
    assert message.endswith("or set data.decoder=decord, which bundles its own FFmpeg")
    assert not issubclass(DecoderUnavailable, VideoReadError)  # the run stops; videos are not counted broken


def test_decoder_status_command_lists_both_decoders(capsys):
    assert decoders.main(["--require", *DECODERS]) == 0
    out = capsys.readouterr().out
    assert f"torchcodec: torchcodec {torchcodec.__version__} (FFmpeg {_core.ffmpeg_major_version})" in out
    assert "decord: decord 0.6.0 (bundled FFmpeg)" in out and f"pyav: PyAV {av.__version__} (bundled FFmpeg" in out


def test_error_lines_lose_the_decoders_source_locations():
    tc = RuntimeError("decode_av_frame, /__w/torchcodec/src/torchcodec/_core/SingleStreamDecoder.cpp:1493, Could not push packet")
    dec = RuntimeError("[18:37:34] /github/workspace/src/video/video_reader.cc:151: Check failed: st_nb >= 0\nmore")
    assert (first_line(tc), first_line(dec)) == ("Could not push packet", "Check failed: st_nb >= 0")


# --- readers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
def test_random_and_sequential_reads_agree_and_reading_past_the_end_names_the_count(synthetic_root, decoder):
    path = synthetic_root / read_labels(synthetic_root / "labels.csv")[2].path
    reader = open_reader(decoder, path)
    assert reader.num_frames == 40
    picks = [0, 7, 29, 30, 39]
    assert np.array_equal(reader.random(picks), sequential(open_reader(decoder, path), picks))
    with pytest.raises(VideoReadError, match="decoding from the start ended after 40 frames; frame 40 was requested"):
        sequential(open_reader(decoder, path), [3, 40])
    with pytest.raises(VideoReadError, match="file does not exist"):
        open_reader(decoder, path.with_name("gone.mp4"))


# --- labels file ----------------------------------------------------------------------------------


def test_labels_round_trip_and_old_files_without_seek_modes_still_load(tmp_path):
    entries = [
        LabelEntry("a/x.mp4", 0, "a", 300, "random", "random", "sequential"),
        LabelEntry("b/y.mp4", 1, "b", 12, "", "unreadable", "", 5123, 1765000000123456789),
    ]
    write_labels(tmp_path / "labels.csv", entries)
    assert read_labels(tmp_path / "labels.csv") == entries
    (tmp_path / "seek.csv").write_text(",".join(SEEK_LABELS_HEADER) + "\na/x.mp4,0,a,300,random,,\n")
    (seek_only,) = read_labels(tmp_path / "seek.csv")  # written before sizes were recorded
    assert (seek_only.seek("pyav"), seek_only.size, seek_only.mtime_ns) == ("random", -1, -1)
    (tmp_path / "old.csv").write_text(",".join(OLD_LABELS_HEADER) + "\na/x.mp4,0,a,300\n")
    (old,) = read_labels(tmp_path / "old.csv")
    assert (old.num_frames, *(old.seek(d) for d in DECODERS)) == (300, "", "", "")


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            "a/x.mp4,0,a,300,random,fast,random,10,20",
            "line 2: seek modes torchcodec='fast' must be one of random, sequential, unreadable",
        ),
        (
            "a/x.mp4,0,a,300,random",
            "line 2: expected path,class_idx,class_name,num_frames,seek_pyav,seek_torchcodec,seek_decord,size",
        ),
        ("a/x.mp4,0,a,300,random,random,random,ten,20", "line 2: .*invalid literal for int"),
    ],
)
def test_bad_labels_rows_name_the_line_and_value(tmp_path, row, expected):
    (tmp_path / "labels.csv").write_text(",".join(LABELS_HEADER) + "\n" + row + "\n")
    with pytest.raises(DataError, match=expected):
        read_labels(tmp_path / "labels.csv")


# --- how the dataset reads each file --------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
def test_sequential_policy_reads_the_same_frames_as_verified_random_access(synthetic_root, decoder):
    fast = FramePairDataset(data_config(synthetic_root, decoder=decoder), img_size=16, seed=0)
    slow = FramePairDataset(data_config(synthetic_root, decoder=decoder, seek="sequential"), img_size=16, seed=0)
    assert {fast.seek_mode(e) for e in fast.entries} == {"random"} and {slow.seek_mode(e) for e in slow.entries} == {"sequential"}
    for key in [(0, 3), (1, 7), (2, 11)]:
        assert np.array_equal(fast.decode_item(key).frames, slow.decode_item(key).frames)


def test_files_without_a_verified_mode_are_decoded_from_the_start_and_the_dataset_says_so(synthetic_root, tmp_path, caplog):
    root = copy_dataset(synthetic_root, tmp_path / "ds")
    entries = read_labels(root / "labels.csv")
    unverified = [e._replace(seek_decord="") for e in entries[:5]] + entries[5:]
    write_labels(root / "labels.csv", unverified)
    with caplog.at_level(logging.INFO, logger="rsp.data"):
        ds = FramePairDataset(data_config(root, decoder="decord"), img_size=16, seed=0)
    assert [ds.seek_mode(e) for e in ds.entries] == ["sequential"] * 5 + ["random"] * 7
    assert "5 of 12 videos" in caplog.text and "no verified seek mode for data.decoder=decord" in caplog.text
    assert "python -m rsp.prepare labels" in caplog.text
    assert "data.decoder=decord: 7 of 12 videos by random access, 5 decoded from the first frame" in caplog.text


def test_a_file_the_decoder_cannot_read_is_counted_broken_without_trying(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "ds")
    entries = read_labels(root / "labels.csv")
    write_labels(root / "labels.csv", [entries[0]._replace(seek_torchcodec="unreadable"), *entries[1:]])
    ds = FramePairDataset(data_config(root, decoder="torchcodec"), img_size=16, seed=0)
    item = ds[(0, 0)]
    assert item["broken"] >= 1 and item["broken_paths"][0] == str(root / entries[0].path)
    with pytest.raises(VideoReadError, match="torchcodec cannot decode it \\(found by rsp.prepare labels\\)"):
        VideoFile(root / entries[0].path, "torchcodec", "unreadable", 40)


def test_synthetic_datasets_record_verified_seek_modes(synthetic_root):
    entries = read_labels(synthetic_root / "labels.csv")
    assert {(e.num_frames, *(e.seek(d) for d in DECODERS)) for e in entries} == {(40, "random", "random", "random")}


def test_the_decoder_is_part_of_the_run_identity_and_the_seek_policy_is_not():
    from rsp.config import DataConfig

    base = DataConfig()
    assert base.decoder == "pyav" and base.seek == "auto"
    hints = {f.name: f.metadata.get("affects_results", True) for f in dataclasses.fields(DataConfig)}
    assert hints["decoder"] is True and hints["seek"] is False
