"""Generated video datasets for tests, benchmarks and the smoke experiment.

`generate_dataset` writes a prepared Kinetics-layout dataset: `<root>/train/<class>/<video>.mp4`
(h264, written with PyAV) plus our `labels.csv`. `generate_kinetics_raw` writes what the Kinetics
servers hold (train-list file, tar.gz parts, `annotations/train.csv`, the replacement archive for
corrupted videos), small enough to test `rsp.prepare` end to end.

Three scenes (`SCENES`): `shapes`, textured shapes moving over a drifting textured background, so
every frame differs from its neighbours (an off-by-one read is visible) and crops contain structure
(the tests' videos); and `camouflage` (rsp.scenes), objects of the background's own colours and
textures under changing light, the pretraining videos of the smoke run and the CPU study, drawn
from the distribution of their generated benchmarks; and `natural` (rsp.natural), real photographs
in motion and real videos (docs/learning.md). Everything is a function of the seed.

    python -m rsp.synthetic dataset --root data/synth --videos 64 --height 96 --width 128 --frames 60
    python -m rsp.synthetic dataset --root data/camo --videos 48 --scene camouflage
    python -m rsp.synthetic dataset --root data/natural --videos 96 --scene natural
    python -m rsp.synthetic kinetics-raw --out data/k400_raw --videos 200
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("python -m rsp.synthetic", "finished videos are kept; run it again to continue")

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from core.atomicio import atomic_path, atomic_write_json, writable
from rsp.decoders import DECODERS
from rsp.filepool import run_isolated
from rsp.kinetics import x264_tune
from rsp.natural import listed_source_problems, natural_frames, natural_sources
from rsp.probe import VideoProbe, probe_video
from rsp.scenes import camouflage_frames
from rsp.video import OUR_LABELS, LabelEntry, read_labels, write_labels

log = logging.getLogger(__name__)

RAW_CLASS_NAMES = ("abseiling", "playing guitar", "passing American football (in game)", "riding a bike")


# --- frames and files -----------------------------------------------------------------------------


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


# name -> frames(rng, num_frames, height, width)
SCENES = {"shapes": synthetic_frames, "camouflage": camouflage_frames, "natural": natural_frames}
# (height, width, frames) of a scene's videos when none is given: camouflage videos are seen at
# 64 px by the smoke run and the study, close to the scale of their 96-px generated benchmarks.
SCENE_SIZES = {"shapes": (96, 128, 60), "camouflage": (72, 96, 40), "natural": (72, 96, 40)}
GENERATED_FILE = ".generated.json"  # beside the labels file: what generate_dataset made (scene, sizes, seed)


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


# --- prepared datasets ------------------------------------------------------------------------------


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
    if spec.scene == "natural":
        frames = natural_frames(rng, spec.num_frames, spec.height, spec.width, spec.sources)
    else:
        frames = SCENES[spec.scene](rng, spec.num_frames, spec.height, spec.width)
    write_video(spec.path, frames, spec.fps, spec.keyint)


def _write_all(specs: list[VideoSpec], jobs: int) -> None:
    if jobs <= 1:
        for spec in specs:
            _write_spec(spec)
        return
    for spec, _, error in run_isolated(_write_spec, specs, jobs, "generate"):  # spawned: see rsp/filepool.py
        if error:
            raise RuntimeError(f"generating {spec.path} failed: {error}")


def _probe_all(paths: list[Path], jobs: int) -> list[VideoProbe]:
    if jobs <= 1:
        return [probe_video(p) for p in paths]
    probes = {}
    for path, probe, error in run_isolated(probe_video, paths, jobs, "probe"):  # spawned: see rsp/filepool.py
        probes[path] = probe or VideoProbe(reason=error)
    return [probes[p] for p in paths]


def generate_dataset(
    root: str | Path,
    num_videos: int,
    num_classes: int = 4,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    fps: int = 30,
    keyint: int = 30,
    seed: int = 0,
    jobs: int = 1,
    scene: str = "shapes",
    sources: Sequence[str] = (),
) -> Path:
    """Write `num_videos` videos of `scene` in `num_classes` class folders under `root/train` and
    our labels file, with the frame counts and seek modes `rsp.probe` finds (as `rsp.prepare labels`
    would); videos that already exist are kept. Sizes default to the scene's (SCENE_SIZES); `sources`
    are the natural scene's extra photographs and videos (rsp.natural). Returns the labels file."""
    if scene not in SCENES:
        raise ValueError(f"scene {scene!r} is not a generated scene; valid: {', '.join(SCENES)}")
    default_height, default_width, default_frames = SCENE_SIZES[scene]
    height, width, num_frames = height or default_height, width or default_width, num_frames or default_frames
    if num_videos < 1 or num_classes < 1:
        raise ValueError(f"num_videos ({num_videos}) and num_classes ({num_classes}) must be >= 1")
    if num_frames < 2 or fps < 1 or keyint < 1:  # one frame holds no frame pair
        raise ValueError(f"frames ({num_frames}) must be >= 2, fps ({fps}) and keyint ({keyint}) >= 1")
    if height % 2 or width % 2:
        raise ValueError(f"height ({height}) and width ({width}) must be even (h264 with 4:2:0 chroma); choose even sizes")
    if scene == "natural" and (refused := listed_source_problems(sources)):
        raise ValueError("; ".join(refused))
    root = Path(root)
    specs = [
        VideoSpec(
            root / f"train/class_{i % num_classes:03d}/video_{i:06d}.mp4",
            (seed, i),
            num_frames,
            height,
            width,
            fps,
            keyint,
            scene,
            tuple(sources),
        )
        for i in range(num_videos)
    ]
    _write_all(specs, jobs)
    entries = []
    for i, (spec, probe) in enumerate(zip(specs, _probe_all([s.path for s in specs], jobs), strict=True)):
        if probe.reason:
            raise RuntimeError(f"generated video {spec.path} cannot be decoded: {probe.reason}")
        modes = [probe.seek.get(d, "") for d in DECODERS]
        rel = spec.path.relative_to(root).as_posix()
        # the size (identical content on every rank that writes it), never the time: a file replaced
        # later (truncated, re-encoded) is caught at submit time and by the loader (rsp.video.changed_since_labelling)
        size = spec.path.stat().st_size
        entries.append(LabelEntry(rel, i % num_classes, f"class_{i % num_classes:03d}", probe.num_frames, *modes, size))
    labels = root / OUR_LABELS
    write_labels(labels, entries)
    made = {"scene": scene, "videos": num_videos, "height": height, "width": width, "frames": num_frames, "seed": seed}
    if scene == "natural":  # what the clips were drawn from, and the sources skipped (they failed to decode)
        found = natural_sources(sources)
        made.update(sources=list(found.names), skipped_sources=list(found.skipped))
    atomic_write_json(root / GENERATED_FILE, made)
    return labels


def existing_dataset(root: Path) -> dict:
    """What a dataset already at `root` is ({} when there is none): generate_dataset's record of
    it, or {"videos": N} for any other labels file."""
    if (root / GENERATED_FILE).is_file():
        return json.loads((root / GENERATED_FILE).read_text())
    if (root / OUR_LABELS).is_file():
        return {"videos": len(read_labels(root / OUR_LABELS)), "scene": "not generated"}
    return {}


def generated_scene(root: str | Path) -> str | None:
    """The scene of the dataset generate_dataset wrote at `root`; None when it wrote none there."""
    made = Path(root) / GENERATED_FILE
    return json.loads(made.read_text())["scene"] if made.is_file() else None


def ensure_synthetic_dataset(root: str | Path, num_videos: int, **kwargs) -> Path:
    """Generate a dataset at `root` (see `generate_dataset`) unless it has a labels file; returns it.

    Safe to call from every rank at once: files are written atomically with identical content."""
    labels = Path(root) / OUR_LABELS
    if labels.is_file():
        scene = kwargs.get("scene", "shapes")
        if (found_scene := generated_scene(root)) not in (None, scene):
            raise ValueError(
                f"{root} holds generated {found_scene} videos, not the {scene} videos asked for "
                f"(data.synthetic_scene={scene}); point data.root at another directory, or delete {root} to regenerate"
            )
        found = len(read_labels(labels))
        if found != num_videos:
            log.warning("%s lists %d videos, not the %d requested; using it as it is", labels, found, num_videos)
        return labels
    log.info("generating %d synthetic videos under %s", num_videos, root)
    return generate_dataset(root, num_videos, **kwargs)


# --- raw Kinetics mirror ------------------------------------------------------------------------------


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
        _write_all(specs, jobs)
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


# --- command line -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsp.synthetic", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ds = sub.add_parser("dataset", help="a prepared Kinetics-layout dataset with labels.csv")
    ds.add_argument("--root", required=True)
    ds.add_argument("--videos", type=int, required=True)
    ds.add_argument("--classes", type=int, default=4)
    ds.add_argument("--scene", choices=sorted(SCENES), default="shapes")
    ds.add_argument("--height", type=int, default=None, help="default: the scene's (SCENE_SIZES)")
    ds.add_argument("--width", type=int, default=None)
    ds.add_argument("--frames", type=int, default=None)
    ds.add_argument("--fps", type=int, default=30)
    ds.add_argument("--keyint", type=int, default=30, help="frames between keyframes")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--jobs", type=int, default=1)
    ds.add_argument(
        "--sources", nargs="*", default=[], help="--scene natural: more photographs / videos (files or folders) to draw from"
    )
    raw = sub.add_parser("kinetics-raw", help="a small mirror of the Kinetics-400 download server")
    raw.add_argument("--out", required=True)
    raw.add_argument("--videos", type=int, required=True)
    raw.add_argument("--parts", type=int, default=2)
    raw.add_argument("--frames", type=int, default=24)
    raw.add_argument("--seed", type=int, default=0)
    raw.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    target = Path(args.root if args.command == "dataset" else args.out)
    if reason := writable(target):
        parser.error(f"{target} cannot be written ({reason}); choose another folder")
    try:
        generate(args)
    except (OSError, ValueError) as err:  # a bad argument, an unwritable root, a refused source: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def generate(args: argparse.Namespace) -> None:
    if args.videos < 1:
        raise ValueError(f"--videos ({args.videos}) must be >= 1")
    if args.command == "dataset":
        made = existing_dataset(Path(args.root))
        if made and (made.get("videos") != args.videos or made.get("scene") != args.scene):
            raise ValueError(
                f"{args.root} already holds a dataset ({made.get('videos')} {made.get('scene')} videos); writing "
                f"{args.videos} {args.scene} videos would replace its labels file: choose an empty --root, or delete it first"
            )
        labels = generate_dataset(
            args.root,
            args.videos,
            args.classes,
            args.height,
            args.width,
            args.frames,
            args.fps,
            args.keyint,
            args.seed,
            args.jobs,
            args.scene,
            args.sources,
        )
        print(f"wrote {args.videos} {args.scene} videos and {labels}")
    else:
        made = generate_kinetics_raw(args.out, args.videos, args.parts, num_frames=args.frames, seed=args.seed, jobs=args.jobs)
        print(
            f"wrote {args.out}: {len(made.good)} good, {len(made.replaced)} replaced, "
            f"{len(made.broken)} broken, {len(made.unavailable)} unavailable videos"
        )


if __name__ == "__main__":
    raise SystemExit(main())
