"""Video decoders behind one small interface: PyAV, torchcodec and decord
(docs/data.md#decoding-and-seek-modes).

A `Reader` is one open video file decoded on one thread (the loader's worker processes are the
parallelism). It gives frames two ways:
- `random(indices)`: the decoder's random access for sorted, unique indices in one call (seek to
  the keyframe before a frame, decode forward). Exact on well-formed files; wrong on files whose
  timestamps are broken (opencv-doc's `Megamind.avi`, `box.mp4`), where decord and torchcodec
  return other frames, so it is only used where `rsp.probe` verified it for that file;
- `frames(wanted)`: decoding from the first frame in the decoder's output order, never seeking
  (RGB only for the `wanted` indices). Frame i of a video is, by definition, the i-th frame this
  yields; `sequential(reader, indices)` reads frames that way, exact on every file.

PyAV bundles its own FFmpeg (8.x in av 18) and is the one decoder that exposes FFmpeg's frame
skipping: its random access skips decoding the frames no other frame refers to (x264's non-reference
B-frames) unless they are requested, 17-28% less decoding per item than torchcodec on x264 clips
with a keyframe every 30 or 250 frames (bench/README.md). On an all-intra MP4 (the preparation's
default) it takes the frame index from the container's sample table instead of reading every
packet (`intra_index`), so an item costs one open and one decode per frame. torchcodec (PyTorch's
maintained decoder) needs FFmpeg's shared libraries (major versions 4 to 9) from the system or conda;
decord 0.6.0 bundles FFmpeg 4.1.
`require(decoder)` checks once per process and raises `DecoderUnavailable` naming what to install.
All three turn a rotated video upright (its display matrix) and, on every h264 file tested, return
bit-identical frames.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import importlib.metadata
import itertools
import os
import re
from collections.abc import Callable, Container, Iterator, Sequence
from pathlib import Path
from typing import Protocol

if __name__ == "__main__":  # before the heavy imports: a ctrl-C, or a Python without numpy, is one line
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("python -m rsp.decoders", "run it again")

import numpy as np

DECODERS = ("pyav", "torchcodec", "decord")
# How a file may be read (recorded per file and decoder by rsp.probe): by random access, only by
# decoding from its first frame, or not at all
RANDOM, SEQUENTIAL, UNREADABLE = "random", "sequential", "unreadable"
FILE_SEEK_MODES = (RANDOM, SEQUENTIAL, UNREADABLE)
FFMPEG_INSTALL = (
    "install FFmpeg's shared libraries: `apt-get install ffmpeg` (Debian/Ubuntu; ./bootstrap.sh does it when run as "
    "root), `conda install -c conda-forge ffmpeg` (environment.yml has it), or any FFmpeg 4 to 9 on the library path"
)


class DecoderUnavailable(RuntimeError):
    """A decoder cannot run on this machine (a missing package or shared library). Not a problem of
    one file: it stops the run instead of counting videos as broken."""


class VideoReadError(RuntimeError):
    """One video could not be read; `path` and `reason` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class Reader(Protocol):
    path: Path
    num_frames: int  # frames the decoder's own index lists; may differ from what `frames()` yields

    def random(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at sorted unique `indices` as uint8 (N, H, W, 3) RGB, by random access."""

    def frames(self, wanted: Container[int]) -> Iterator[np.ndarray | None]:
        """Every frame from the first, in decoding order, never seeking: uint8 (H, W, 3) RGB for
        indices in `wanted`, None (or RGB, where skipping the conversion saves nothing) for others."""


def open_reader(decoder: str, path: str | Path, device: str = "cpu") -> Reader:
    """Open `path` with `decoder` (one of DECODERS). Raises VideoReadError for a file that cannot be
    opened and DecoderUnavailable for a decoder that cannot run here. `device` cuda (torchcodec only)
    decodes on the GPU: `random` then returns a CUDA tensor, `frames` host arrays."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder ({decoder!r}) must be one of {', '.join(DECODERS)}")
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")
    if device != "cpu":
        if decoder != "torchcodec":
            raise ValueError(f"device ({device!r}) other than cpu needs the torchcodec decoder, not {decoder}")
        return TorchcodecReader(path, device)
    return {"pyav": PyavReader, "torchcodec": TorchcodecReader, "decord": DecordReader}[decoder](path)


def sequential(reader: Reader, indices: Sequence[int]) -> np.ndarray:
    """Frames at sorted unique `indices` by decoding from the first frame: exact on every file."""
    out, wanted = [], iter(indices)
    target = next(wanted, None)
    position = -1
    for position, frame in enumerate(reader.frames(set(indices))):
        if position == target:
            out.append(frame)
            target = next(wanted, None)
            if target is None:
                return np.stack(out)
    raise VideoReadError(reader.path, f"decoding from the start ended after {position + 1} frames; frame {target} was requested")


# --- PyAV -----------------------------------------------------------------------------------------


class PyavReader:
    def __init__(self, path: Path):
        require("pyav")
        self.path = path

    @functools.cached_property
    def _container(self):
        # closed when the reader is dropped (PyAV closes on deallocation). Opened without FFmpeg's
        # stream probing (`LIGHT_OPEN`), which decodes frames only to learn what an all-intra MP4's
        # sample table and the codec's own headers already say (1.3 of an item's ~8 ms CPU); any
        # other file is reopened with it (`_index`)
        return self._open(light=True)

    @functools.cached_property
    def _index(self) -> tuple[list[int], list[int]]:
        """Timestamps of every frame and of every keyframe, sorted, from the packets (no decoding);
        for an all-intra MP4, from the sample table the container read when it opened (`intra_index`)."""
        intra = intra_index(self._container)
        if intra is not None:
            return intra, intra
        self._container = self._open()  # with predicted frames, the decoder's reorder delay comes from the probing
        pts, keys = [], []
        try:
            for packet in self._container.demux(self._container.streams.video[0]):
                if packet.pts is not None:
                    pts.append(packet.pts)
                    keys += [packet.pts] if packet.is_keyframe else []
        except Exception as err:  # av.FFmpegError subclasses
            raise VideoReadError(self.path, f"PyAV cannot read it ({first_line(err)})") from err
        return sorted(pts), sorted(keys)

    @property
    def num_frames(self) -> int:
        return len(self._index[0])

    def random(self, indices: Sequence[int]) -> np.ndarray:
        pts, keys = self._index
        if indices and indices[-1] >= len(pts):
            raise VideoReadError(self.path, f"PyAV finds {len(pts)} frames; frame {indices[-1]} was requested")
        wanted = {pts[i] for i in indices}
        found: dict[int, np.ndarray] = {}
        try:
            self._seek_and_decode(self._container, [pts[i] for i in indices], wanted, keys, found)
        except Exception as err:  # av.FFmpegError subclasses
            raise VideoReadError(self.path, f"PyAV cannot decode frames {list(indices)} ({first_line(err)})") from err
        missing = [i for i in indices if pts[i] not in found]
        if missing:
            raise VideoReadError(self.path, f"PyAV's random access finds no frame {missing}")
        return np.stack([found[pts[i]] for i in indices])

    @staticmethod
    def _seek_and_decode(container, targets: list[int], wanted: set[int], keys: list[int], found: dict) -> None:
        # Per target: seek to the keyframe before it unless the decoder is already in that GOP, then
        # decode forward. A packet no requested frame needs is decoded with skip_frame=NONREF: FFmpeg
        # drops it when no other frame refers to it, which changes no other frame's pixels.
        stream = container.streams.video[0]
        codec = stream.codec_context
        packets, gop = None, None
        for target in targets:
            key = keys[max(0, bisect.bisect_right(keys, target) - 1)] if keys else None
            if packets is None or key != gop:
                container.seek(key if key is not None else 0, stream=stream, backward=True)
                codec.flush_buffers()
                packets, gop = container.demux(stream), key
            while target not in found:
                packet = next(packets, None)
                if packet is None:
                    break
                codec.skip_frame = "DEFAULT" if packet.pts in wanted or packet.size == 0 else "NONREF"
                for frame in codec.decode(packet):  # a packet of size 0 flushes the decoder at the end
                    if frame.pts in wanted:
                        found[frame.pts] = upright_rgb(frame)

    def frames(self, wanted: Container[int]) -> Iterator[np.ndarray | None]:
        with self._open() as container:
            try:
                for index, frame in enumerate(container.decode(container.streams.video[0])):
                    yield upright_rgb(frame) if index in wanted else None
            except Exception as err:  # av.FFmpegError subclasses
                raise VideoReadError(self.path, f"PyAV cannot decode it ({first_line(err)})") from err

    def _open(self, light: bool = False):
        import av  # imported on first use: a process loads only the decoder it reads with

        try:
            container = av.open(str(self.path), options=LIGHT_OPEN if light else None)
        except Exception as err:  # av.FFmpegError subclasses
            raise VideoReadError(self.path, f"PyAV cannot open it ({first_line(err)})") from err
        if not container.streams.video:
            container.close()
            raise VideoReadError(self.path, "PyAV cannot open it (no video stream)")
        container.streams.video[0].codec_context.thread_count = 1
        return container


def intra_index(container) -> list[int] | None:
    """Sorted frame timestamps of an MP4/MOV whose every sample is a keyframe (an all-intra
    encode, `rsp.prepare rescale --keyint 1`), read from the sample table FFmpeg loaded when it
    opened the file: no packet is read, where the demuxing scan costs ~10 us per frame. Without
    B-frames a frame's presentation time is its decoding time, the sample table's. None for any
    other file (a matroska index lists only cue points; a stream with predicted frames reorders).
    A wrong entry cannot give a wrong frame: the decoder accepts only a frame whose own timestamp
    is the requested one, and `rsp.probe` verifies random access per file against a full decode."""
    if "mp4" not in container.format.name:  # "mov,mp4,m4a,3gp,3g2,mj2": the demuxer whose table is complete
        return None
    stream = container.streams.video[0]
    entries = stream.index_entries
    if not stream.frames or len(entries) != stream.frames:
        return None
    stamps = []
    for entry in entries:
        if not entry.is_keyframe or entry.is_discard:
            return None
        stamps.append(entry.timestamp)
    return sorted(stamps)


# The random-access container's open options: stop FFmpeg's stream probing at the first packet
# and decode nothing there (`skip_frame` reaches the probing decoder; ours sets its own per packet).
# An MP4's streams, frame count, sample table and display matrix come from its header; an all-intra
# stream has no reorder delay to guess, and the h264 decoder reads its parameters from the codec's
# own header. rsp.probe verifies random access through this container against a sequential decode
# through a fully probed one.
LIGHT_OPEN = {"probesize": "32", "skip_frame": "all"}


def upright_rgb(frame) -> np.ndarray:
    """A PyAV frame as uint8 (H, W, 3) RGB, turned by its display matrix as the other decoders do."""
    rgb = _reformatter(os.getpid()).reformat(frame, format="rgb24", threads=1).to_ndarray()
    turns = round(frame.rotation / 90) % 4 if frame.rotation else 0
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


@functools.cache
def _reformatter(pid: int):
    # one per process (`pid`: a loader worker forked from a process that has one must not reuse it),
    # on one thread; it keeps FFmpeg's scaler for the last size and format (to_ndarray builds one per
    # frame, 4x slower), same pixels
    from av.video.reformatter import VideoReformatter

    return VideoReformatter()


# --- decord ---------------------------------------------------------------------------------------


class DecordReader:
    def __init__(self, path: Path):
        import decord  # imported on first use: a process loads only the decoder it reads with

        self.path = path
        self._open = functools.partial(decord.VideoReader, str(path), num_threads=1)
        self._reader = self._guard("decord cannot open it", self._open)
        self._fresh = True  # nothing decoded yet: `frames()` can start without reopening
        self.num_frames = len(self._reader)

    def random(self, indices: Sequence[int]) -> np.ndarray:
        self._fresh = False
        return self._guard(
            f"decord cannot decode frames {list(indices)}", lambda: self._reader.get_batch(list(indices)).asnumpy()
        )

    def frames(self, wanted: Container[int]) -> Iterator[np.ndarray | None]:
        # `next()` from a fresh reader is decord's only path that never seeks: `seek(0)` and
        # `skip_frames` seek, and land a frame off on the same files as `get_batch`.
        reader = self._reader if self._fresh else self._guard("decord cannot open it", self._open)
        self._fresh = False
        for index in itertools.count():
            try:
                frame = reader.next()  # converted to RGB already
            except StopIteration:
                return
            except Exception as err:  # decord raises DECORDError with C++ context
                raise VideoReadError(self.path, f"decord cannot decode it ({first_line(err)})") from err
            yield frame.asnumpy() if index in wanted else None

    def _guard(self, what: str, call: Callable):
        try:
            return call()
        except Exception as err:  # decord raises RuntimeError or DECORDError with C++ context
            raise VideoReadError(self.path, f"{what} ({first_line(err)})") from err


# --- torchcodec -----------------------------------------------------------------------------------


class TorchcodecReader:
    def __init__(self, path: Path, device: str = "cpu"):
        require("torchcodec")
        self.path, self.device = path, device

    @functools.cached_property
    def _indexed(self):
        # exact: frame indices come from a scan of the whole file, not from the header's frame rate
        # (approximate mode counts 444 frames in opencv-doc's 68-frame `tree.avi`). Made on first
        # use: reading sequentially needs no index.
        return self._video_decoder("exact")

    @property
    def num_frames(self) -> int:
        return self._indexed.metadata.num_frames or 0

    def random(self, indices: Sequence[int]) -> np.ndarray:
        decoder = self._indexed
        try:
            frames = decoder.get_frames_at(indices=list(indices)).data
            return frames if self.device != "cpu" else frames.numpy()  # on the GPU, frames stay there
        except Exception as err:  # RuntimeError or IndexError with C++ context
            raise VideoReadError(self.path, f"torchcodec cannot decode frames {list(indices)} ({first_line(err)})") from err

    def frames(self, wanted: Container[int]) -> Iterator[np.ndarray | None]:
        # VideoDecoder's public methods all find frames by timestamp; the next-frame op of its core
        # (pinned torchcodec 0.17) returns frames in decoding order, as a sequential decode must.
        from torchcodec import _core

        decoder = self._video_decoder("approximate")._decoder  # no scan needed to read forward
        while True:
            try:
                frame, _, _ = _core.get_next_frame(decoder)
            except IndexError:  # "no more frames left to decode"
                return
            except Exception as err:
                raise VideoReadError(self.path, f"torchcodec cannot decode it ({first_line(err)})") from err
            yield frame.cpu().numpy()  # the core converts every frame

    def _video_decoder(self, seek_mode: str):
        from torchcodec.decoders import VideoDecoder  # torchcodec loads FFmpeg's shared libraries: only when used

        try:
            return VideoDecoder(
                str(self.path), num_ffmpeg_threads=1, seek_mode=seek_mode, dimension_order="NHWC", device=self.device
            )
        except Exception as err:  # ValueError (no video stream) or RuntimeError with C++ context
            raise VideoReadError(self.path, f"torchcodec cannot open it ({first_line(err)})") from err


# --- availability ---------------------------------------------------------------------------------


def require(decoder: str) -> str:
    """A one-line description of `decoder` when it can run here (checked once per process), else
    DecoderUnavailable naming what to install."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder ({decoder!r}) must be one of {', '.join(DECODERS)}")
    return {"pyav": _require_pyav, "torchcodec": _require_torchcodec, "decord": _require_decord}[decoder]()


@functools.cache
def _require_pyav() -> str:
    try:
        import av  # imported on first use: a process loads only the decoder it reads with
    except ImportError as err:
        raise DecoderUnavailable(
            f"data.decoder=pyav needs the Python package av ({err}); install it with `pip install av=={_pinned('av')}` "
            "(./bootstrap.sh does), or set data.decoder=decord"
        ) from err
    return f"PyAV {av.__version__} (bundled FFmpeg {av.ffmpeg_version_info})"


@functools.cache
def _require_decord() -> str:
    try:
        import decord  # imported on first use: a process loads only the decoder it reads with
    except ImportError as err:
        raise DecoderUnavailable(
            f"data.decoder=decord needs the Python package decord ({err}); install it with "
            "`pip install decord==0.6.0` (./bootstrap.sh does), or set data.decoder=torchcodec"
        ) from err
    return f"decord {decord.__version__} (bundled FFmpeg)"


@functools.cache
def _require_torchcodec() -> str:
    return check_torchcodec()


def check_torchcodec(load_core_library: Callable[[], object] | None = None) -> str:
    """Import torchcodec and load its FFmpeg-dependent core library, by default the way torchcodec
    loads it; `load_core_library` replaces that step (tests pass one that fails like a missing
    FFmpeg). Returns 'torchcodec <version> (FFmpeg <major>)'; raises DecoderUnavailable."""
    try:
        import torchcodec  # loads FFmpeg's shared libraries, which may be missing: caught below
        from torchcodec import _core
    except (ImportError, OSError) as err:
        raise DecoderUnavailable(
            f"data.decoder=torchcodec needs the Python package torchcodec ({first_line(err)}); install it with "
            f"`pip install --no-deps torchcodec=={_pinned('torchcodec')}` (./bootstrap.sh does), or set data.decoder=decord"
        ) from err
    try:
        (load_core_library or _core.ops.load_core_libraries)()
    except Exception as err:  # RuntimeError from torchcodec, OSError from dlopen
        raise DecoderUnavailable(
            f"torchcodec cannot load FFmpeg's shared libraries ({missing_library(err)}): {FFMPEG_INSTALL}; "
            "or set data.decoder=decord, which bundles its own FFmpeg"
        ) from err
    return f"torchcodec {torchcodec.__version__} (FFmpeg {_core.ffmpeg_major_version})"


def missing_library(err: BaseException) -> str:
    """The shared libraries a loading error (or its causes) names ('libavutil.so.58 not found'),
    else its first line."""
    text, cause = "", err
    while cause is not None:
        text, cause = text + "\n" + str(cause), cause.__cause__ or cause.__context__
    names = sorted(set(re.findall(r"(lib[\w+-]+\.so[.\d]*): cannot open shared object file", text)))
    return f"{', '.join(names)} not found" if names else first_line(err)


def _pinned(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "<the version pyproject.toml pins>"


def first_line(err: BaseException) -> str:
    """The first line of an error, without the C++ source location decord and torchcodec put first."""
    for line in str(err).strip().splitlines():
        line = _SOURCE_LOCATION.sub("", line).strip()
        if line:
            return line[:300]
    return type(err).__name__


# "[18:37:34] /github/workspace/src/video/video_reader.cc:151: " (decord) or
# "SingleStreamDecoder, /__w/torchcodec/.../SingleStreamDecoder.cpp:41, " (torchcodec)
_SOURCE_LOCATION = re.compile(r"^(\[[\d:]+\] |\w+, )?/\S+\.(cc|cpp|h):\d+[:,] ")


def main(argv: list[str] | None = None) -> int:
    """`python -m rsp.decoders [--require NAME ...]`: print which decoders run here; exit 1 when a
    required one does not (CI and ./bootstrap.sh use it)."""
    parser = argparse.ArgumentParser(prog="python -m rsp.decoders", description=main.__doc__)
    parser.add_argument("--require", nargs="*", default=[], choices=DECODERS, help="decoders that must run here")
    args = parser.parse_args(argv)
    missing = []
    for decoder in DECODERS:
        try:
            print(f"{decoder}: {require(decoder)}")
        except DecoderUnavailable as err:
            print(f"{decoder}: unavailable: {err}")
            missing += [decoder] if decoder in args.require else []
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
