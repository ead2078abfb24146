"""Video files of a frame-pair dataset: reading the frames training asks for, exactly, and the
labels file that lists the videos (docs/data.md#labels-files, docs/data.md#decoding-and-seek-modes).

Two labels-file formats are read:
- ours, `labels.csv`: a CSV with the header `path,class_idx,class_name,num_frames,seek_pyav,
  seek_torchcodec,seek_decord,size,mtime_ns`, one video per row, `path` relative to the data root (POSIX
  separators), written by `python -m rsp.prepare labels` and `python -m rsp.synthetic`. `num_frames` is
  the true frame count and `seek_<decoder>` the seek mode that decoder needs for the file (`random`,
  `sequential`, `unreadable`; empty: not verified), both found by `rsp.probe`; `size` and `mtime_ns`
  are the file's bytes and modification time when it was probed (-1: not recorded), so a file
  replaced afterwards is caught (`changed_since_labelling`) instead of read with another file's
  frame count and seek mode. Files written before those columns existed (the first four or seven
  columns only) are read too;
- the reference's pickle: a pickled list of `(class_idx, relative_path)` tuples. The reference
  writes it as `label_full_1.0.pickle` but reads `label_1.0.pickle` (docs/data.md#labels-files); both names are
  accepted. It is read with an unpickler that refuses every class or function, so a pickle can only
  yield plain lists, tuples, ints and strings.

A file whose seek mode was not verified for the decoder in use is read sequentially (exact,
slower); random access is used only where `rsp.probe` showed it returns the same frames.
"""

from __future__ import annotations

import csv
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from core.atomicio import PARTIAL_PREFIX, atomic_path
from rsp.decoders import DECODERS, FILE_SEEK_MODES, RANDOM, SEQUENTIAL, UNREADABLE, VideoReadError, open_reader, sequential

__all__ = ["DataError", "LabelEntry", "VideoFile", "VideoReadError", "changed_since_labelling", "read_labels", "write_labels"]

OUR_LABELS = "labels.csv"
REFERENCE_LABELS = ("label_1.0.pickle", "label_full_1.0.pickle")  # read name, written name (docs/data.md#labels-files)
LABELS_HEADER = ("path", "class_idx", "class_name", "num_frames", *(f"seek_{d}" for d in DECODERS), "size", "mtime_ns")
OLD_LABELS_HEADER = LABELS_HEADER[:4]  # before seek modes were recorded
SEEK_LABELS_HEADER = LABELS_HEADER[: 4 + len(DECODERS)]  # before sizes and modification times were recorded
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")


class DataError(ValueError):
    """A data root, labels file or video set that cannot be trained on; the message names paths."""


class LabelEntry(NamedTuple):
    path: str  # relative to the data root
    class_idx: int
    class_name: str = ""  # empty when read from the reference pickle
    num_frames: int = -1  # frames a sequential decode yields (rsp.probe); -1 when unknown
    seek_pyav: str = ""  # random | sequential | unreadable (rsp.probe); "" when not verified
    seek_torchcodec: str = ""
    seek_decord: str = ""
    size: int = -1  # bytes of the file when it was labelled; -1 when not recorded
    mtime_ns: int = -1  # its modification time then (st_mtime_ns); -1 when not recorded

    def seek(self, decoder: str) -> str:
        """The seek mode `decoder` needs for this file; "" when not verified."""
        return getattr(self, f"seek_{decoder}")


def changed_since_labelling(path: Path, entry: LabelEntry) -> str:
    """Why the file at `path` is not the one `entry` describes ("" when it is, or when the labels
    file recorded no size): its size or modification time differ from the labelled ones."""
    if entry.size < 0:
        return ""
    try:
        stat = path.stat()
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.st_size == entry.size and (entry.mtime_ns < 0 or stat.st_mtime_ns == entry.mtime_ns):
        return ""
    return (
        f"changed after `python -m rsp.prepare labels` recorded it ({stat.st_size} bytes, modified at {stat.st_mtime_ns} ns; "
        f"labelled: {entry.size} bytes at {entry.mtime_ns} ns): its frame count and seek mode are another file's. "
        "Rerun that step (it probes only changed files); a copy keeps the times with `cp -p` or `rsync -t`"
    )


# --- reading frames -------------------------------------------------------------------------------


class VideoFile:
    """One video as training reads it: `decoder` on one thread (rsp/decoders.py), random access
    only when `seek` is `random` (verified for this file), else decoding from the first frame.
    `num_frames` is the labels file's true count when known, else the decoder's. Raises
    `VideoReadError` naming the path for anything that goes wrong with the file."""

    def __init__(self, path: str | Path, decoder: str, seek: str = SEQUENTIAL, num_frames: int = -1, device: str = "cpu"):
        if seek not in FILE_SEEK_MODES:
            raise ValueError(f"seek ({seek!r}) must be one of {', '.join(FILE_SEEK_MODES)}")
        self.path, self.decoder, self.seek = Path(path), decoder, seek
        if seek == UNREADABLE:
            raise VideoReadError(self.path, f"{decoder} cannot decode it (found by rsp.prepare labels)")
        self._reader = open_reader(decoder, self.path, device)
        self.num_frames = num_frames if num_frames >= 0 else self._reader.num_frames
        if seek == RANDOM and self._reader.num_frames < num_frames:
            raise VideoReadError(
                self.path,
                f"{decoder} finds {self._reader.num_frames} frame(s) where the labels file records {num_frames}: the file "
                "changed after `python -m rsp.prepare labels` checked it; rerun that step",
            )

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames `indices` (any order, repeats allowed) as uint8 (N, H, W, 3) RGB (a CUDA tensor when
        decoded on the GPU by random access)."""
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)  # sorted
        if len(unique) and (unique[0] < 0 or unique[-1] >= self.num_frames):
            raise VideoReadError(self.path, f"frame indices {unique.tolist()} outside [0, {self.num_frames - 1}]")
        wanted = unique.tolist()
        frames = self._reader.random(wanted) if self.seek == RANDOM else sequential(self._reader, wanted)
        return frames[inverse]


# --- labels files ---------------------------------------------------------------------------------


def resolve_labels_file(root: Path, labels: str) -> Path:
    """The labels file of `root`: `labels` relative to it, or for "auto" ours, else the reference's."""
    if labels != "auto":
        path = root / labels
        if not path.is_file():
            raise DataError(
                f"data.labels ({labels!r}) does not exist under data.root {root}; expected file {path}; "
                "fix data.labels, or drop it (auto: labels.csv, else the reference's pickle)"
            )
        return path
    names = (OUR_LABELS, *REFERENCE_LABELS)
    for name in names:
        if (root / name).is_file():
            return root / name
    above = next((p for p in root.parents[:2] for name in names if (p / name).is_file()), None)
    if above is not None:  # data.root names the videos folder or a class folder of a prepared root
        raise DataError(
            f"no labels file in data root {root}, but {above} has one: set data.root={above} (the folder of the labels file)"
        )
    raise DataError(
        f"no labels file in data root {root}: looked for {', '.join(names)}. Write one with "
        f"`python -m rsp.prepare labels --root {root} --videos-dir SUBDIR` (SUBDIR: the folder of class folders), "
        "name another with data.labels, or set data.synthetic_videos to generate a synthetic dataset there"
    )


def read_labels(path: Path) -> list[LabelEntry]:
    """Entries of a labels file in either format (the suffix decides: .pickle/.pkl is the reference)."""
    try:
        entries = _read_pickle(path) if path.suffix in (".pickle", ".pkl") else _read_csv(path)
    except DataError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(
            f"labels file {path} cannot be read: {err}; regenerate it with `python -m rsp.prepare labels --root {path.parent}`"
        ) from err
    if not entries:
        raise DataError(f"labels file {path} lists no videos; regenerate it with `python -m rsp.prepare labels`")
    return entries


def write_labels(path: Path, entries: Sequence[LabelEntry]) -> None:
    """Write our CSV format atomically (a reader never sees half a file)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABELS_HEADER)
    writer.writerows(entries)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _read_csv(path: Path) -> list[LabelEntry]:
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (spreadsheet exports) is not data
        rows = list(csv.reader(f))
    header = tuple(rows[0]) if rows else ()
    if header not in (LABELS_HEADER, SEEK_LABELS_HEADER, OLD_LABELS_HEADER):
        got = ",".join(header) if rows else "an empty file"
        raise DataError(
            f"labels file {path} must start with the header {','.join(LABELS_HEADER)} (or, written before sizes or seek "
            f"modes were recorded, {','.join(SEEK_LABELS_HEADER)} or {','.join(OLD_LABELS_HEADER)}), found {got}; "
            "rewrite it with `python -m rsp.prepare labels`"
        )
    entries = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:  # a blank line (a trailing one, say) lists nothing
            continue
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields")
            seeks, stat = row[4 : len(SEEK_LABELS_HEADER)], [int(v) for v in row[len(SEEK_LABELS_HEADER) :]]
            entry = LabelEntry(row[0], int(row[1]), row[2], int(row[3]), *seeks, *stat)
        except ValueError as err:
            raise DataError(
                f"labels file {path}, line {line}: expected {','.join(header)}, got {row} ({err}); fix the line, or "
                "rewrite the file with `python -m rsp.prepare labels`"
            ) from err
        bad = [f"{d}={entry.seek(d)!r}" for d in DECODERS if entry.seek(d) not in ("", *FILE_SEEK_MODES)]
        if bad:
            raise DataError(
                f"labels file {path}, line {line}: seek modes {', '.join(bad)} must be one of {', '.join(FILE_SEEK_MODES)} "
                "or empty; rewrite the file with `python -m rsp.prepare labels`"
            )
        entries.append(entry)
    return entries


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # a list of (int, str) tuples needs no class
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a labels pickle holds only lists of tuples")


def _read_pickle(path: Path) -> list[LabelEntry]:
    with path.open("rb") as f:
        data = _PlainDataUnpickler(f).load()
    if not isinstance(data, (list, tuple)):
        raise DataError(f"labels file {path} must hold a list of (class_idx, relative_path), got {type(data).__name__}")
    entries = []
    for i, item in enumerate(data):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], str)):
            raise DataError(f"labels file {path}, entry {i}: expected (class_idx, relative_path), got {item!r}")
        entries.append(LabelEntry(item[1], int(item[0])))
    return entries


# --- class folders --------------------------------------------------------------------------------


def list_videos(directory: Path) -> list[Path]:
    """Video files one level of class folders below `directory`, sorted; partial files excluded."""
    return sorted(
        p
        for p in directory.glob("*/*")
        if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(PARTIAL_PREFIX) and p.is_file()
    )
