"""Bad input, one test per case, with real encoded files made in the test: a file one decoder opens
and the other refuses, a wrong container frame count, a rotated file, an audio-only file, a
truncated file whose first part decodes. Each is read correctly (the frames of a decode from the
first frame) or skipped with its path and reason counted; never a wrong frame, never a crash."""

from __future__ import annotations

import csv
import logging
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from fixtures_data import data_config

from rsp.data import FramePairDataset
from rsp.decoders import DECODERS
from rsp.generated_videos import synthetic_frames, write_video
from rsp.prepare import write_labels_file
from rsp.video import OLD_LABELS_HEADER, read_labels

pytestmark = pytest.mark.usefixtures("needs_ffmpeg")


def pyav_decode(path: Path) -> list[np.ndarray]:
    """RGB frames of a decode from the first frame, up to the first error."""
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError:
        pass
    return frames


def dataset_root(tmp_path: Path, *bad: Path) -> Path:
    """tmp_path/train/c/ holding `bad` and one good generated video, and the labels step's output."""
    folder = tmp_path / "train" / "c"
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / "good.mp4", synthetic_frames(np.random.default_rng(9), 30, 64, 80))
    for path in bad:
        if path.parent != folder:
            path.rename(folder / path.name)
    write_labels_file(tmp_path, tmp_path / "train", min_frames=5, jobs=1)
    return tmp_path


def items(root: Path, name: str, decoder: str, epochs: int = 4, **overrides) -> tuple[FramePairDataset, list]:
    ds = FramePairDataset(data_config(root, decoder=decoder, batch_size=1, repeated_sampling=3, **overrides), 32, 0)
    index = [p.name for p in ds.paths].index(name)
    return ds, [ds.decode_item((epoch, index)) for epoch in range(epochs)]


def assert_frames(decoded: list, reference: list[np.ndarray], rotate: int = 0) -> None:
    for item in decoded:
        assert item.broken_paths == []
        for frame, index in zip(item.frames.reshape(-1, *item.frames.shape[2:]), item.frame_indices.reshape(-1), strict=True):
            assert np.array_equal(frame, np.rot90(reference[index], rotate)), f"{item.path.name} frame {index}"


def write_old_labels(root: Path, names: list[str]) -> str:
    with (root / "old.csv").open("w", newline="") as f:
        csv.writer(f).writerows([OLD_LABELS_HEADER, *[(f"train/c/{n}", 0, "c", -1) for n in names]])
    return "old.csv"


def test_a_file_decord_cannot_decode_is_read_by_the_others_and_counted_broken_under_decord(tmp_path, caplog):
    av1 = tmp_path / "av1.mp4"  # decord's bundled FFmpeg 4.1 has no AV1 decoder
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-frames:v", "40",
         "-c:v", "libaom-av1", "-cpu-used", "8", "-g", "10", str(av1)],
        check=True,
    )  # fmt: skip
    root = dataset_root(tmp_path, av1)
    entry = next(e for e in read_labels(root / "labels.csv") if e.path.endswith("av1.mp4"))
    assert (entry.num_frames, entry.seek("pyav"), entry.seek("torchcodec"), entry.seek("decord")) == (
        40,
        "random",
        "random",
        "unreadable",
    )
    for decoder in ("pyav", "torchcodec"):
        _, decoded = items(root, "av1.mp4", decoder)
        assert_frames(decoded, pyav_decode(root / entry.path))
    caplog.set_level(logging.WARNING, logger="rsp.data")
    ds, decoded = items(root, "av1.mp4", "decord")
    assert "1 of 2 videos in" in caplog.text and "cannot be decoded by data.decoder=decord" in caplog.text
    assert all(set(d.broken_paths) == {str(root / entry.path)} and d.path.name == "good.mp4" for d in decoded)
    assert "av1.mp4: decord cannot decode it" in caplog.text  # the replaced read is logged with its reason


def _avi(path: Path, frames: int, claimed: int) -> None:
    """An MPEG-4 AVI of `frames` frames whose headers (avih total frames, strh length) claim `claimed`."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        stream.codec_context.gop_size = 10
        for i, image in enumerate(synthetic_frames(np.random.default_rng(1), frames, 64, 80)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = bytearray(path.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    assert struct.unpack_from("<I", data, avih + 24)[0] == frames == struct.unpack_from("<I", data, strh + 40)[0]
    struct.pack_into("<I", data, avih + 24, claimed)  # dwTotalFrames
    struct.pack_into("<I", data, strh + 40, claimed)  # dwLength
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_wrong_container_frame_count_gives_way_to_the_true_count(tmp_path, decoder):
    _avi(tmp_path / "more.avi", 60, claimed=150)
    _avi(tmp_path / "less.avi", 60, claimed=30)
    with av.open(str(tmp_path / "more.avi")) as container:
        assert container.streams.video[0].frames == 150  # what the header says
    root = dataset_root(tmp_path, tmp_path / "more.avi", tmp_path / "less.avi")
    assert {Path(e.path).name: e.num_frames for e in read_labels(root / "labels.csv")} == {
        "good.mp4": 30,
        "less.avi": 60,
        "more.avi": 60,
    }
    for name in ("more.avi", "less.avi"):
        reference = pyav_decode(root / "train" / "c" / name)
        _, decoded = items(root, name, decoder)
        assert_frames(decoded, reference)
        _, decoded = items(root, name, decoder, labels=write_old_labels(root, [name, "good.mp4"]))  # no count recorded
        assert_frames(decoded, reference)


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_rotated_file_is_read_upright_by_both_decoders(tmp_path, decoder):
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(90)  # a display matrix: shown turned 90 degrees counter-clockwise
        for i, image in enumerate(synthetic_frames(np.random.default_rng(2), 40, 64, 96)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    root = dataset_root(tmp_path, path)
    entry = next(e for e in read_labels(root / "labels.csv") if e.path.endswith("rotated.mp4"))
    assert (entry.num_frames, entry.seek(decoder)) == (40, "random")
    _, decoded = items(root, "rotated.mp4", decoder)
    assert decoded[0].frames.shape[2:] == (96, 64, 3)  # upright: height and width swapped
    assert_frames(decoded, pyav_decode(root / entry.path), rotate=1)  # PyAV's frames are as stored


def test_an_audio_only_file_is_dropped_by_the_labels_step_and_counted_broken_from_old_labels(tmp_path, caplog):
    audio = tmp_path / "audio.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440", "-t", "2", "-c:a", "aac", str(audio)], check=True
    )
    root = dataset_root(tmp_path, audio)
    assert [Path(e.path).name for e in read_labels(root / "labels.csv")] == ["good.mp4"]
    dropped = (root / "labels_dropped.csv").read_text()
    assert "train/c/audio.mp4" in dropped and "no video stream" in dropped
    caplog.set_level(logging.WARNING, logger="rsp.data")
    for decoder in DECODERS:
        ds, decoded = items(root, "audio.mp4", decoder, labels=write_old_labels(root, ["audio.mp4", "good.mp4"]))
        assert all(set(d.broken_paths) == {str(root / "train/c/audio.mp4")} and d.path.name == "good.mp4" for d in decoded)
    assert caplog.text.count("audio.mp4: ") >= 2  # one logged reason per decoder's dataset


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_truncated_file_is_read_up_to_where_it_decodes(tmp_path, container, caplog):
    whole = tmp_path / "whole.mp4"
    write_video(whole, synthetic_frames(np.random.default_rng(3), 90, 64, 80), keyint=30)
    original = pyav_decode(whole)
    remuxed = tmp_path / f"remuxed.{container}"  # mp4 with its index first, so the cut loses frames, not the index
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(whole), "-c", "copy", "-movflags", "+faststart", str(remuxed)], check=True)
    cut = tmp_path / f"cut.{container}"
    cut.write_bytes(remuxed.read_bytes()[: remuxed.stat().st_size * 6 // 10])
    decodable = pyav_decode(cut)
    assert 10 < len(decodable) < 90
    root = dataset_root(tmp_path, cut)
    entry = next(e for e in read_labels(root / "labels.csv") if e.path.endswith(cut.name))
    assert entry.num_frames == len(decodable)
    readable = [d for d in DECODERS if entry.seek(d) != "unreadable"]
    assert "torchcodec" in readable
    for decoder in readable:
        _, decoded = items(root, cut.name, decoder)
        assert_frames(decoded, decodable)
    # the frames before the cut are the original's, except at the very end, where B-frames whose
    # packets were cut are missing from the decode: there a later frame takes the index
    intact = next(
        (i for i, (a, b) in enumerate(zip(decodable, original, strict=False)) if not np.array_equal(a, b)), len(decodable)
    )
    assert intact >= len(decodable) - 3
    for decoder in set(DECODERS) - set(readable):
        caplog.set_level(logging.WARNING, logger="rsp.data")
        _, decoded = items(root, cut.name, decoder, epochs=1)
        assert set(decoded[0].broken_paths) == {str(root / entry.path)}
