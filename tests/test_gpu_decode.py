"""Decoding on the GPU (data.decode_device=cuda: torchcodec on NVDEC, crops on the GPU) on real
videos prepared all-intra (`pytest -m gpu`; skipped where torch sees no GPU). Written without a
GPU to run on: the colour tolerance below is an expectation, not yet a measurement.

NVDEC returns h264's YUV frames exactly (the standard fixes every decoded sample); torchcodec
converts them to RGB on the GPU, whose rounding may differ from FFmpeg's swscale on the CPU by a
few levels. So the rule here is the frame rule of tests/test_data_real.py with a colour tolerance:
each frame is within COLOUR_LEVELS of PyAV's frame at its index and closer to it than to the
neighbouring frames."""

from __future__ import annotations

from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import data_config
from test_data_real import pyav_frames

from rsp.data import EpochSampler, FramePairDataset
from rsp.kinetics import ffmpeg_command, rescale_video
from rsp.loading import make_loader
from rsp.prepare import write_labels_file

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("needs_ffmpeg"),
]

COLOUR_LEVELS = 4  # largest RGB difference to PyAV's frame (module docstring)
CROP_LEVELS = 2.0  # largest mean difference of GPU crops to the CPU's (bicubic in float, rounded, vs uint8)


@pytest.fixture(scope="module")
def intra_root(real_videos, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu_intra")
    command = partial(ffmpeg_command, "ffmpeg", short_side=128, keyint=1, preset="ultrafast", crf=23)
    for name in ("Megamind.avi", "tree.avi", "cup.mp4", "vtest.avi"):
        assert rescale_video((real_videos[name], root / "train" / "real" / f"{Path(name).stem}.mp4"), command, 120)
    write_labels_file(root, root / "train", jobs=1, decoders=["torchcodec"])
    return root


def test_gpu_decoding_returns_the_requested_frames(intra_root):
    ds = FramePairDataset(data_config(intra_root, decoder="torchcodec", decode_device="cuda", repeated_sampling=3), 32, 0)
    wrong = []
    for key in [(epoch, i) for i in range(len(ds)) for epoch in range(2)]:
        decoded = ds.decode_item(key)
        assert decoded.broken_paths == [] and decoded.frames.is_cuda
        indices = decoded.frame_indices.reshape(-1).tolist()
        frames = decoded.frames.reshape(-1, *decoded.frames.shape[2:]).cpu().numpy().astype(np.int16)
        reference, _ = pyav_frames(decoded.path, {i + d for i in indices for d in (-1, 0, 1)})
        for index, frame in zip(indices, frames, strict=True):
            diff = np.abs(frame - reference[index])
            if diff.max() > COLOUR_LEVELS:
                wrong.append(f"{decoded.path.name} frame {index}: max diff {diff.max()}")
            for neighbour in (index - 1, index + 1):
                if neighbour in reference and not np.array_equal(reference[neighbour], reference[index]):
                    if np.abs(frame - reference[neighbour]).mean() <= diff.mean():
                        wrong.append(f"{decoded.path.name} frame {index} is as close to frame {neighbour}")
    assert wrong == []


def _first_batches(root: Path, device: str, count: int = 2) -> list[dict]:
    cfg = data_config(root, decoder="torchcodec", decode_device=device, batch_size=2, num_workers=2)
    ds = FramePairDataset(cfg, img_size=32, seed=3)
    sampler = EpochSampler(len(ds), 2, 0, 1, seed=3)
    return list(islice(make_loader(ds, sampler, cfg, seed=3), count))


def test_gpu_batches_are_deterministic_and_match_the_cpu_crops(intra_root):
    gpu, again, cpu = _first_batches(intra_root, "cuda"), _first_batches(intra_root, "cuda"), _first_batches(intra_root, "cpu")
    for a, b, c in zip(gpu, again, cpu, strict=True):
        assert a["src"].is_cuda and a["src"].dtype == torch.uint8 and a["src"].shape == c["src"].shape
        assert torch.equal(a["src"], b["src"]) and torch.equal(a["tgt"], b["tgt"])
        for name in ("src", "tgt"):
            assert (a[name].float().cpu() - c[name].float()).abs().mean() < CROP_LEVELS
