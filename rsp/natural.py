"""Natural pretraining clips: real photographs in motion and real videos (docs/learning.md).

The `natural` scene of rsp.synthetic. Each clip is one of two kinds:
- a photo clip (`photo_scene`): a camera window drifting over a real photograph, with 1-3
  cut-outs of real photographs (half of them from the same photograph) moving, zooming and
  occluding each other, under a changing light (global gain, a drifting shadow field, blur,
  sensor noise; rsp.scenes.Lighting), then JPEG-compressed at a quality drawn per clip;
- a video clip (`video_clip`): consecutive frames of a real video, seen through a random window.

Sources are rsp.photos' training photographs and real videos (frames of the videos serve as more
photographs), plus any files or folders passed in `extra`. Evaluation-only photographs are refused
(rsp.photos.held_out_problem); a video that fails to decode is skipped and counted. Everything
after the sources is a function of the generator passed in: the same seed gives the same clip.
The real-photo benchmark (eval/photo_davis.py) draws its sequences with `photo_scene` from the
evaluation-only photographs, so the pretraining clips and the benchmark share a design, never a
picture.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
from PIL import Image

from rsp.photos import (
    INSTALL_HINT,
    PHOTO_SUFFIXES,
    VIDEO_SUFFIXES,
    held_out_problem,
    sources_in,
    training_photos,
    training_videos,
)
from rsp.scenes import Backdrop, SceneObject, SceneStyle, draw_objects, film

log = logging.getLogger(__name__)

PHOTO_SHORT_SIDE = 320  # px: photographs are kept at this size (room for a 2x backdrop of a 160-px frame)
VIDEO_SHORT_SIDE = 144  # px: video frames are kept at this size (2x the 72-px clips)
VIDEO_MAX_FRAMES = 200  # frames kept per video, from its start
FRAMES_AS_PHOTOS = 3  # frames of each video (evenly spaced) that also serve as photographs
VIDEO_CLIP_SHARE = 0.3  # of the clips: real video; the rest: photo clips
NATURAL_STYLE = SceneStyle(pan=0.02)  # the camera drifts 2% of the width per frame


@dataclass(frozen=True)
class NaturalSources:
    """Decoded, downscaled training pictures: photographs (H, W, 3) uint8 and videos (T, H, W, 3) uint8."""

    photos: tuple[np.ndarray, ...]
    videos: tuple[np.ndarray, ...]
    names: tuple[str, ...]  # the files they came from
    skipped: tuple[str, ...]  # "file: reason" of each source that failed to decode


def load_photo(path: Path, short_side: int = PHOTO_SHORT_SIDE) -> np.ndarray:
    """(H, W, 3) uint8 RGB, resized so that its short side is `short_side` px."""
    with Image.open(path) as image:
        image.draft("RGB", (short_side * 2, short_side * 2))  # JPEG: decode at a reduced size, much faster
        return _short_side(image.convert("RGB"), short_side)


def _short_side(image: Image.Image, short_side: int) -> np.ndarray:
    scale = short_side / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, Image.BILINEAR))


def load_video(path: Path, short_side: int = VIDEO_SHORT_SIDE, max_frames: int = VIDEO_MAX_FRAMES) -> np.ndarray:
    """(T, H, W, 3) uint8: the first `max_frames` frames, resized. Raises av.FFmpegError or ValueError."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            scale = short_side / min(frame.width, frame.height)
            size = {"width": round(frame.width * scale / 2) * 2, "height": round(frame.height * scale / 2) * 2}
            frames.append(frame.to_ndarray(format="rgb24", **size))  # FFmpeg's scaler: ~10x faster than PIL here
            if len(frames) == max_frames:
                break
    if len(frames) < 2:
        raise ValueError(f"{len(frames)} decodable frame(s)")
    return np.stack(frames)


def unreadable_source(path: Path) -> str | None:
    """Why a source the user listed cannot serve (not a photograph or video by its suffix, or it
    does not decode); None when it can. The installed sources are skipped and counted instead."""
    suffix = path.suffix.lower()
    if suffix not in PHOTO_SUFFIXES + VIDEO_SUFFIXES:
        return (
            f"{path} is neither a photograph ({', '.join(PHOTO_SUFFIXES)}) nor a video ({', '.join(VIDEO_SUFFIXES)}); "
            "list photographs, videos or folders of them"
        )
    try:
        if suffix in PHOTO_SUFFIXES:
            with Image.open(path) as image:
                image.verify()
        else:
            with av.open(str(path)) as container:
                next(container.decode(video=0))
    except (OSError, ValueError, StopIteration, av.FFmpegError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{path} cannot be decoded ({reason}); replace the file or drop it"
    return None


def listed_source_problems(entries: Sequence[str]) -> list[str]:
    """Every problem of the extra sources a user listed (data.natural_sources, --sources): a path
    that does not exist, a folder with nothing to use, an evaluation-only photograph, a file that
    does not decode. Each names the file and the fix."""
    missing = [e for e in entries if not Path(e).exists()]
    out = [f"{e} does not exist; fix the path or drop it" for e in missing]
    out += [
        f"folder {e} holds no photographs or videos; fix the path or drop it"
        for e in entries
        if Path(e).is_dir() and not sources_in([e])
    ]
    for entry in [e for e in entries if e not in missing]:
        listed = sources_in([entry])
        refused = [p for p in listed if held_out_problem(p)]
        if len(refused) > 3:  # a folder of held-out photographs: one line, not one per file
            names = ", ".join(p.name for p in refused[:3])
            out.append(
                f"{entry} holds {len(refused)} evaluation-only photographs ({names}, ...), held out for the real-photo "
                "benchmark (docs/learning.md#sources-and-licences); list its videos or other files one by one instead"
            )
        else:
            out += refused_sources(refused)
        out += [p for p in map(unreadable_source, sorted(set(listed) - set(refused))) if p]
    return out


def refused_sources(paths: Sequence[Path]) -> list[str]:
    """Every held-out problem among `paths` (evaluation-only photographs), one message each."""
    return [p for p in (held_out_problem(path) for path in paths) if p]


def natural_sources(extra: Sequence[str] = ()) -> NaturalSources:
    """The installed training sources plus `extra` files/folders, decoded once per process."""
    return _decoded_sources(tuple(extra))


@functools.lru_cache(maxsize=2)
def _decoded_sources(extra: tuple[str, ...]) -> NaturalSources:
    paths = training_photos() + training_videos() + sources_in(extra)
    refused = refused_sources(paths)
    if refused:
        raise ValueError("; ".join(refused))
    photos, videos, names, skipped = [], [], [], []
    for path in paths:
        try:
            if path.suffix.lower() in PHOTO_SUFFIXES:
                photos.append(load_photo(path))
            else:
                video = load_video(path)
                videos.append(video)
                # evenly spaced away from the ends (videos often fade in from black and out to it)
                index = (np.arange(1, FRAMES_AS_PHOTOS + 1) * len(video) // (FRAMES_AS_PHOTOS + 1)).astype(int)
                photos += [_short_side(Image.fromarray(video[i]), PHOTO_SHORT_SIDE) for i in index]
            names.append(str(path))
        except (OSError, ValueError, av.FFmpegError) as exc:  # a broken source is skipped and counted
            skipped.append(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if skipped:
        log.warning("skipped %d natural source(s) that failed to decode: %s", len(skipped), "; ".join(skipped))
    if not photos:
        raise FileNotFoundError(f"no training photographs or videos were found; {INSTALL_HINT}")
    return NaturalSources(tuple(photos), tuple(videos), tuple(names), tuple(skipped))


# --- photo clips ----------------------------------------------------------------------------------


def photo_crop(rng: np.random.Generator, photo: np.ndarray, height: int, width: int, zoom: float = 1.0) -> np.ndarray:
    """(height, width, 3) float: a random window of `photo`, rescaled by `zoom` x the least that covers it."""
    scale = zoom * max(height / photo.shape[0], width / photo.shape[1])
    if abs(scale - 1) > 1e-3:
        size = (max(width, round(photo.shape[1] * scale)), max(height, round(photo.shape[0] * scale)))
        photo = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
    y = int(rng.integers(0, photo.shape[0] - height + 1))
    x = int(rng.integers(0, photo.shape[1] - width + 1))
    return photo[y : y + height, x : x + width].astype(np.float32)


def photo_objects(
    rng: np.random.Generator,
    photos: Sequence[np.ndarray],
    backdrop: int,
    height: int,
    width: int,
    style: SceneStyle,
    same_photo: float,
) -> list[SceneObject]:
    """The scene's cut-outs: elliptic windows of real photographs, of the backdrop's with
    probability `same_photo`, else of any."""

    def cut_out(texture_height: int, texture_width: int) -> np.ndarray:
        source = photos[backdrop] if rng.random() < same_photo else photos[int(rng.integers(len(photos)))]
        return photo_crop(rng, source, texture_height, texture_width, zoom=rng.uniform(1.0, 2.0))

    return draw_objects(rng, height, width, style, cut_out)


def photo_scene(
    rng: np.random.Generator,
    num_frames: int,
    height: int,
    width: int,
    photos: Sequence[np.ndarray],
    style: SceneStyle = NATURAL_STYLE,
    same_photo: float = 0.5,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame (H, W, 3) uint8, labels (H, W) uint8) per frame: cut-out k has label k (1, 2,
    ...) and is painted over the ones before it; 0 is the backdrop photograph."""
    backdrop_index = int(rng.integers(len(photos)))
    texture = photo_crop(rng, photos[backdrop_index], 2 * height, 2 * width, zoom=rng.uniform(1.0, 1.5))
    velocity = rng.uniform(-1, 1, 2) * style.pan * width
    backdrop = Backdrop(texture, np.array([rng.uniform(0, height), rng.uniform(0, width)]), velocity)
    objects = photo_objects(rng, photos, backdrop_index, height, width, style, same_photo)
    yield from film(rng, backdrop, objects, num_frames, height, width, style)


def jpeg_roundtrip(frame: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


# --- video clips ----------------------------------------------------------------------------------


def video_clip(rng: np.random.Generator, video: np.ndarray, num_frames: int, height: int, width: int) -> Iterator[np.ndarray]:
    """`num_frames` frames of `video` (looping back and forth past its ends) through a random window
    of 0.6-1x the largest one of the clip's aspect ratio."""
    total, vh, vw = video.shape[:3]
    fit = min(vh / height, vw / width) * rng.uniform(0.6, 1.0)
    ch, cw = int(height * fit), int(width * fit)
    y, x = int(rng.integers(0, vh - ch + 1)), int(rng.integers(0, vw - cw + 1))
    start = int(rng.integers(0, total))
    for t in range(num_frames):
        i = (start + t) % (2 * total - 2)
        i = i if i < total else 2 * total - 2 - i  # back and forth: no jump at the end
        window = Image.fromarray(video[i, y : y + ch, x : x + cw])
        yield np.asarray(window.resize((width, height), Image.BILINEAR))


# --- the scene ------------------------------------------------------------------------------------


def natural_frames(
    rng: np.random.Generator, num_frames: int, height: int, width: int, extra: tuple[str, ...] = ()
) -> Iterator[np.ndarray]:
    """Frames of one natural clip (rsp.synthetic's `natural` scene): a real video's or a photo clip's."""
    sources = natural_sources(extra)
    if sources.videos and rng.random() < VIDEO_CLIP_SHARE:
        yield from video_clip(rng, sources.videos[int(rng.integers(len(sources.videos)))], num_frames, height, width)
        return
    style = replace(NATURAL_STYLE, objects=(1, 3))
    quality = int(rng.integers(40, 96))
    for frame, _ in photo_scene(rng, num_frames, height, width, sources.photos, style):
        yield jpeg_roundtrip(frame, quality)
