"""Kinetics-400 preparation: download from a real HTTP server on 127.0.0.1, extract, arrange,
rescale with the real ffmpeg, labels; idempotence and restart after interruption."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from functools import partial
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from fixtures_data import TINY, http_server

from core.download import DownloadError, download_file
from rsp import kinetics, prepare
from rsp.generated_videos import synthetic_frames, write_video
from rsp.kinetics import KineticsLayout, ffmpeg_command, rescale_video
from rsp.kinetics_raw import generate_kinetics_raw
from rsp.synthetic import generate_dataset
from rsp.video import list_videos

pytestmark = pytest.mark.usefixtures("needs_ffmpeg")

MIRROR_FILES = (
    "train/k400_train_path.txt",
    "train/part_0.tar.gz",
    "train/part_1.tar.gz",
    "annotations/train.csv",
    "replacement_for_corrupted_k400.tgz",
)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> tuple[Path, kinetics.StepReport]:
    """A Kinetics server mirror: 12 videos in 2 parts, 2 replaced, 1 broken, 1 unavailable."""
    out = tmp_path_factory.mktemp("mirror")
    return out, generate_kinetics_raw(out, 12, num_parts=2, num_frames=40)


# --- download -------------------------------------------------------------------------------------


def test_download_fetches_the_list_and_what_it_names_then_nothing_more(mirror, tmp_path):
    source, _ = mirror
    layout = KineticsLayout(tmp_path)
    with http_server(source) as (url, log):
        report = kinetics.download(layout, url, jobs=2)
        assert (report.done, report.skipped, report.failed) == (5, 0, [])
        requests = len(log.requests)
        again = kinetics.download(layout, url, jobs=2)
        assert (again.done, again.skipped) == (0, 5) and len(log.requests) == requests  # no request at all
    for rel in MIRROR_FILES:
        assert (layout.downloads / rel).read_bytes() == (source / rel).read_bytes(), rel


def test_download_resumes_a_partial_file_with_a_range_request(mirror, tmp_path):
    source, _ = mirror
    data = (source / "train" / "part_0.tar.gz").read_bytes()
    dest = tmp_path / "part_0.tar.gz"
    (tmp_path / "part_0.tar.gz.part").write_bytes(data[:1000])
    with http_server(source) as (url, log):
        assert download_file(f"{url}/train/part_0.tar.gz", dest)
    assert log.requests == [("GET", "/train/part_0.tar.gz", "bytes=1000-")]
    assert dest.read_bytes() == data and not (tmp_path / "part_0.tar.gz.part").exists()


def test_a_cut_connection_keeps_the_partial_file_and_a_rerun_completes_it(mirror, tmp_path):
    source, _ = mirror
    layout = KineticsLayout(tmp_path)
    with http_server(source) as (url, log):
        log.truncate_once.add("/train/part_1.tar.gz")
        report = kinetics.download(layout, url, jobs=1)
        assert len(report.failed) == 1 and "part_1.tar.gz" in report.failed[0][0]
        assert "rerun to resume" in report.failed[0][1]
        kept = (layout.train_list.parent / "part_1.tar.gz.part").stat().st_size
        assert 0 < kept < (source / "train" / "part_1.tar.gz").stat().st_size
        again = kinetics.download(layout, url, jobs=1)
        assert (again.done, again.failed) == (1, [])
        assert log.requests[-1] == ("GET", "/train/part_1.tar.gz", f"bytes={kept}-")
    assert (layout.train_list.parent / "part_1.tar.gz").read_bytes() == (source / "train" / "part_1.tar.gz").read_bytes()


def test_a_server_without_range_support_gets_a_fresh_download(mirror, tmp_path):
    source, _ = mirror
    (tmp_path / "train.csv.part").write_bytes(b"stale bytes that must not stay in front")
    with http_server(source) as (url, log):
        log.ignore_range = True
        assert download_file(f"{url}/annotations/train.csv", tmp_path / "train.csv")
    assert (tmp_path / "train.csv").read_bytes() == (source / "annotations" / "train.csv").read_bytes()


def test_a_missing_file_on_the_server_names_the_url(mirror, tmp_path):
    with http_server(mirror[0]) as (url, _):
        with pytest.raises(DownloadError, match=r"/train/part_9.tar.gz: HTTP 404"):
            download_file(f"{url}/train/part_9.tar.gz", tmp_path / "part_9.tar.gz")


# --- extract, arrange, rescale, labels ------------------------------------------------------------


def _prepared(mirror, root: Path) -> KineticsLayout:
    shutil.copytree(mirror[0], root / "downloads")
    assert (
        prepare.main(["all", "--root", str(root), "--jobs", "2", "--short-side", "64", "--base-url", "http://127.0.0.1:9"]) == 0
    )
    return KineticsLayout(root)


@pytest.mark.slow  # every preparation step with ffmpeg: ~10 s
def test_prepare_all_builds_a_trainable_kinetics_layout(mirror, tmp_path):
    layout = _prepared(mirror, tmp_path)
    made = mirror[1]
    rows = [r.split(",") for r in (tmp_path / "labels.csv").read_text().splitlines()[1:]]
    listed = sorted(Path(r[0]).name for r in rows)
    assert listed == sorted(made.good + made.replaced)
    for name in listed:
        assert (layout.videos(64) / made.label_of[name] / name).is_file()  # class folders, spaces kept
    assert made.unavailable[0] in (tmp_path / "reports" / "arrange_failures.csv").read_text()
    assert made.broken[0] in (tmp_path / "reports" / "rescale_failures.csv").read_text()
    for path in list_videos(layout.videos(64)):
        reader = decord.VideoReader(str(path), num_threads=1)
        height, width = reader[0].shape[:2]
        assert min(height, width) == 64 and height % 2 == width % 2 == 0
        assert len(reader) == 40 and reader.get_key_indices() == list(range(40))  # all-intra, the default


@pytest.mark.slow  # the whole preparation twice, with ffmpeg: ~12 s
def test_a_second_run_redoes_nothing(mirror, tmp_path):
    layout = _prepared(mirror, tmp_path)
    videos = {p: p.stat().st_mtime_ns for p in list_videos(layout.videos(64))}
    assert kinetics.extract(layout).done == 0
    assert kinetics.arrange(layout).done == 0
    assert kinetics.rescale(layout, short_side=64, jobs=2).done == 0
    labels = prepare.write_labels_file(tmp_path, layout.videos(64), jobs=2)
    assert (labels.done, labels.skipped) == (0, len(videos))
    assert {p: p.stat().st_mtime_ns for p in videos} == videos


def test_an_interrupted_rescale_redoes_no_finished_file(tmp_path):
    generate_dataset(tmp_path / "gen", 30, num_classes=2, **TINY)
    layout = KineticsLayout(tmp_path / "prep")
    layout.root.mkdir()
    shutil.move(tmp_path / "gen" / "train", layout.arranged)
    command = [sys.executable, "-m", "rsp.prepare", "rescale", "--root", str(layout.root), "--jobs", "1", "--short-side", "64"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list_videos(layout.videos(64))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # like a preempted job: no cleanup runs
    proc.wait()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in list_videos(layout.videos(64))}
    assert 3 <= len(finished) < 30
    report = kinetics.rescale(layout, short_side=64, jobs=2)
    assert (report.skipped, report.done, report.failed) == (len(finished), 30 - len(finished), [])
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished
    assert len(list_videos(layout.videos(64))) == 30
    assert not [p for p in layout.videos(64).rglob("*") if p.name.startswith(".partial-")]


def test_ffmpeg_gets_an_argument_list_not_a_shell_line(tmp_path):
    src = tmp_path / "in $(touch pwned) 'q'; x.mp4"
    write_video(src, synthetic_frames(np.random.default_rng(0), 5, 64, 80))
    command = partial(ffmpeg_command, "ffmpeg", short_side=32, keyint=30, preset="ultrafast", crf=23)
    assert command(src, tmp_path / "o.mp4")[command(src, tmp_path / "o.mp4").index("-i") + 1] == str(src)
    assert rescale_video((src, tmp_path / "out" / "o.mp4"), command, 60)
    assert (tmp_path / "out" / "o.mp4").is_file() and not list(tmp_path.rglob("pwned"))


def test_all_intra_is_encoded_for_fast_decoding(tmp_path):
    """x264 writes its settings into the stream (an SEI message): all-intra has no CABAC and no
    deblocking (`-tune fastdecode`), a keyframe every 30 keeps x264's defaults."""
    src = tmp_path / "src.mp4"
    write_video(src, synthetic_frames(np.random.default_rng(0), 4, 64, 80))
    settings = {}
    for keyint in (1, 30):
        command = partial(ffmpeg_command, "ffmpeg", short_side=32, keyint=keyint, preset="veryfast", crf=23)  # the recipe's
        assert rescale_video((src, tmp_path / f"k{keyint}.mp4"), command, 60)
        with av.open(str(tmp_path / f"k{keyint}.mp4")) as container:
            first = bytes(next(container.demux(video=0)))
        settings[keyint] = re.findall(rb"(cabac|deblock)=(\d)", first)
    assert settings == {1: [(b"cabac", b"0"), (b"deblock", b"0")], 30: [(b"cabac", b"1"), (b"deblock", b"1")]}


def test_rescale_drops_audio_keeps_the_aspect_and_makes_sides_even(tmp_path):
    src = tmp_path / "with_audio.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=90x50:rate=25", "-f", "lavfi",
         "-i", "sine=frequency=440", "-t", "1", "-c:v", "libx264", "-c:a", "aac", str(src)],
        check=True,
    )  # fmt: skip
    with av.open(str(src)) as container:
        assert len(container.streams.audio) == 1
    command = partial(ffmpeg_command, "ffmpeg", short_side=32, keyint=30, preset="ultrafast", crf=23)
    rescale_video((src, tmp_path / "out.mp4"), command, 60)
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert len(container.streams.audio) == 0
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (58, 32)  # 90 * 32 / 50 = 57.6 -> even 58


@pytest.mark.slow  # the labels step twice in spawned workers: ~12 s
def test_labels_step_drops_unreadable_and_short_videos_with_reasons_and_resumes(tmp_path):
    videos = tmp_path / "train" / "c"
    write_video(videos / "good.mp4", synthetic_frames(np.random.default_rng(0), 12, 32, 32))
    write_video(videos / "short.mp4", synthetic_frames(np.random.default_rng(0), 3, 32, 32))
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "text.mp4").write_text("no video here")
    (videos / "cut.mp4").write_bytes((videos / "good.mp4").read_bytes()[:1500])
    report = prepare.write_labels_file(tmp_path, tmp_path / "train", min_frames=5, jobs=2)
    stat = (videos / "good.mp4").stat()  # recorded, so that a file replaced afterwards is caught
    expected = f"train/c/good.mp4,0,c,12,random,random,random,{stat.st_size},{stat.st_mtime_ns}"
    assert (tmp_path / "labels.csv").read_text().splitlines()[1:] == [expected]
    dropped = dict(line.split(",", 1) for line in (tmp_path / "labels_dropped.csv").read_text().splitlines()[1:])
    assert "fewer than --min-frames 5" in dropped["train/c/short.mp4"]
    assert "empty" in dropped["train/c/empty.mp4"]
    assert "decord cannot open" in dropped["train/c/text.mp4"] and "decord cannot open" in dropped["train/c/cut.mp4"]
    assert report.done == 5 and len(report.failed) == 4
    cache = tmp_path / ".labels_probe_cache.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # as if killed while writing line 3
    again = prepare.write_labels_file(tmp_path, tmp_path / "train", min_frames=5, jobs=1)
    assert (again.skipped, again.done) == (2, 3)


def test_extract_is_flat_and_keeps_members_inside_the_destination(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("../../evil.mp4", "dir/sub/x.mp4", "._x.mp4", "notes.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    assert kinetics.extract_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".extracted-a.tar.gz", "evil.mp4", "x.mp4"]
    assert not (tmp_path.parent / "evil.mp4").exists()
    assert not kinetics.extract_archive(archive, tmp_path / "out")  # marker: done before


def test_arrange_lets_a_late_replacement_win(tmp_path):
    layout = KineticsLayout(tmp_path)
    layout.annotations.parent.mkdir(parents=True)
    layout.annotations.write_text("label,youtube_id,time_start,time_end,split,is_cc\nabseiling,abc,0,10,train,0\n")
    (layout.raw).mkdir()
    (layout.raw / "abc_000000_000010.mp4").write_bytes(b"corrupted")
    assert kinetics.arrange(layout).done == 1
    layout.raw_replacement.mkdir()
    (layout.raw_replacement / "abc_000000_000010.mp4").write_bytes(b"good")
    assert kinetics.arrange(layout).done == 1
    assert (layout.arranged / "abseiling" / "abc_000000_000010.mp4").read_bytes() == b"good"
    assert kinetics.arrange(layout).skipped == 1


def test_a_step_that_cannot_run_says_why_and_exits_non_zero(tmp_path, caplog):
    assert prepare.main(["extract", "--root", str(tmp_path)]) == 2
    assert "no archives under" in caplog.text and "run the download step first" in caplog.text
    assert prepare.main(["labels", "--root", str(tmp_path)]) == 2
    assert f"{tmp_path / 'train_256'} does not exist" in caplog.text and "pass --videos-dir SUBDIR" in caplog.text


def test_the_labels_step_names_loose_videos_and_refuses_to_keep_none(tmp_path, caplog):
    loose = tmp_path / "train" / "clip.mp4"
    write_video(loose, synthetic_frames(np.random.default_rng(0), 3, 32, 32))
    assert prepare.main(["labels", "--root", str(tmp_path), "--videos-dir", "train", "--jobs", "0"]) == 2
    assert "1 video(s) lie directly in" in caplog.text and "move them into class folders" in caplog.text
    (tmp_path / "other" / "d").mkdir(parents=True)
    (tmp_path / "other" / "d" / "clip.m4v").write_bytes(b"not listed")
    assert prepare.main(["labels", "--root", str(tmp_path), "--videos-dir", "other", "--jobs", "0"]) == 2
    assert "found only 1 other file(s), e.g. d/clip.m4v" in caplog.text
    (tmp_path / "train" / "c").mkdir()
    loose.rename(tmp_path / "train" / "c" / "clip.mp4")  # 3 frames: fewer than --min-frames' default 5
    (tmp_path / "train" / "c" / "clip.m4v").write_bytes(b"not listed")
    assert prepare.main(["labels", "--root", str(tmp_path), "--videos-dir", "train", "--jobs", "0"]) == 2
    assert "1 file(s) in the class folders are not listed" in caplog.text and "(e.g. c/clip.m4v)" in caplog.text
    assert "none of the 1 videos" in caplog.text and "fewer than --min-frames 5" in caplog.text
    assert not (tmp_path / "labels.csv").exists() and (tmp_path / "labels_dropped.csv").is_file()


def test_each_step_help_shows_that_steps_options(capsys):
    with pytest.raises(SystemExit) as done:
        prepare.build_parser().parse_args(["labels", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "python -m rsp.prepare labels" in shown and "--min-frames" in shown and "--decoders" in shown
    assert "--base-url" not in shown and "--crf" not in shown  # other steps' options
