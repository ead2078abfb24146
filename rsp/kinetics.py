"""Kinetics-400 preparation steps (docs/data.md#preparing-kinetics-400), each idempotent and resumable.

Every output file is written under a temporary name and renamed when complete (`atomic_path`),
so a finished file is never redone and an interrupted one leaves only a `.partial-*` file that
the next run deletes. Heavy steps run over `jobs` processes with a progress bar. A step never
stops on one bad file: failures are collected in its `StepReport`, logged and written to
`<root>/reports/<step>_failures.csv`.

Layout under the preparation root (`KineticsLayout`):
    downloads/train/k400_train_path.txt, downloads/train/part_*.tar.gz   download
    downloads/annotations/train.csv, downloads/replacement_for_corrupted_k400.tgz
    raw/*.mp4, raw_replacement/*.mp4                                      extract (flat)
    arranged/<class name>/<youtube_id>_<start>_<end>.mp4                  arrange
    train_<short side>/<class name>/<same name>.mp4                       rescale
    labels.csv, labels_dropped.csv                   labels (rsp.prepare.write_labels_file)
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin

from tqdm import tqdm

from core.atomicio import atomic_path, remove_stale_temporaries
from core.download import download_file
from rsp.filepool import run_isolated
from rsp.video import VIDEO_SUFFIXES, list_videos

DEFAULT_BASE_URL = "https://s3.amazonaws.com/kinetics/400"
CHUNK = 1 << 20  # bytes per read while extracting
DEFAULT_KEYINT = 1  # frames between keyframes of the rescale step: all-intra (docs/data.md#choosing-a-storage)


@dataclass(frozen=True)
class KineticsLayout:
    root: Path

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def train_list(self) -> Path:
        return self.downloads / "train" / "k400_train_path.txt"

    @property
    def annotations(self) -> Path:
        return self.downloads / "annotations" / "train.csv"

    @property
    def replacement_archive(self) -> Path:
        return self.downloads / "replacement_for_corrupted_k400.tgz"

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def raw_replacement(self) -> Path:
        return self.root / "raw_replacement"

    @property
    def arranged(self) -> Path:
        return self.root / "arranged"

    def videos(self, short_side: int) -> Path:
        return self.root / f"train_{short_side}"


@dataclass
class StepReport:
    """What one step did: files newly done, already done (skipped), and failures with reasons."""

    step: str
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Where `failed` is already listed, when the step writes the list itself (labels_dropped.csv).
    listed_in: Path | None = None

    def summary(self) -> str:
        return f"{self.step}: {self.done} done, {self.skipped} already done, {len(self.failed)} failed"

    def write_failures(self, root: Path) -> Path | None:
        """List the failures in `root/reports/<step>_failures.csv` unless the step has listed them
        itself; the file that lists them, or None when nothing failed."""
        if not self.failed:
            return None
        if self.listed_in is None:
            self.listed_in = root / "reports" / f"{self.step}_failures.csv"
            write_failure_list(self.listed_in, self.failed)
        return self.listed_in


def write_failure_list(path: Path, failed: Sequence[tuple[str, str]]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows([("path", "reason"), *failed])


def run_parallel(
    fn: Callable[[Any], Any], items: Sequence[Any], jobs: int, desc: str, stall_timeout: float | None = None
) -> Iterator[tuple[Any, Any, str]]:
    """Yield (item, result, error) as items finish; `error` is "" or why the item has none.

    `jobs` >= 1: spawned worker processes, one item each at a time (rsp/filepool.py): a native
    crash or a stall (`stall_timeout` seconds) costs its one item, never the batch, and no worker
    inherits this process's OpenMP state. `jobs` 0: in this process (for a debugger; a crash
    ends the step). Ctrl-C ends the workers, and the atomic writes make what was running
    restartable."""
    if jobs >= 1:
        yield from run_isolated(fn, items, jobs, desc, stall_timeout)
        return
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=None)
    for item in items:
        try:
            yield item, fn(item), ""
        except Exception as err:
            yield item, None, f"{type(err).__name__}: {err}"
        bar.update()
    bar.close()


# --- download -------------------------------------------------------------------------------------


def download(layout: KineticsLayout, base_url: str = DEFAULT_BASE_URL, jobs: int = 4, timeout: float = 60.0) -> StepReport:
    """The train list, then (in parallel) the annotations, the replacement archive and every part."""
    report = StepReport("download")
    list_url = f"{base_url.rstrip('/')}/train/k400_train_path.txt"
    _count(report, list_url, download_file(list_url, layout.train_list, timeout), "")
    lines = [line.strip() for line in layout.train_list.read_text().splitlines() if line.strip()]
    targets = [
        (f"{base_url.rstrip('/')}/annotations/train.csv", layout.annotations),
        (f"{base_url.rstrip('/')}/replacement_for_corrupted_k400.tgz", layout.replacement_archive),
    ] + [(urljoin(list_url, line), layout.train_list.parent / PurePosixPath(line).name) for line in lines]
    fetch = partial(_download_target, timeout=timeout)
    for (url, _), fetched, error in run_parallel(fetch, targets, jobs, "download"):
        _count(report, url, fetched, error)
    return report


def _download_target(target: tuple[str, Path], timeout: float) -> bool:
    return download_file(target[0], target[1], timeout)


def _count(report: StepReport, name: Any, did_work: Any, error: str) -> None:
    if error:
        report.failed.append((str(name), error))
    elif did_work:
        report.done += 1
    else:
        report.skipped += 1


# --- extract --------------------------------------------------------------------------------------


def extract_archive(archive: Path, dest: Path) -> bool:
    """Unpack the video files of `archive` flat into `dest`; a marker file records completion.
    Returns False when the archive was extracted before."""
    marker = dest / f".extracted-{archive.name}"
    if marker.exists():
        return False
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            # flat by base name: Kinetics file names are unique, and no member can escape `dest`
            name = PurePosixPath(member.name).name
            if not member.isfile() or name.startswith(".") or Path(name).suffix.lower() not in VIDEO_SUFFIXES:
                continue
            target = dest / name
            if target.exists() and target.stat().st_size == member.size:
                continue
            with atomic_path(target) as tmp, tar.extractfile(member) as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
    marker.touch()
    return True


def extract(layout: KineticsLayout, jobs: int = 4) -> StepReport:
    report = StepReport("extract")
    remove_stale_temporaries(layout.raw, recursive=True)
    remove_stale_temporaries(layout.raw_replacement, recursive=True)
    jobs_list = [(a, layout.raw) for a in sorted(layout.train_list.parent.glob("*.tar.gz"))]
    if layout.replacement_archive.exists():
        jobs_list.append((layout.replacement_archive, layout.raw_replacement))
    if not jobs_list:
        raise FileNotFoundError(f"no archives under {layout.train_list.parent}; run the download step first")
    for (archive, _), extracted, error in run_parallel(_extract_job, jobs_list, jobs, "extract"):
        _count(report, archive, extracted, error)
    return report


def _extract_job(job: tuple[Path, Path]) -> bool:
    return extract_archive(*job)


# --- arrange --------------------------------------------------------------------------------------


def read_annotations(path: Path) -> dict[str, str]:
    """Video file name (`<youtube_id>_<start:06d>_<end:06d>.mp4`) -> class name, from train.csv."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    needed = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"{path} must be a CSV with the columns {', '.join(sorted(needed))}")
    return {f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}.mp4": r["label"] for r in rows}


def arrange(layout: KineticsLayout) -> StepReport:
    """Move the flat files into class folders; a video of the replacement set wins over the
    (corrupted) original, also when the original was arranged before."""
    report = StepReport("arrange")
    annotations = read_annotations(layout.annotations)
    for name, label in tqdm(sorted(annotations.items()), desc="arrange", unit="file", disable=None):
        dest = layout.arranged / label.replace("/", "_") / name
        replacement, original = layout.raw_replacement / name, layout.raw / name
        source = replacement if replacement.exists() else None if dest.exists() else original
        if source is None:
            report.skipped += 1
        elif source.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, dest)  # a rename: atomic, and no second copy of 450 GB
            if source == replacement:
                original.unlink(missing_ok=True)  # the corrupted original is superseded
            report.done += 1
        else:
            report.failed.append((name, "listed in train.csv but in no extracted archive"))
    return report


# --- rescale --------------------------------------------------------------------------------------


def x264_tune(keyint: int) -> dict[str, str]:
    """x264's tuning for a keyframe interval: all-intra (1) is encoded for fast decoding (no CABAC,
    no deblocking), which halves the decode of a frame for ~6% more bytes on real videos
    (docs/data.md#choosing-a-storage); other intervals keep x264's default."""
    return {"tune": "fastdecode"} if keyint == 1 else {}


def ffmpeg_command(
    ffmpeg: str, src: Path, dst: Path, short_side: int, keyint: int, preset: str, crf: int, passthrough: str = "-fps_mode"
) -> list[str]:
    """Short side to `short_side`, aspect kept, the other side even (-2); every source frame kept
    with its timestamp (`passthrough`: `-fps_mode passthrough`, FFmpeg >= 5.1, or `-vsync` before:
    ffmpeg's default for mp4 is a constant frame rate, which duplicates frames of low-rate and
    variable-rate sources, and a frame gap k would no longer mean k source frames), in the
    source's time base (`-enc_time_base -1`; the encoder's own would round times by up to 4 ms); a keyframe
    every `keyint` frames (the default 1, all-intra: reading a frame decodes that frame only, ~3.8x
    the bytes of a keyframe every 30; random access at 30 is ~4x cheaper than at x264's default 250,
    docs/data.md#choosing-a-storage), all-intra tuned for fast decoding (`x264_tune`); no B-frame
    used as a reference (`b-pyramid=none`: PyAV's random access skips every B-frame it does not
    return, ~20% less decoding per item for ~2% more bytes); no audio.
    A rotated source comes out upright (ffmpeg applies the display matrix)."""
    s = short_side
    scale = f"scale='if(gt(iw,ih),-2,{s})':'if(gt(iw,ih),{s},-2)'"  # quoted: the commas belong to if()
    return [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
        "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", scale, passthrough, "passthrough", "-enc_time_base", "-1",
        "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-g", str(keyint), "-x264-params", "b-pyramid=none",
        *(arg for option, value in x264_tune(keyint).items() for arg in (f"-{option}", value)),
        "-pix_fmt", "yuv420p",
        "-threads", "1", "-movflags", "+faststart", "-f", "mp4", str(dst),
    ]  # fmt: skip


def passthrough_option(ffmpeg: str) -> str:
    """`-fps_mode` (FFmpeg >= 5.1) or `-vsync` (older, deprecated since): the option that passes
    frames through with their timestamps."""
    run = subprocess.run([ffmpeg, "-hide_banner", "-h", "long"], capture_output=True, text=True, timeout=60)
    return "-fps_mode" if "-fps_mode" in run.stdout else "-vsync"


def rescale_video(job: tuple[Path, Path], command: Callable[[Path, Path], list[str]], timeout: float) -> bool:
    src, dst = job
    if dst.exists():
        return False
    with atomic_path(dst) as tmp:
        run = subprocess.run(command(src, tmp), capture_output=True, text=True, timeout=timeout)
        if run.returncode != 0:
            last_lines = " | ".join(run.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"ffmpeg exit {run.returncode}: {last_lines[-400:]}")
    return True


def rescale(
    layout: KineticsLayout,
    short_side: int = 256,
    keyint: int = DEFAULT_KEYINT,
    jobs: int = 4,
    ffmpeg: str = "ffmpeg",
    preset: str = "veryfast",
    crf: int = 23,
    timeout: float = 600.0,
) -> StepReport:
    if short_side < 2 or short_side % 2:
        raise ValueError(f"short_side ({short_side}) must be even and >= 2 (h264 with 4:2:0 chroma)")
    executable = shutil.which(ffmpeg)
    if executable is None:
        raise FileNotFoundError(f"ffmpeg ({ffmpeg!r}) not found on PATH; install it (apt install ffmpeg) or pass --ffmpeg")
    out_dir = layout.videos(short_side)
    remove_stale_temporaries(out_dir, recursive=True)
    jobs_list = [(src, out_dir / src.parent.name / f"{src.stem}.mp4") for src in list_videos(layout.arranged)]
    pending = [job for job in jobs_list if not job[1].exists()]
    report = StepReport("rescale", skipped=len(jobs_list) - len(pending))
    command = partial(
        ffmpeg_command, executable, short_side=short_side, keyint=keyint, preset=preset, crf=crf,
        passthrough=passthrough_option(executable),
    )  # fmt: skip
    work = partial(rescale_video, command=command, timeout=timeout)
    for (src, _), encoded, error in run_parallel(work, pending, jobs, "rescale", timeout + 60):
        _count(report, src, encoded, error)
    return report
