"""Video files of a frame-pair dataset: opening and reading them with decord, and the labels file
that lists them (docs/data.md#labels-files).

Two labels-file formats are read:
- ours, `labels.csv`: a CSV with the header `path,class_idx,class_name,num_frames`, one video per
  row, `path` relative to the data root (POSIX separators), written by `python -m rsp.prepare
  labels` and `python -m rsp.synthetic`;
- the reference's pickle: a pickled list of `(class_idx, relative_path)` tuples. The reference
  writes it as `label_full_1.0.pickle` but reads `label_1.0.pickle` (docs/data.md#labels-files); both names are
  accepted. It is read with an unpickler that refuses every class or function, so a pickle can only
  yield plain lists, tuples, ints and strings.

Reading frames has two seek modes. `fast` asks decord for all frames of an item in one
`get_batch` call (sorted, so the decoder only moves forward). decord's random access is exact on
well-formed files, but not on files with broken timestamps or damaged keyframes (opencv-doc's
`Megamind.avi` and `Megamind_bugy.avi`, whose first timestamps are garbage, and `box.mp4`, whose
second IDR frame is malformed): there it returns a neighbouring or a wrongly decoded frame.
Preparation re-encodes every video (`rsp.prepare rescale`), after which random access is exact;
for data that was not prepared, `accurate` decodes sequentially from the first frame, which is
exact everywhere and costs a decode of every frame up to the last one requested.
"""

from __future__ import annotations

import csv
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import decord
import numpy as np

from rsp.atomicio import PARTIAL_PREFIX, atomic_path

OUR_LABELS = "labels.csv"
REFERENCE_LABELS = ("label_1.0.pickle", "label_full_1.0.pickle")  # read name, written name (docs/data.md#labels-files)
LABELS_HEADER = ("path", "class_idx", "class_name", "num_frames")
SEEK_MODES = ("fast", "accurate")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")


class DataError(ValueError):
    """A data root, labels file or video set that cannot be trained on; the message names paths."""


class VideoReadError(RuntimeError):
    """One video could not be read; `path` and `reason` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class LabelEntry(NamedTuple):
    path: str  # relative to the data root
    class_idx: int
    class_name: str = ""  # empty when read from the reference pickle
    num_frames: int = -1  # -1 when unknown (reference pickle)


# --- reading frames -------------------------------------------------------------------------------


class VideoFile:
    """One video opened with a single-threaded decord reader (the loader's worker processes are the
    parallelism, docs/data.md#decoding-and-seek-modes). Raises `VideoReadError` naming the path for anything that goes wrong."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reader = self._open()
        self._fresh = True  # no frame decoded yet: sequential reading can start without a seek
        self.num_frames = len(self._reader)

    def read(self, indices: Sequence[int], seek: str = "fast") -> np.ndarray:
        """Frames `indices` (any order, repeats allowed) as uint8 (N, H, W, 3) RGB."""
        if seek not in SEEK_MODES:
            raise ValueError(f"seek ({seek!r}) must be one of {', '.join(SEEK_MODES)}")
        wanted = np.asarray(indices, dtype=np.int64)
        unique, inverse = np.unique(wanted, return_inverse=True)  # sorted: the decoder only moves forward
        if len(unique) and (unique[0] < 0 or unique[-1] >= self.num_frames):
            raise VideoReadError(self.path, f"frame indices {unique.tolist()} outside [0, {self.num_frames - 1}]")
        try:
            frames = self._reader.get_batch(unique.tolist()).asnumpy() if seek == "fast" else self._sequential(unique)
        except Exception as err:
            raise VideoReadError(self.path, f"decoding frames {unique.tolist()} failed ({_first_line(err)})") from err
        finally:
            self._fresh = False
        return frames[inverse]

    def _open(self) -> decord.VideoReader:
        if not self.path.is_file():
            raise VideoReadError(self.path, "file does not exist")
        if self.path.stat().st_size == 0:
            raise VideoReadError(self.path, "file is empty (0 bytes)")
        try:
            return decord.VideoReader(str(self.path), num_threads=1)
        except Exception as err:  # decord raises RuntimeError or DECORDError with C++ context
            raise VideoReadError(self.path, f"decord cannot open it ({_first_line(err)})") from err

    def _sequential(self, sorted_indices: np.ndarray) -> np.ndarray:
        # `next()` from a fresh reader is the only decord path that never seeks: `seek(0)` and
        # `skip_frames` seek, and land a frame off on the same files as `get_batch`.
        reader = self._reader if self._fresh else self._open()
        out, position = [], 0
        for index in sorted_indices.tolist():
            while position < index:
                reader.next()
                position += 1
            out.append(reader.next().asnumpy())
            position += 1
        return np.stack(out)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


# --- labels files ---------------------------------------------------------------------------------


def resolve_labels_file(root: Path, labels: str) -> Path:
    """The labels file of `root`: `labels` relative to it, or for "auto" ours, else the reference's."""
    if labels != "auto":
        path = root / labels
        if not path.is_file():
            raise DataError(f"data.labels ({labels!r}) does not exist under data.root {root}; expected file {path}")
        return path
    for name in (OUR_LABELS, *REFERENCE_LABELS):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no labels file in data root {root}: looked for {', '.join((OUR_LABELS, *REFERENCE_LABELS))}. "
        f"Write one with `python -m rsp.prepare labels --root {root}`, name another with data.labels, "
        "or set data.synthetic_videos to generate a synthetic dataset there"
    )


def read_labels(path: Path) -> list[LabelEntry]:
    """Entries of a labels file in either format (the suffix decides: .pickle/.pkl is the reference)."""
    try:
        entries = _read_pickle(path) if path.suffix in (".pickle", ".pkl") else _read_csv(path)
    except DataError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"labels file {path} cannot be read: {err}") from err
    if not entries:
        raise DataError(f"labels file {path} lists no videos; regenerate it with `python -m rsp.prepare labels`")
    return entries


def write_labels(path: Path, entries: Sequence[LabelEntry]) -> None:
    """Write our CSV format atomically (a reader never sees half a file)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABELS_HEADER)
    for e in entries:
        writer.writerow((e.path, e.class_idx, e.class_name, e.num_frames))
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _read_csv(path: Path) -> list[LabelEntry]:
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (spreadsheet exports) is not data
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != LABELS_HEADER:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise DataError(f"labels file {path} must start with the header {','.join(LABELS_HEADER)}, found {got}")
    entries = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:  # a blank line (a trailing one, say) lists nothing
            continue
        try:
            entries.append(LabelEntry(row[0], int(row[1]), row[2], int(row[3])))
        except (IndexError, ValueError) as err:
            raise DataError(f"labels file {path}, line {line}: expected 4 fields path,int,str,int, got {row}") from err
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
