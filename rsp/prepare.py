"""Prepare Kinetics-400 for RSP pretraining (docs/data.md#preparing-kinetics-400): `python -m rsp.prepare <step> --root DIR`.

The Kinetics-specific steps live in rsp/kinetics.py; the labels step is here because it serves
any directory of class folders (`labels --root DIR --videos-dir SUBDIR`).

Steps, in order (`all` runs them one after another); each is idempotent and can be interrupted
and rerun, redoing no finished file:
    download  train list, annotations, replacement archive, tar.gz parts (HTTP Range resume,
              sizes checked against the server's)
    extract   parts -> raw/, replacement archive -> raw_replacement/ (flat)
    arrange   raw/ -> arranged/<class>/ from annotations/train.csv; replacements win
    rescale   arranged/ -> train_256/: short side 256, aspect kept, even sides, every frame a
              keyframe (--keyint 1, all-intra; 30 for a third of the bytes and ~3x the decoding),
              no audio (ffmpeg, called with an argument list)
    labels    labels.csv listing the videos of train_256/ a decoder can read with enough frames,
              with each one's true frame count and the seek mode each decoder needs for it
              (random access only where verified against decoding from the first frame,
              rsp/probe.py); labels_dropped.csv says which were dropped and why

Failures of single files (an unavailable or undecodable video) never stop a step; they are
logged and listed in reports/<step>_failures.csv (labels: in labels_dropped.csv). A step that
cannot run at all (no archives, no ffmpeg, server unreachable for the list) raises and the
command exits non-zero.
Train with data.root=DIR (labels.csv is found automatically).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("python -m rsp.prepare", "finished files are kept; run it again to continue")

from core.download import DownloadError
from rsp import kinetics
from rsp.decoders import DECODERS, UNREADABLE, DecoderUnavailable, require
from rsp.filepool import WorkerLost, WorkerStartError
from rsp.kinetics import KineticsLayout, StepReport, run_parallel, write_failure_list
from rsp.probe import VideoProbe, probe_video
from rsp.video import OUR_LABELS, VIDEO_SUFFIXES, LabelEntry, list_videos, write_labels

log = logging.getLogger("rsp.prepare")

ProbeFile = Callable[[Path, Sequence[str]], VideoProbe]  # (video, decoders) -> what rsp.probe finds

STEPS = ("download", "extract", "arrange", "rescale", "labels")


def run_step(step: str, args: argparse.Namespace) -> StepReport:
    layout = KineticsLayout(Path(args.root))
    if step == "download":
        return kinetics.download(layout, args.base_url, args.jobs, args.timeout)
    if step == "extract":
        return kinetics.extract(layout, args.jobs)
    if step == "arrange":
        return kinetics.arrange(layout)
    if step == "rescale":
        return kinetics.rescale(layout, args.short_side, args.keyint, args.jobs, args.ffmpeg, args.preset, args.crf, args.timeout)
    if step == "labels":
        video_dir = layout.root / (args.videos_dir or layout.videos(args.short_side).name)
        return write_labels_file(layout.root, video_dir, args.min_frames, args.jobs, args.decoders, args.timeout)
    raise ValueError(f"unknown step {step!r}; valid: {', '.join(STEPS)}, all")


# --- the labels step (any class-folder video directory, not only Kinetics) ------------------------


def available_decoders(decoders: Sequence[str] = DECODERS) -> list[str]:
    """Those of `decoders` that run here; the others' seek modes stay unverified (logged)."""
    found = []
    for decoder in decoders:
        try:
            require(decoder)
            found.append(decoder)
        except DecoderUnavailable as err:
            log.warning("labels: %s; its seek modes stay unverified (files read with it decode from the start)", err)
    return found


def _probe(video: Path, decoders: Sequence[str], probe_file: ProbeFile = probe_video) -> dict:
    probe = probe_file(video, decoders)
    return {
        "frames": probe.num_frames,
        "seek": probe.seek,
        "reason": probe.reason,
        "notes": probe.notes,
        "decoders": list(decoders),
    }


def write_labels_file(
    root: Path,
    video_dir: Path,
    min_frames: int = 5,
    jobs: int = 4,
    decoders: Sequence[str] = DECODERS,
    stall_timeout: float | None = 600.0,
    probe_file: ProbeFile = probe_video,
) -> StepReport:
    """Probe every video under `video_dir` (class folders, rsp/probe.py) and write `root/labels.csv`
    with each video's true frame count and per-decoder seek mode, dropping videos no decoder can
    read or with fewer than `min_frames` frames; the dropped ones and why go to
    `root/labels_dropped.csv`. Probe results are cached (by size and mtime, and the decoders that
    ran) in `root/.labels_probe_cache.jsonl`, so an interrupted run resumes where it stopped.
    Only `decoders` are checked (those that run here); the others' seek modes stay empty, and a
    run that reads with one of them decodes every file from its first frame.

    Each file is probed in a spawned worker (rsp/filepool.py, `jobs` of them). A file whose probe
    kills its worker (a decoder's native crash) or takes over `stall_timeout` seconds is probed
    again one decoder at a time: the decoders that crash or stall on it are recorded `unreadable`
    with the signal, the others keep their modes. `probe_file`: the check run per file (a
    module-level function, so that it pickles; tests pass one that crashes on chosen files)."""
    if not video_dir.is_relative_to(root):
        raise ValueError(f"video_dir ({video_dir}) must lie inside the data root ({root}): labels paths are relative to it")
    videos = list_videos(video_dir)
    if not videos:
        raise FileNotFoundError(no_videos_message(root, video_dir))
    if others := not_videos(video_dir):
        log.warning(
            "labels: %d file(s) in the class folders are not listed, their suffix being none of %s (e.g. %s); "
            "rename them if they are videos",
            len(others),
            ", ".join(VIDEO_SUFFIXES),
            ", ".join(str(p.relative_to(video_dir)) for p in others[:3]),
        )
    classes = {name: i for i, name in enumerate(sorted({v.parent.name for v in videos}))}
    cache_path = root / ".labels_probe_cache.jsonl"
    cache = _read_probe_cache(cache_path)
    keys = {v: _probe_key(root, v) for v in videos}
    decoders = available_decoders(decoders)
    pending = [v for v in videos if not _cached(cache.get(keys[v]["path"]), keys[v], decoders)]
    report = StepReport("labels", skipped=len(videos) - len(pending))
    with cache_path.open("a") as cache_file:

        def record(video: Path, result: dict) -> None:
            for note in result["notes"]:
                log.info("labels: %s: %s", keys[video]["path"], note)
            cache[keys[video]["path"]] = {"key": keys[video], **result}
            cache_file.write(json.dumps(cache[keys[video]["path"]]) + "\n")
            cache_file.flush()
            report.done += 1

        lost = []
        for video, result, error in run_parallel(
            partial(_probe, decoders=decoders, probe_file=probe_file), pending, jobs, "labels", stall_timeout
        ):
            if isinstance(error, WorkerLost):
                log.warning("labels: %s: %s; probing it again one decoder at a time", keys[video]["path"], error)
                lost.append(video)
            else:
                record(video, result or {"frames": -1, "seek": {}, "reason": error, "notes": [], "decoders": []})
        for video, result in _probe_each_decoder(lost, decoders, jobs, stall_timeout, probe_file):
            record(video, result)
    kept = []
    for video in videos:
        rel = keys[video]["path"]
        frames, reason, seek = cache[rel]["frames"], cache[rel]["reason"], cache[rel]["seek"]
        if not reason and frames < min_frames:
            reason = f"{frames} frames, fewer than --min-frames {min_frames}"
        if reason:
            report.failed.append((rel, reason))
        else:
            modes = [seek.get(d, "") for d in DECODERS]
            stat = (keys[video]["size"], keys[video]["mtime_ns"])  # what was probed: a later change is caught
            kept.append(LabelEntry(rel, classes[video.parent.name], video.parent.name, frames, *modes, *stat))
    report.listed_in = root / "labels_dropped.csv"  # written even when empty: no stale list survives a rerun
    write_failure_list(report.listed_in, report.failed)
    if not kept:  # an empty labels file would only fail later, at submit, far from the cause
        reasons = sorted({reason for _, reason in report.failed})
        raise ValueError(
            f"none of the {len(videos)} videos under {video_dir} was kept ({'; '.join(reasons[:3])}); "
            f"{root / OUR_LABELS} was not written, the reasons per file are in {report.listed_in}"
        )
    write_labels(root / OUR_LABELS, kept)
    return report


def no_videos_message(root: Path, video_dir: Path) -> str:
    """Why `video_dir` offers the labels step nothing, and what to pass instead: the folder is
    missing (the folders under `root` are listed), or its videos lack class folders."""
    fix = "pass --videos-dir SUBDIR, the folder of class folders under --root (Kinetics: run the rescale step first)"
    if not video_dir.is_dir():
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
        return f"{video_dir} does not exist (folders under {root}: {', '.join(folders) or 'none'}); {fix}"
    loose = [p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
    if loose:
        return (
            f"{len(loose)} video(s) lie directly in {video_dir}, but the labels step reads one folder per class "
            f"({video_dir}/<class>/<video>); move them into class folders"
        )
    others = not_videos(video_dir)
    found = f"; found only {len(others)} other file(s), e.g. {others[0].relative_to(video_dir)}" if others else ""
    return f"no videos in class folders under {video_dir} ({', '.join(VIDEO_SUFFIXES)}){found}; {fix}"


def not_videos(video_dir: Path) -> list[Path]:
    """The files in `video_dir`'s class folders that the labels step passes over (no video suffix;
    hidden and partial files aside): a folder of .m4v clips must not shrink to nothing without a word."""
    videos = set(list_videos(video_dir))
    return sorted(p for p in video_dir.glob("*/[!.]*") if p.is_file() and p not in videos)


def _probe_one_decoder(video_and_decoder: tuple[Path, str], probe_file: ProbeFile) -> dict:
    video, decoder = video_and_decoder
    return _probe(video, [decoder], probe_file)


def _probe_each_decoder(
    videos: list[Path], decoders: Sequence[str], jobs: int, stall_timeout: float | None, probe_file: ProbeFile
) -> Iterator[tuple[Path, dict]]:
    """(video, probe record) for videos whose probe with all `decoders` lost its worker: each
    decoder alone, in its own worker; one that crashes or stalls is `unreadable` for that file,
    with the reason in the record's notes (and in its `reason` when no decoder reads the file)."""
    pairs = [(video, decoder) for video in videos for decoder in decoders]
    single: dict[Path, dict[str, tuple[dict | None, str]]] = {video: {} for video in videos}
    for (video, decoder), result, error in run_parallel(
        partial(_probe_one_decoder, probe_file=probe_file), pairs, jobs, "labels, per decoder", stall_timeout
    ):
        single[video][decoder] = (result, error)
        if len(single[video]) == len(decoders):
            yield video, _merge_single_decoder_probes(single.pop(video), decoders)


def _merge_single_decoder_probes(single: dict[str, tuple[dict | None, str]], decoders: Sequence[str]) -> dict:
    seek, counts, reasons, notes = {}, [], [], []
    for decoder in decoders:
        result, error = single[decoder]
        if result is None:
            seek[decoder] = UNREADABLE
            reasons.append(f"{decoder}: {error}")
            notes.append(f"{decoder}: unreadable: {error}")
            continue
        seek.update(result["seek"])
        notes.extend(result["notes"])
        if result["reason"]:
            reasons.append(result["reason"])
        else:
            counts.append(result["frames"])
    frames = min(counts) if counts else -1
    return {
        "frames": frames,
        "seek": seek,
        "reason": "" if counts else "; ".join(reasons),
        "notes": notes,
        "decoders": list(decoders),
    }


def _probe_key(root: Path, video: Path) -> dict:
    stat = video.stat()
    return {"path": video.relative_to(root).as_posix(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cached(record: dict | None, key: dict, decoders: list[str]) -> bool:
    """A cached probe of this very file that checked every decoder running now."""
    return record is not None and record["key"] == key and set(decoders) <= set(record.get("decoders", ()))


def _read_probe_cache(path: Path) -> dict[str, dict]:
    cache = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                cache[record["key"]["path"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by an interruption
    return cache


# --- command line ---------------------------------------------------------------------------------


# Each step's options (`python -m rsp.prepare <step> --help` lists only its own; `all` takes every one).
STEP_OPTIONS = {
    "download": ("jobs", "base_url", "timeout"),
    "extract": ("jobs",),
    "arrange": (),
    "rescale": ("jobs", "timeout", "short_side", "keyint", "preset", "crf", "ffmpeg"),
    "labels": ("jobs", "timeout", "short_side", "videos_dir", "min_frames", "decoders"),
}
STEP_HELP = {
    "download": "train list, annotations, replacement archive, tar.gz parts",
    "extract": "parts -> raw/, replacement archive -> raw_replacement/",
    "arrange": "raw/ -> arranged/<class>/ from annotations/train.csv",
    "rescale": "arranged/ -> train_<short side>/ (ffmpeg)",
    "labels": "labels.csv of a class-folder video directory (any dataset, not only Kinetics)",
    "all": "every step, in order",
}


def _add_option(parser: argparse.ArgumentParser, name: str) -> None:
    options = {
        "jobs": (("--jobs",), dict(type=int, default=4, help="worker processes (0: in this process, for a debugger)")),
        "base_url": (("--base-url",), dict(default=kinetics.DEFAULT_BASE_URL, help="Kinetics-400 server (download)")),
        "timeout": (
            ("--timeout",),
            dict(type=float, default=600.0, help="seconds per HTTP read, per ffmpeg run, per labels probe of one file"),
        ),
        "short_side": (("--short-side",), dict(type=int, default=256, help="pixels (rescale; labels: default folder)")),
        "keyint": (
            ("--keyint",),
            dict(
                type=int,
                default=kinetics.DEFAULT_KEYINT,
                help="frames between keyframes (rescale): 1 all-intra, 30 a third of the bytes",
            ),
        ),
        "preset": (("--preset",), dict(default="veryfast", help="libx264 preset (rescale)")),
        "crf": (("--crf",), dict(type=int, default=23, help="libx264 constant rate factor (rescale)")),
        "ffmpeg": (("--ffmpeg",), dict(default="ffmpeg", help="ffmpeg executable (rescale)")),
        "videos_dir": (
            ("--videos-dir",),
            dict(default="", help="labels: class-folder directory relative to --root (default train_<short side>)"),
        ),
        "min_frames": (
            ("--min-frames",),
            dict(type=int, default=5, help="labels: drop shorter videos (5 = data.min_gap 4 + 1)"),
        ),
        "decoders": (
            ("--decoders",),
            dict(
                nargs="+",
                choices=DECODERS,
                default=list(DECODERS),
                help="labels: decoders whose random access is verified per file (default: all that run here)",
            ),
        ),
    }
    flags, kwargs = options[name]
    parser.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rsp.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP", help=", ".join((*STEPS, "all")))
    for step in (*STEPS, "all"):
        sub = steps.add_parser(step, help=STEP_HELP[step], description=f"python -m rsp.prepare {step}: {STEP_HELP[step]}")
        sub.add_argument("--root", required=True, help="preparation root; becomes data.root for training")
        names = STEP_OPTIONS.get(step) or dict.fromkeys(n for o in STEP_OPTIONS.values() for n in o)
        for name in names:
            _add_option(sub, name)
    return parser


def argument_problems(args: argparse.Namespace) -> list[str]:
    """Arguments no step can run with: a root that is missing (only download creates one) or not a
    folder, counts and sizes out of range. Each names the option and the fix."""
    root = Path(args.root)
    out = []
    if root.exists() and not root.is_dir():
        out.append(f"--root {root} is a file, not a directory; pass the preparation folder")
    elif not root.exists() and args.step not in ("download", "all"):
        out.append(f"--root {root} does not exist; pass the folder earlier steps prepared (python -m rsp.prepare all starts one)")
    if getattr(args, "jobs", 0) < 0:
        out.append(f"--jobs ({args.jobs}) must be >= 0 (0: in this process)")
    for name in ("timeout", "short_side", "keyint", "min_frames"):
        if getattr(args, name, 1) <= 0:
            out.append(f"--{name.replace('_', '-')} ({getattr(args, name)}) must be > 0")
    if not 0 <= getattr(args, "crf", 23) <= 51:
        out.append(f"--crf ({args.crf}) must lie in [0, 51] (libx264)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problems := argument_problems(args):
        parser.error("; ".join(problems))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for step in STEPS if args.step == "all" else (args.step,):
        try:
            report = run_step(step, args)
        except (OSError, ValueError, DownloadError, WorkerStartError) as err:  # the step cannot run at all
            log.error("%s: %s", step, err)
            return 2
        log.info(report.summary())
        if args.step != "all" and report.done == report.skipped == len(report.failed) == 0:
            log.error(
                "%s: found nothing to do under %s; run the earlier steps first (python -m rsp.prepare --help)", step, args.root
            )
            return 2
        for path, reason in report.failed[:5]:
            log.warning("%s failed: %s: %s", step, path, reason)
        written = report.write_failures(Path(args.root))
        if written:
            log.warning("%s: %d failure(s) listed in %s", step, len(report.failed), written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
