"""Generated videos, one file at a time: the frames of a generated scene and their h264 encoding.

`synthetic_frames` draws the `shapes` scene (textured shapes moving over a drifting textured
background, so every frame differs from its neighbours and crops contain structure); the other
scenes live in rsp.scenes (`camouflage`) and rsp.natural (`natural`), imported only when a video of
theirs is written. `write_video` encodes frames reproducibly; `write_all` writes a list of
`VideoSpec`s, in isolated worker processes when asked (rsp.filepool). rsp.synthetic builds datasets
from them, rsp.kinetics_raw a mirror of the Kinetics servers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from core.atomicio import atomic_path
from rsp.filepool import run_isolated
from rsp.kinetics import x264_tune


def synthetic_frames(rng: np.random.Generator, num_frames: int, height: int, width: int) -> Iterator[np.ndarray]:
    """Yield `num_frames` uint8 (height, width, 3) RGB frames of moving textured shapes."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(height, width)
    gratings = [
        dict(
            freq=rng.uniform(-0.25, 0.25, 2) * 2 * np.pi / 4,  # radians per pixel (y, x)
            drift=rng.uniform(-1.5, 1.5, 2),  # pixels per frame (y, x)
            color=rng.uniform(-40, 40, 3),
            phase=rng.uniform(0, 2 * np.pi),
        )
        for _ in range(3)
    ]
    shapes = [
        dict(
            start=rng.uniform(0, 1, 2) * (height, width),
            velocity=rng.uniform(-0.04, 0.04, 2) * scale,  # pixels per frame
            radius=rng.uniform(0.1, 0.25) * scale,
            rect=bool(rng.integers(2)),
            color=rng.uniform(30, 225, 3),
            stripes=rng.uniform(0.3, 1.2),  # radians per pixel
        )
        for _ in range(3)
    ]
    for t in range(num_frames):
        frame = np.full((height, width, 3), 128.0, np.float32)
        for g in gratings:
            wave = np.sin(g["freq"][0] * (yy - g["drift"][0] * t) + g["freq"][1] * (xx - g["drift"][1] * t) + g["phase"])
            frame += wave[..., None] * g["color"]
        for s in shapes:
            cy = _bounce(s["start"][0] + s["velocity"][0] * t, height)
            cx = _bounce(s["start"][1] + s["velocity"][1] * t, width)
            dy, dx = (yy - cy) / s["radius"], (xx - cx) / s["radius"]
            mask = np.maximum(abs(dy), abs(dx)) <= 1 if s["rect"] else dy**2 + dx**2 <= 1
            texture = s["color"] * (0.75 + 0.25 * np.sin(s["stripes"] * (xx + yy - t)))[..., None]
            frame[mask] = texture[mask]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _bounce(x: float, size: int) -> float:
    # triangle wave: a shape that leaves [0, size] comes back in, so it stays in view
    period = 2 * size
    m = x % period
    return m if m <= size else period - m


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int = 30,
    keyint: int = 30,
    preset: str = "veryfast",
    crf: int = 23,
) -> None:
    """Encode uint8 (H, W, 3) frames as h264 mp4 with a keyframe every `keyint` frames; atomic.
    `crf` 0 is lossless (identical input frames decode identically)."""
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = None
        for index, frame in enumerate(frames):
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = keyint
                # scenecut=0: keyframes exactly every `keyint` frames (benchmarks compare intervals).
                # mbtree=0: with macroblock-tree rate control, x264 as PyAV bundles it writes a
                # different video for the same frames from run to run; threads=1: the output of
                # x264 depends on its thread count, which would differ between machines.
                params = f"keyint={keyint}:scenecut=0:mbtree=0:threads=1"
                stream.options = {"preset": preset, "crf": str(crf), "x264-params": params, **x264_tune(keyint)}
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index
            for packet in stream.encode(picture):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"no frames to write to {path}; pass at least one frame")
        for packet in stream.encode():
            container.mux(packet)


@dataclass(frozen=True)
class VideoSpec:
    path: Path
    seed: Sequence[int]
    num_frames: int
    height: int
    width: int
    fps: int
    keyint: int
    scene: str = "shapes"
    sources: tuple[str, ...] = ()  # the natural scene's extra photographs / videos (rsp.natural)


def _write_spec(spec: VideoSpec) -> None:
    if spec.path.exists():  # written atomically, so an existing file is complete
        return
    rng = np.random.default_rng(list(spec.seed))
    write_video(spec.path, scene_frames(spec.scene, rng, spec), spec.fps, spec.keyint)


def scene_frames(scene: str, rng: np.random.Generator, spec: VideoSpec) -> Iterator[np.ndarray]:
    """The frames of one video of a generated scene."""
    if scene == "camouflage":
        # rsp.scenes and rsp.natural bring scipy.ndimage and PIL (~0.35 CPU-s to import): only writing
        # videos pays for them, not every training job that finds its generated dataset in place
        from rsp.scenes import camouflage_frames

        return camouflage_frames(rng, spec.num_frames, spec.height, spec.width)
    if scene == "natural":
        from rsp.natural import natural_frames  # as rsp.scenes, above

        return natural_frames(rng, spec.num_frames, spec.height, spec.width, spec.sources)
    return synthetic_frames(rng, spec.num_frames, spec.height, spec.width)


def write_all(specs: list[VideoSpec], jobs: int) -> None:
    if jobs <= 1:
        for spec in specs:
            _write_spec(spec)
        return
    for spec, _, error in run_isolated(_write_spec, specs, jobs, "generate"):  # spawned: see rsp/filepool.py
        if error:
            raise RuntimeError(f"generating {spec.path} failed: {error}")
