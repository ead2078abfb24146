"""The real-photo DAVIS-format benchmark (docs/learning.md#the-real-photo-benchmark): task
`photo_davis`, read, run and scored exactly like DAVIS-2017 (eval/davis.py), on a set generated
from the evaluation-only photographs.

Each sequence is a real photograph seen through a drifting camera window, with 2-3 textured
cut-outs of the same photograph moving fast (3-6% of the width per frame), zooming and occluding
each other, under a changing light (gain, a drifting shadow field, blur, sensor noise), with exact
masks: rsp.natural.photo_scene, the design of the natural pretraining clips, drawn from pictures
no pretraining clip may use (rsp.photos.held_out_problem). Because a cut-out has its backdrop's
colours and textures, colour alone does not find it, and a randomly initialized encoder scores
low. The design was fixed, with its baselines, before any trained checkpoint was evaluated on it.

    python -m eval.prepare photo_davis --root data/photo_davis
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from eval import davis
from eval.indexmaps import davis_palette, write_index_png
from eval.task import EvalTask
from rsp.photos import OPENCV_DOC_DATA

# opencv-doc's colour photographs of natural scenes and objects (its drawings, charts, text, logos,
# calibration boards and grey stereo pairs are left out). All evaluation-only.
BENCHMARK_PHOTOS = (
    "HappyFish.jpg",
    "aero1.jpg",
    "aero3.jpg",
    "aloeL.jpg",
    "apple.jpg",
    "baboon.jpg",
    "board.jpg",
    "building.jpg",
    "butterfly.jpg",
    "ela_original.jpg",
    "fruits.jpg",
    "graf1.png",
    "home.jpg",
    "left.jpg",
    "leuvenA.jpg",
    "messi5.jpg",
    "orange.jpg",
    "rubberwhale1.png",
    "smarties.png",
    "squirrel_cls.jpg",
    "starry_night.jpg",
    "stuff.jpg",
)


# How the set differs from the camouflage sets' style (eval.synthetic.STYLE): 2-3 cut-outs per sequence,
# moving 2-4% of the width per frame.
PHOTO_STYLE = dict(objects=(2, 3), speed=(0.02, 0.04), gain=0.1, shadow=0.2, blur=(0.0, 1.0), noise=4.0)
MIN_VISIBLE = 0.005  # of the frame: the least area of each cut-out in the first frame (visible_scene)


def benchmark_photos() -> list[Path]:
    """The benchmark's photographs; raises naming the missing file and the package that has it."""
    paths = [OPENCV_DOC_DATA / name for name in BENCHMARK_PHOTOS]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]} (and {len(missing) - 1} more) is missing: the real-photo benchmark is drawn from "
            "Debian opencv-doc's photographs; install them with apt-get install opencv-doc (./bootstrap.sh test does)"
        )
    return paths


def write_photo_davis(
    root: str | Path,
    n_sequences: int = 30,
    n_frames: int = 10,
    height: int = 96,
    width: int = 160,
    seed: int = 0,
    resolution: str = "480p",
) -> Path:
    """A DAVIS-2017 root of `n_sequences` real-photo sequences in ImageSets/2017/val.txt."""
    # scipy.ndimage and the photographs: only writing the set pays for them
    from eval.synthetic import STYLE, save_jpeg
    from rsp.natural import load_photo

    root = Path(root)
    photos = [load_photo(p) for p in benchmark_photos()]
    rng = np.random.default_rng(seed)
    names = [f"photo-{i:03d}" for i in range(n_sequences)]
    palette = davis_palette()
    style = replace(STYLE, **PHOTO_STYLE)
    for name in names:
        scene = visible_scene(rng, n_frames, height, width, photos, style)
        for t, (frame, labels) in enumerate(scene):
            save_jpeg(root / "JPEGImages" / resolution / name / f"{t:05d}.jpg", frame)
            write_index_png(root / "Annotations" / resolution / name / f"{t:05d}.png", labels, palette)
    listing = root / "ImageSets" / "2017" / "val.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{n}\n" for n in names))
    return root


def visible_scene(rng: np.random.Generator, n_frames: int, height: int, width: int, photos: list, style) -> list:
    """A drawn sequence whose first frame shows every cut-out (ids 1..K, each on >= MIN_VISIBLE of the
    frame): semi-supervised propagation starts from the first mask, so an object hidden there could
    never be found. Draws that fail are redrawn from the same generator (deterministic)."""
    from rsp.natural import photo_scene  # (see write_photo_davis)

    while True:
        scene = list(photo_scene(rng, n_frames, height, width, photos, style, same_photo=1.0))
        labels = np.stack([m for _, m in scene])
        objects = int(labels.max())
        first = np.bincount(labels[0].ravel(), minlength=objects + 1)[1:]
        if objects and (first >= MIN_VISIBLE * height * width).all():
            return scene


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="draw of the set (the benchmark is seed 0)")


def prepare(args: argparse.Namespace) -> list:
    TASK.ensure_generated(args.root) if args.seed == 0 else write_photo_davis(args.root, **TASK.smoke_sizes, seed=args.seed)
    return davis.read_davis(args.root, "val")


TASK = EvalTask(
    name="photo_davis",
    title="real-photo DAVIS-format set from opencv-doc's photographs (J&F)",
    metrics=davis.TASK.metrics,
    headline=davis.TASK.headline,
    best_by=davis.TASK.best_by,
    default_preset="rsp",
    default_frame_size=96,  # short side, as the generated sets are evaluated
    run=davis.run,
    protocol_fields=davis.protocol_fields,
    check_data=davis.check_davis,
    write_generated=write_photo_davis,
    smoke_sizes=dict(n_sequences=30, n_frames=10, height=96, width=160),
    add_prepare_arguments=add_prepare_arguments,
    prepare=prepare,
    generator="photos-2",  # photos-1 could hide a cut-out in a first frame
)
