"""A small mirror of what the Kinetics-400 servers hold, to test `rsp.prepare` end to end.

`generate_kinetics_raw` writes the train-list file, the tar.gz parts, `annotations/train.csv` and
the replacement archive for corrupted videos, with some videos damaged, some replaced and some
listed but absent, as on the real servers (docs/data.md).
"""

from __future__ import annotations

import csv
import io
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomicio import atomic_path
from rsp.generated_videos import VideoSpec, write_all

RAW_CLASS_NAMES = ("abseiling", "playing guitar", "passing American football (in game)", "riding a bike")


@dataclass(frozen=True)
class RawKinetics:
    """What `generate_kinetics_raw` wrote, by video file name (`<youtube_id>_<start>_<end>.mp4`)."""

    good: list[str]  # in a part, decodable
    replaced: list[str]  # truncated in its part, intact in the replacement archive
    broken: list[str]  # truncated in its part, not replaced (preparation must drop them)
    unavailable: list[str]  # listed in train.csv, in no archive
    label_of: dict[str, str]


def generate_kinetics_raw(
    out: str | Path,
    num_videos: int,
    num_parts: int = 2,
    num_replaced: int = 2,
    num_broken: int = 1,
    num_unavailable: int = 1,
    num_frames: int = 24,
    seed: int = 0,
    jobs: int = 1,
) -> RawKinetics:
    """Mirror the Kinetics-400 server layout under `out`: `train/k400_train_path.txt` (one part name
    per line, relative to the list), `train/part_<i>.tar.gz`, `annotations/train.csv`,
    `replacement_for_corrupted_k400.tgz`. Sizes alternate landscape and portrait; keyframes every
    250 frames, like web video."""
    out, rng = Path(out), np.random.default_rng(seed)
    names = [f"{_youtube_id(rng)}_{10 * i:06d}_{10 * i + 10:06d}.mp4" for i in range(num_videos)]
    label_of = {n: RAW_CLASS_NAMES[i % len(RAW_CLASS_NAMES)] for i, n in enumerate(names)}
    replaced, broken = names[:num_replaced], names[num_replaced : num_replaced + num_broken]
    unavailable = names[len(names) - num_unavailable :] if num_unavailable else []
    in_parts = [n for n in names if n not in unavailable]
    sizes = ((64, 80), (80, 64), (72, 96))  # (height, width): landscape and portrait
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        specs = [VideoSpec(work / n, (seed, i), num_frames, *sizes[i % 3], fps=25, keyint=250) for i, n in enumerate(names)]
        write_all(specs, jobs)
        part_names = [f"part_{p}.tar.gz" for p in range(num_parts)]
        for p, part in enumerate(part_names):
            members = {
                n: _damaged(work / n) if n in replaced + broken else (work / n).read_bytes() for n in in_parts[p::num_parts]
            }
            _write_tar(out / "train" / part, members)
        replacement = {f"replacement_for_corrupted_k400/{n}": (work / n).read_bytes() for n in replaced}
        _write_tar(out / "replacement_for_corrupted_k400.tgz", replacement)
    with atomic_path(out / "train" / "k400_train_path.txt") as tmp:
        tmp.write_text("".join(f"{n}\n" for n in part_names))
    with atomic_path(out / "annotations" / "train.csv") as tmp:
        tmp.write_text(_annotations_csv(names, label_of))
    good = [n for n in in_parts if n not in replaced + broken]
    return RawKinetics(good, replaced, broken, unavailable, label_of)


def _youtube_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 11))


def _damaged(path: Path) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 3]  # loses the moov atom: undecodable


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _annotations_csv(names: list[str], label_of: dict[str, str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("label", "youtube_id", "time_start", "time_end", "split", "is_cc"))
    for n in names:
        youtube_id, start, end = n[:-4].rsplit("_", 2)
        writer.writerow((label_of[n], youtube_id, int(start), int(end), "train", 0))
    return buffer.getvalue()
