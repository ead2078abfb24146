"""Submit-time checks of the training data against the run's config (docs/data.md#labels-files):
every video the labels file lists exists and is listed once, the batch fits the dataset (a
generated one included), data.max_gap / data.min_gap suit the labelled frame counts (the true counts
`rsp.prepare labels` found by decoding), and data.decoder can run here and read the videos: the
labels file records per file and decoder the seek mode `rsp.probe` verified
(docs/data.md#decoding-and-seek-modes), and a decoder that cannot decode more than
data.max_broken_fraction of the videos is refused before anything is queued.

What is found once per dataset (`survey`) is cached per version of its labels file, so a sweep of
1,000 runs over one dataset reads it once and each run's rules are arithmetic. Existence is checked
with one directory listing per folder, never a stat per file: a 240k-video Kinetics listing is a
few hundred `scandir` calls, fast on NFS (bench/validate_labels.py measures it).

The short-video fallback (docs/data.md#frame-pair-sampling) is the reference's rule for videos with
fewer than max_gap + 1 frames, and real datasets have a few such videos, so it is accepted up to
`data.max_short_fraction` of the videos with a known frame count (the number is logged); above it
the run is refused: a max_gap far above the videos' lengths would otherwise send most pairs
through the fallback and change the experiment without a word.
"""

from __future__ import annotations

import functools
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomicio import writable
from launch.config import RunConfig
from rsp.decoders import DECODERS, UNREADABLE, DecoderUnavailable, require
from rsp.synthetic import SCENE_SIZES, generated_scene
from rsp.video import OUR_LABELS, DataError, LabelEntry, changed_since_labelling, read_labels, resolve_labels_file

SHOWN = 3  # examples named per problem


@dataclass(frozen=True)
class DatasetSurvey:
    """What the labels file of a data root lists and what of it is on disk."""

    labels: Path
    videos: int  # entries of the labels file
    missing: tuple[str, ...]  # listed paths with no file
    folders: tuple[str, ...]  # listed paths that are directories
    duplicates: tuple[str, ...]  # paths listed more than once (each once)
    frame_counts: np.ndarray  # sorted frame counts of the entries that record one (>= 0)
    invalid_counts: tuple[tuple[str, int], ...]  # entries whose count is neither >= 0 nor -1 (unknown)
    unreadable: dict[str, tuple[str, ...]]  # decoder -> paths rsp.probe found it cannot decode
    unverified: dict[str, int]  # decoder -> entries without a seek mode for it (read from the first frame)
    changed: tuple[str, ...] = ()  # listed files whose size or mtime differ from the labelled ones


def survey(root: Path, labels: str) -> DatasetSurvey:
    """The labels file of `root` and the disk, compared; raises DataError when it cannot be read."""
    path = resolve_labels_file(root, labels)
    stat = path.stat()
    return _survey(str(root), str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _survey(root: str, labels: str, mtime_ns: int, size: int) -> DatasetSurvey:  # mtime and size: the cache key
    entries = read_labels(Path(labels))
    paths = [e.path for e in entries]
    missing, folders = unlisted(root, paths)
    counts = np.fromiter((e.num_frames for e in entries), dtype=np.int64, count=len(entries))
    invalid = tuple((e.path, e.num_frames) for e in entries if e.num_frames < -1)
    return DatasetSurvey(
        labels=Path(labels),
        videos=len(entries),
        missing=tuple(missing),
        folders=tuple(folders),
        duplicates=tuple(p for p, n in Counter(paths).items() if n > 1),
        frame_counts=np.sort(counts[counts >= 0]),
        invalid_counts=invalid,
        unreadable={d: tuple(e.path for e in entries if e.seek(d) == UNREADABLE) for d in DECODERS},
        unverified={d: sum(1 for e in entries if not e.seek(d)) for d in DECODERS},
        changed=changed_files(Path(root), entries, skip=set(missing) | set(folders)),
    )


def changed_files(root: Path, entries: Sequence[LabelEntry], skip: set[str]) -> tuple[str, ...]:
    """Listed files replaced after labelling: size or modification time differ from the labels
    file's (one stat per entry that records them)."""
    return tuple(e.path for e in entries if e.path not in skip and changed_since_labelling(root / e.path, e))


def unlisted(root: str | Path, relative: Sequence[str]) -> tuple[list[str], list[str]]:
    """(paths of `relative` that do not exist under `root`, those that are directories), from one
    directory listing per folder (the entry's d_type: no stat per file)."""
    by_folder: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rel in relative:
        if rel.startswith(("/", ".")) or "/." in rel or "//" in rel or "\\" in rel:  # absolute or not normalized
            folder, _, name = os.path.normpath(os.path.join(root, rel)).rpartition(os.sep)
        else:  # the usual case, string operations only: class/video.mp4
            folder, _, name = rel.rpartition("/")
        by_folder[folder].append((rel, name))
    missing, folders = [], []
    for folder, items in by_folder.items():
        try:
            with os.scandir(os.path.join(root, folder)) as listing:
                # d_type answers is_file/is_dir without a stat; only symbolic links are followed (a broken one is missing)
                kind = {e.name: "file" if e.is_file() else "dir" if e.is_dir() else "missing" for e in listing}
        except OSError:  # the folder itself is missing, not a folder, or unreadable
            missing += [rel for rel, _ in items]
            continue
        for rel, name in items:
            found = kind.get(name, "missing")
            if found == "missing":
                missing.append(rel)
            elif found == "dir":
                folders.append(rel)
    return missing, folders


def examples(paths: Sequence[str]) -> str:
    return ", ".join(paths[:SHOWN]) + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def listing_problems(s: DatasetSurvey, root: Path) -> list[str]:
    """What in the labels file would fail or skew training, whatever the run's settings."""
    regenerate = f"regenerate the labels file (python -m rsp.prepare labels --root {root})"
    out = []
    if s.missing:
        out.append(
            f"{len(s.missing)} of the {s.videos} videos {s.labels} lists are missing under data.root {root} "
            f"({examples(s.missing)}); training would replace them at every read and stop when they exceed "
            f"data.max_broken_fraction: restore the files or {regenerate}"
        )
    if s.changed:
        out.append(
            f"{len(s.changed)} of the {s.videos} videos {s.labels} lists changed after it was written (size or "
            f"modification time differ from the recorded ones: {examples(s.changed)}), so their recorded frame counts and "
            f"seek modes may be another file's: "
            + (
                f"{root} is a generated set: delete it and submit again to regenerate it"
                if generated_by_us(root, Path(s.labels))
                else f"rerun python -m rsp.prepare labels --root {root} (it probes only the changed files again), or restore "
                "the labelled files (`cp -p` and `rsync -t` keep modification times)"
            )
        )
    if s.folders:
        out.append(
            f"{s.labels} lists {len(s.folders)} path(s) that are directories, not a file ({examples(s.folders)}); {regenerate}"
        )
    if s.duplicates:
        out.append(
            f"{s.labels} lists {len(s.duplicates)} video(s) twice or more ({examples(s.duplicates)}), which would be "
            f"sampled more often than the others; list each video once ({regenerate})"
        )
    if s.invalid_counts:
        shown = ", ".join(f"{p} ({n})" for p, n in s.invalid_counts[:SHOWN])
        out.append(
            f"{s.labels} lists num_frames below -1 for {len(s.invalid_counts)} video(s): {shown}; "
            f"num_frames is a frame count, or -1 when unknown: {regenerate}"
        )
    unusable = int(np.searchsorted(s.frame_counts, 2))
    if unusable:
        out.append(
            f"{unusable} video(s) of {s.labels} have fewer than 2 frames (num_frames 0 or 1), so no frame pair can be "
            f"drawn from them; drop them (python -m rsp.prepare labels --root {root} --min-frames 5)"
        )
    return out


def gap_problems(s: DatasetSurvey, cfg: RunConfig) -> list[str]:
    """The short-video fallback share under data.max_gap / data.min_gap (module docstring)."""
    d = cfg.data
    counts, need = s.frame_counts, d.max_gap + 1
    if not len(counts) or d.max_gap < d.min_gap:  # unknown counts (a reference pickle), or a rule reported elsewhere
        return []
    short = int(np.searchsorted(counts, need))
    if short / len(counts) <= d.max_short_fraction:
        return []
    # The largest max_gap that keeps the fallback's share at or below the threshold: the length at that quantile, minus 1.
    length = int(counts[int(d.max_short_fraction * (len(counts) - 1))])
    within = f"at most {d.max_short_fraction:.0%} of the videos are shorter than {length} frames"
    fit = (
        f"lower data.max_gap to at most {length - 1} ({within})"
        if length - 1 >= d.min_gap
        else f"lower data.min_gap and data.max_gap ({within})"
    )
    return [
        f"data.max_gap ({d.max_gap}) with data.min_gap ({d.min_gap}) needs videos of at least {need} frames, but {short} of "
        f"the {len(counts)} videos {s.labels} counts ({100 * short / len(counts):.0f}%, above data.max_short_fraction "
        f"{d.max_short_fraction}) are shorter (frame counts {counts[0]}..{counts[len(counts) // 2]}..{counts[-1]}, "
        "min..median..max): their pairs would come from the short-video fallback (two random frames, gap possibly below "
        f"data.min_gap) instead of t, t+k with k in [min_gap, max_gap]. {fit[0].upper() + fit[1:]}, drop short videos "
        f"(python -m rsp.prepare labels --min-frames {need}), or raise data.max_short_fraction to accept it"
    ]


def gap_note(s: DatasetSurvey, cfg: RunConfig) -> str | None:
    """How many videos take the short-video fallback, when some do (below the refusal threshold)."""
    counts, need = s.frame_counts, cfg.data.max_gap + 1
    short = int(np.searchsorted(counts, need)) if len(counts) else 0
    if not short:
        return None
    return (
        f"{short} of the {len(counts)} videos with a known length have fewer than data.max_gap + 1 = {need} frames: "
        "their pairs come from the short-video fallback (docs/data.md#frame-pair-sampling)"
    )


def batch_problem(videos: int, cfg: RunConfig, what: str, fix: str) -> list[str]:
    c = cfg.cluster
    per_step = cfg.data.batch_size * c.world_size * cfg.optim.accum_iter
    if videos >= per_step:
        return []
    fits = videos // (c.world_size * cfg.optim.accum_iter)
    lower = f"lower data.batch_size to at most {fits}, " if fits >= 1 else ""
    return [
        f"data.batch_size ({cfg.data.batch_size}) x {c.world_size} process(es) x optim.accum_iter ({cfg.optim.accum_iter}) "
        f"= {per_step} videos per optimizer step, but {what}; {lower}{fix}"
    ]


@functools.cache
def decoder_problem(decoder: str) -> str | None:
    """Why `decoder` cannot decode on this machine (FFmpeg's shared libraries for torchcodec missing,
    say; the message names what to install), or None. An unknown name is DataConfig's to report."""
    if decoder not in DECODERS:
        return None
    try:
        require(decoder)
    except DecoderUnavailable as exc:
        return f"data.decoder ({decoder}) cannot decode on this machine: {exc}"
    return None


def decoder_problems(s: DatasetSurvey, cfg: RunConfig, root: Path) -> list[str]:
    """data.decoder against the seek modes the labels file records: a decoder that cannot decode more
    than data.max_broken_fraction of the videos would stop the run on its first reads of them."""
    d = cfg.data
    bad = s.unreadable.get(d.decoder, ())
    if not bad or len(bad) <= d.max_broken_fraction * s.videos:
        return []
    others = sorted((len(s.unreadable[o]), o) for o in DECODERS if o != d.decoder and s.unverified[o] < s.videos)
    better = [f"data.decoder={o} ({'reads all of them' if n == 0 else f'cannot decode {n}'})" for n, o in others if n < len(bad)]
    drop = f"drop them (python -m rsp.prepare labels --root {root} --decoders {d.decoder} drops what it cannot decode)"
    fix = f"use {' or '.join(better)}, or {drop}" if better else drop[0].upper() + drop[1:]
    return [
        f"data.decoder ({d.decoder}) cannot decode {len(bad)} of the {s.videos} videos {s.labels} lists ({examples(bad)}; "
        f"found by `python -m rsp.prepare labels`), more than data.max_broken_fraction ({d.max_broken_fraction}): every "
        f"read of one counts as broken and the run would stop. {fix[0].upper() + fix[1:]}"
    ]


def data_problems(cfg: RunConfig) -> list[str]:
    d = cfg.data
    if (reason := decoder_problem(d.decoder)) is not None:
        return [reason]
    if not d.root:
        return [
            "data.root is not set; pass data.root=/path/to/dataset (see `python -m rsp.prepare --help`; the Kinetics "
            "experiments read it from the environment variable RSP_K400_ROOT)"
        ]
    root = Path(d.root)
    if d.synthetic_videos > 0:
        return generated_problems(cfg, root)
    if not root.exists():
        return [f"data.root ({root}) does not exist; prepare the dataset there or point data.root at it"]
    if not root.is_dir():
        return [f"data.root ({root}) is a file, not a directory; point data.root at the folder that holds the labels file"]
    try:
        s = survey(root, d.labels)
    except DataError as exc:
        return [str(exc)]
    out = listing_problems(s, root) + gap_problems(s, cfg) + decoder_problems(s, cfg, root)
    return out + batch_problem(s.videos, cfg, f"{s.labels} lists {s.videos}", "or use a larger dataset")


def generated_problems(cfg: RunConfig, root: Path) -> list[str]:
    """A set generated at submit time: the root can hold it, it fits the batch, and a dataset already
    there is the one asked for (it would be used as it is)."""
    d = cfg.data
    if d.synthetic_scene not in SCENE_SIZES:  # the field rule names it (rsp.config.DataConfig); nothing to judge here
        return []
    if (reason := writable(root)) is not None:
        return [
            f"data.root ({root}) cannot hold the generated videos (data.synthetic_videos={d.synthetic_videos}): {reason}; "
            "point data.root at a writable folder"
        ]
    if d.synthetic_scene == "natural" and (refused := natural_source_problems(d.natural_sources)):
        return refused
    made = generated_scene(root)
    if made is not None and made != d.synthetic_scene:
        return [
            f"data.root ({root}) holds generated {made} videos, not the {d.synthetic_scene} videos "
            "data.synthetic_scene asks for; point data.root at another directory, or delete it to regenerate"
        ]
    out = batch_problem(
        d.synthetic_videos,
        cfg,
        f"data.synthetic_videos ({d.synthetic_videos}) generates only that many",
        f"or set data.synthetic_videos >= {d.batch_size * cfg.cluster.world_size * cfg.optim.accum_iter}",
    )
    if not (root / OUR_LABELS).is_file():
        return out + generated_gap_problems(cfg)
    try:
        s = survey(root, "auto")
    except DataError as exc:
        return out + [str(exc)]
    if s.videos != d.synthetic_videos:
        # a dataset generate_dataset wrote is reused by giving its size; real data by generating nothing
        use = f"data.synthetic_videos={s.videos}" if made is not None else "data.synthetic_videos=0 (it is not a generated set)"
        out.append(
            f"data.synthetic_videos ({d.synthetic_videos}) asks for a generated set, but data.root ({root}) already holds "
            f"one of {s.videos} videos, which would be used as it is; set {use} to train on it, or "
            "point data.root at an empty folder"
        )
    return out + gap_problems(s, cfg)


def generated_gap_problems(cfg: RunConfig) -> list[str]:
    """data.max_gap against the length of the videos a generated set will have (all alike): a gap
    no video can hold sends every pair through the short-video fallback, silently."""
    d = cfg.data
    frames = SCENE_SIZES[d.synthetic_scene][2]
    if d.max_gap + 1 <= frames or d.max_short_fraction >= 1 or d.max_gap < d.min_gap:
        return []
    fit = f"lower data.max_gap to at most {frames - 1}" if frames - 1 >= d.min_gap else "lower data.min_gap and data.max_gap"
    return [
        f"data.max_gap ({d.max_gap}) needs videos of at least {d.max_gap + 1} frames, but the generated "
        f"{d.synthetic_scene} videos (data.synthetic_videos={d.synthetic_videos}) have {frames} frames each: every pair "
        "would come from the short-video fallback (two random frames) instead of t, t+k with k in "
        f"[data.min_gap, data.max_gap]; {fit}"
    ]


def generated_by_us(root: Path, labels: Path) -> bool:
    """A set generate_dataset wrote and labelled (it records sizes, never times), not one relabelled
    since by `python -m rsp.prepare labels`: regenerating it is the fix, not relabelling."""
    try:
        return generated_scene(root) is not None and all(e.mtime_ns < 0 for e in read_labels(labels))
    except DataError:
        return False


def natural_source_problems(sources: Sequence[str]) -> list[str]:
    """The held-out rule (docs/learning.md#sources-and-licences): no training source of the natural
    clips, installed or in data.natural_sources, is an evaluation-only photograph; every listed
    source exists and decodes (rsp.natural.listed_source_problems)."""
    from rsp.natural import listed_source_problems, refused_sources  # PIL and PyAV: only a natural scene pays for them
    from rsp.photos import training_photos, training_videos

    installed = refused_sources(training_photos() + training_videos())
    return [f"data.natural_sources: {p}" for p in listed_source_problems(sources) + installed]


def data_notes(cfg: RunConfig) -> list[str]:
    """What the user should know about the data but that is no reason to refuse (logged at submit)."""
    d = cfg.data
    if d.synthetic_videos or not d.root or not Path(d.root).is_dir():
        return []
    try:
        s = survey(Path(d.root), d.labels)
    except DataError:
        return []
    notes = [gap_note(s, cfg), *seek_notes(s, cfg)]
    return [n for n in notes if n]


def seek_notes(s: DatasetSurvey, cfg: RunConfig) -> list[str]:
    """Videos data.decoder reads from their first frame (no verified seek mode) or cannot read (below
    the refusal threshold): exact either way, but slower or replaced."""
    d, out = cfg.data, []
    if unverified := s.unverified.get(d.decoder, 0):
        out.append(
            f"{unverified} of the {s.videos} videos {s.labels} lists have no verified seek mode for data.decoder={d.decoder}: "
            "they are decoded from their first frame (exact, several times slower); `python -m rsp.prepare labels` "
            "records the modes (docs/data.md#decoding-and-seek-modes)"
        )
    if bad := s.unreadable.get(d.decoder, ()):
        out.append(
            f"{len(bad)} of the {s.videos} videos {s.labels} lists cannot be decoded by data.decoder={d.decoder} "
            f"({examples(bad)}): each read of one counts as broken and is replaced"
        )
    return out
