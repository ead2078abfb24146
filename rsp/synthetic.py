"""Generated video datasets for tests, benchmarks and the smoke experiment.

`generate_dataset` writes a prepared Kinetics-layout dataset: `<root>/train/<class>/<video>.mp4`
(h264, written with PyAV) plus our `labels.csv`. `rsp.kinetics_raw` writes what the Kinetics
servers hold (train-list file, tar.gz parts, `annotations/train.csv`, the replacement archive for
corrupted videos), small enough to test `rsp.prepare` end to end.

Each video is drawn and encoded by rsp.generated_videos. Three scenes (`SCENES`): `shapes`, textured
shapes moving over a drifting textured background, so every frame differs from its neighbours (an
off-by-one read is visible) and crops contain structure (the tests' videos); and `camouflage`
(rsp.scenes), objects of the background's own colours and textures under changing light, the
pretraining videos of the smoke run and the CPU study, drawn from the distribution of their
generated benchmarks; and `natural` (rsp.natural), real photographs in motion and real videos
(docs/learning.md). Everything is a function of the seed.

    python -m rsp.synthetic dataset --root data/synth --videos 64 --height 96 --width 128 --frames 60
    python -m rsp.synthetic dataset --root data/camo --videos 48 --scene camouflage
    python -m rsp.synthetic dataset --root data/natural --videos 96 --scene natural
    python -m rsp.synthetic kinetics-raw --out data/k400_raw --videos 200
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

if __name__ == "__main__":  # before the heavy imports: a ctrl-C while they load is one line too
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("python -m rsp.synthetic", "finished videos are kept; run it again to continue")

from pathlib import Path

from core.atomicio import atomic_write_json, writable
from rsp.config import SYNTHETIC_SCENES
from rsp.decoders import DECODERS
from rsp.filepool import run_isolated
from rsp.generated_videos import VideoSpec, write_all
from rsp.probe import VideoProbe, probe_video
from rsp.video import OUR_LABELS, LabelEntry, read_labels, write_labels

log = logging.getLogger(__name__)

SCENES = SYNTHETIC_SCENES  # shapes (rsp.generated_videos), camouflage (rsp.scenes), natural (rsp.natural)
# (height, width, frames) of a scene's videos when none is given: camouflage videos are seen at
# 64 px by the smoke run and the study, close to the scale of their 96-px generated benchmarks.
SCENE_SIZES = {"shapes": (96, 128, 60), "camouflage": (72, 96, 40), "natural": (72, 96, 40)}
GENERATED_FILE = ".generated.json"  # beside the labels file: what generate_dataset made (scene, sizes, seed)


# --- prepared datasets ------------------------------------------------------------------------------


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
    if scene == "natural":
        from rsp.natural import listed_source_problems  # scipy and PIL only for natural scenes (scene_frames)

        if refused := listed_source_problems(sources):
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
    write_all(specs, jobs)
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
        from rsp.natural import natural_sources  # imported above already: the natural scene's

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
        from rsp.kinetics_raw import generate_kinetics_raw  # the mirror builds on this module

        made = generate_kinetics_raw(args.out, args.videos, args.parts, num_frames=args.frames, seed=args.seed, jobs=args.jobs)
        print(
            f"wrote {args.out}: {len(made.good)} good, {len(made.replaced)} replaced, "
            f"{len(made.broken)} broken, {len(made.unavailable)} unavailable videos"
        )


if __name__ == "__main__":
    raise SystemExit(main())
