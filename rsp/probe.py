"""What a video holds and how each decoder may read it: the labels step's check (docs/data.md,
Decoding). Detected per file, never assumed.

Frame i of a video is the i-th frame a decode from the first frame yields (rsp/decoders.py).
`probe_video` decodes the file that way with PyAV (an FFmpeg of its own), keeping RGB copies of
sampled frames: the first, the last three, both sides of 4 keyframes (where seeks land) and 8 at
random (seeded by the file name). It records:
- `num_frames`: the smallest of PyAV's count and each decoder's, so every decoder can deliver
  every index below it (decord lists 456 frames in opencv-doc's `box.mp4`, whose decode yields
  455; a header can claim anything);
- per decoder, the seek mode the file needs. `random` only when (a) the timestamps are clean
  (decoded frames' timestamps strictly increase and equal the packets' sorted timestamps: both
  decoders find frame i by timestamp) and (b) random access, read the way the loader reads an item
  (a fresh reader, one call for a few sorted indices), returns bit-identical frames to sequential
  decoding at every sampled index. PyAV's frames serve as the sequential decode; where they
  differ (another FFmpeg version may round colours differently), the decoder's own sequential
  decode is compared instead.
  `sequential` otherwise, and `unreadable` when the decoder cannot decode the file at all.
The loader reads a `sequential` file by decoding from its first frame: exact, and slower.
"""

from __future__ import annotations

import collections
import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from rsp.decoders import (
    DECODERS,
    RANDOM,
    SEQUENTIAL,
    UNREADABLE,
    DecoderUnavailable,
    VideoReadError,
    first_line,
    open_reader,
    require,
    upright_rgb,
)

RANDOM_SAMPLES = 8  # frames drawn at random per file, besides the ends and the keyframes' sides
KEYFRAME_SAMPLES = 4  # keyframes whose both sides are compared (where seeks land)
FRAMES_PER_READ = 4  # indices per random-access call: an item's 2R frames at R = 2


@dataclass
class Timeline:
    """PyAV's decode of the first video stream from its first frame."""

    frames: int = 0  # frames decoded (up to the first error)
    samples: dict[int, np.ndarray] = field(default_factory=dict)  # frame index -> uint8 (H, W, 3) RGB
    in_order: bool = False  # timestamps strictly increase in decoding order and equal the packets' sorted ones
    problem: str = ""  # why not in order, or where decoding stopped


@dataclass
class VideoProbe:
    num_frames: int = -1  # frames every decoder that reads the file yields sequentially; -1: none
    seek: dict[str, str] = field(default_factory=dict)  # decoder -> random | sequential | unreadable
    reason: str = ""  # why no decoder reads it ("" when one does)
    notes: list[str] = field(default_factory=list)  # disagreements worth a log line


def read_timeline(path: str | Path) -> Timeline:
    """Decode every frame with PyAV, converting to RGB only the sampled ones (module docstring)."""
    timeline, packet_pts, frame_pts = Timeline(), [], []
    rng = np.random.default_rng(zlib.crc32(Path(path).name.encode()))
    reservoir: list[tuple[int, np.ndarray]] = []  # uniform random frames (reservoir sampling)
    keyframes_seen, previous, tail = 0, None, collections.deque(maxlen=3)
    try:
        container = av.open(str(path))
    except Exception as err:  # av.FFmpegError subclasses
        timeline.problem = f"PyAV cannot open it ({first_line(err)})"
        return timeline
    try:
        with container:
            if not container.streams.video:
                timeline.problem = "no video stream"
                return timeline
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for packet in container.demux(stream):
                if packet.pts is not None:
                    packet_pts.append(packet.pts)
                for frame in packet.decode():
                    index = len(frame_pts)
                    frame_pts.append(frame.pts)
                    if index == 0 or (frame.key_frame and keyframes_seen < KEYFRAME_SAMPLES):
                        keyframes_seen += index > 0
                        timeline.samples[index] = upright_rgb(frame)
                        if previous is not None:
                            timeline.samples.setdefault(index - 1, upright_rgb(previous))
                    if index < RANDOM_SAMPLES:
                        reservoir.append((index, upright_rgb(frame)))
                    elif (slot := int(rng.integers(index + 1))) < RANDOM_SAMPLES:
                        reservoir[slot] = (index, upright_rgb(frame))
                    previous = frame
                    tail.append((index, frame))
    except Exception as err:  # av.FFmpegError subclasses, and others for odd containers
        timeline.problem = f"PyAV stops after {len(frame_pts)} frames ({first_line(err)})"
    timeline.frames = len(frame_pts)
    timeline.samples.update(dict(reservoir))
    timeline.samples.update({i: upright_rgb(f) for i, f in tail if i not in timeline.samples})
    if timeline.problem or not frame_pts:
        timeline.problem = timeline.problem or "PyAV decodes no frame"
    elif any(p is None for p in frame_pts):
        timeline.problem = "frames without timestamps"
    elif not all(a < b for a, b in itertools.pairwise(frame_pts)) or frame_pts != sorted(packet_pts):
        timeline.problem = "timestamps out of decoding order"
    timeline.in_order = not timeline.problem
    return timeline


def probe_video(path: str | Path, decoders: Sequence[str] = DECODERS) -> VideoProbe:
    """Check `path` with each of `decoders` that can run here (the others stay out of `seek`)."""
    path, probe = Path(path), VideoProbe()
    if not path.is_file() or path.stat().st_size == 0:
        probe.reason = "file is empty (0 bytes)" if path.is_file() else "file does not exist"
        return probe
    timeline = read_timeline(path)
    if timeline.problem and timeline.frames:
        probe.notes.append(f"random access not trusted: {timeline.problem}")
    counts = [timeline.frames] if timeline.frames else []
    reasons = [] if timeline.frames else [timeline.problem]
    for decoder in decoders:
        try:
            require(decoder)
        except DecoderUnavailable:
            continue
        try:
            mode, count = _check_decoder(decoder, path, timeline, probe.notes)
        except VideoReadError as err:
            probe.seek[decoder] = UNREADABLE
            reasons.append(f"{decoder}: {err.reason}")
            continue
        probe.seek[decoder] = mode
        counts.append(count)
    if not any(mode != UNREADABLE for mode in probe.seek.values()):
        probe.reason = "; ".join(reasons) or "no decoder can run here"
        return probe
    probe.num_frames = min(counts)
    if len(set(counts)) > 1:
        probe.notes.append(f"frame counts disagree (PyAV, then decoders: {counts}); using {probe.num_frames}")
    return probe


def _check_decoder(decoder: str, path: Path, timeline: Timeline, notes: list[str]) -> tuple[str, int]:
    """(seek mode, frame count) of `decoder` for `path`; VideoReadError when it decodes nothing."""
    reader = open_reader(decoder, path)
    if timeline.in_order:
        count = min(reader.num_frames, timeline.frames)
        reference = {i: f for i, f in timeline.samples.items() if i < count}
        if _random_matches(decoder, path, reference, None):
            return RANDOM, count
    own, count, stopped = _decode_own(reader, timeline)  # PyAV's frames differ, or timestamps are not clean
    if stopped:
        notes.append(f"{decoder}: {stopped}")
    if timeline.in_order and not stopped and _random_matches(decoder, path, own, notes):
        return RANDOM, count
    return SEQUENTIAL, count


def _decode_own(reader, timeline: Timeline) -> tuple[dict[int, np.ndarray], int, str]:
    """The decoder's own sequential frames at PyAV's sampled indices, its frame count, and "" or
    where it stopped with an error (the frames before the error are kept: a truncated file's first
    part). VideoReadError when it decodes no frame."""
    wanted = set(timeline.samples) or {0}
    kept, count = {}, 0
    try:
        for count, frame in enumerate(reader.frames(wanted), start=1):
            if count - 1 in wanted:
                kept[count - 1] = frame
    except VideoReadError as err:
        if count == 0:
            raise
        return kept, count, f"decoding stops after {count} frames ({err.reason})"
    if count == 0:
        raise VideoReadError(reader.path, "decodes no frame")
    return kept, count, ""


def _random_matches(decoder: str, path: Path, reference: dict[int, np.ndarray], notes: list[str] | None) -> bool:
    """Random access (fresh reader, FRAMES_PER_READ sorted indices per call) equals `reference`
    bit for bit; a mismatch is noted when `notes` is given."""
    order = np.random.default_rng(zlib.crc32(path.name.encode()) + 1).permutation(sorted(reference)).tolist()
    for start in range(0, len(order), FRAMES_PER_READ):
        group = sorted(order[start : start + FRAMES_PER_READ])
        try:
            frames = open_reader(decoder, path).random(group)
        except VideoReadError as err:
            if notes is not None:
                notes.append(f"{decoder}: random access fails ({err.reason})")
            return False
        for index, frame in zip(group, frames, strict=True):
            if frame.shape != reference[index].shape or not np.array_equal(frame, reference[index]):
                if notes is not None:
                    notes.append(f"{decoder}: random access returns another frame than sequential decoding at frame {index}")
                return False
    return True
