"""JHMDB pose propagation and PCK (CRW/UVC protocol, docs/evaluation.md#jhmdb-protocol): the task, from reading the
dataset to its PCK, its generated set and its preparation. No reference code was released for ViTs;
the choices the protocol's sources leave open are ours and stated where they are made.

On-disk layout (official):
    <root>/splits/<class>_test_split<N>.txt              "<video>.avi 1|2" (2 = test)
    <root>/Rename_Images/<class>/<video>/00001.png ...   frames (320x240)
    <root>/joint_positions/<class>/<video>/joint_positions.mat   pos_img: 2 x 15 x T, 1-indexed
Joints are propagated as label maps (eval/keypoints.py) on frames resized to 320x320. Predictions go
to <out>/keypoints.json: video -> (frames 1.., 15, [x, y]) px.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from core.atomicio import atomic_write_json
from eval.archives import download, extract
from eval.config import EvalConfig
from eval.indexmaps import image_hw
from eval.splits import select_sequences
from eval.task import EvalTask, Evaluation, dataset_problems

NUM_JOINTS = 15
PCK_BOX_FACTOR = 0.6  # normalizer = 0.6 x diagonal of the GT joints' bounding box (docs/evaluation.md#jhmdb-protocol)
JHMDB_BASE_URL = "http://files.is.tue.mpg.de/jhmdb/"
JHMDB_ARCHIVES = ("Rename_Images.tar.gz", "joint_positions.zip", "splits.zip")
LAYOUT = ("Rename_Images", "joint_positions", "splits")  # top-level folders of a JHMDB root


@dataclass(frozen=True)
class JhmdbVideo:
    name: str  # "<class>/<video>"
    frames: tuple[Path, ...]
    joints_file: Path


def read_jhmdb(root: str | Path, split: int = 1, sequences: Sequence[str] = ()) -> list[JhmdbVideo]:
    """Test videos of split `split` (every splits/*_test_split<split>.txt line marked 2)."""
    return [_read_video(Path(root), name) for name in test_video_names(root, split, sequences)]


def test_video_names(root: str | Path, split: int, sequences: Sequence[str] = ()) -> list[str]:
    root = Path(root)
    split_files = sorted((root / "splits").glob(f"*_test_split{split}.txt"))
    if not split_files:
        raise FileNotFoundError(
            f"no {root / 'splits'}/*_test_split{split}.txt: {root} is not a JHMDB root "
            f"(prepare one with `python -m eval.prepare jhmdb --root {root}`)"
        )
    names = []
    for split_file in split_files:
        cls = split_file.name[: -len(f"_test_split{split}.txt")]
        for number, line in enumerate(split_file.read_text().splitlines(), start=1):
            parts = line.split()
            if parts and (len(parts) != 2 or parts[1] not in ("1", "2")):
                raise ValueError(
                    f"{split_file}, line {number}: expected '<video>.avi 1|2' (1 = train, 2 = test), got {line.strip()!r}; "
                    "restore the file from splits.zip (python -m eval.prepare jhmdb)"
                )
            if len(parts) == 2 and parts[1] == "2":
                names.append(f"{cls}/{Path(parts[0]).stem}")
    listing = f"the test videos (label 2) of {root / 'splits'}/*_test_split{split}.txt"
    return select_sequences(names, sequences, listing)


def _read_video(root: Path, name: str) -> JhmdbVideo:
    frames = tuple(sorted((root / "Rename_Images" / name).glob("*.png")))
    if not frames:
        raise FileNotFoundError(f"no frames (*.png) in {root / 'Rename_Images' / name}; extract Rename_Images.tar.gz")
    joints = root / "joint_positions" / name / "joint_positions.mat"
    if not joints.is_file():
        raise FileNotFoundError(f"{joints} is missing; extract joint_positions.zip into {root}")
    return JhmdbVideo(name, frames, joints)


def read_joints(video: JhmdbVideo) -> np.ndarray:
    """(T, 15, 2) x, y in pixels, 0-indexed (the file's are 1-indexed). Raises ValueError naming the
    file when it is not a readable .mat with a finite numeric pos_img of shape (2, 15, frames)."""
    from scipy.io import loadmat  # scipy.io takes ~0.5 s to import; listing the tasks must not pay for it

    fix = "restore it from joint_positions.zip (python -m eval.prepare jhmdb)"
    try:
        data = loadmat(video.joints_file)
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, OSError ... for what is not a .mat
        raise ValueError(f"{video.joints_file} cannot be read as a MATLAB .mat file ({err}); {fix}") from err
    if "pos_img" not in data:
        keys = ", ".join(k for k in data if not k.startswith("__")) or "none"
        raise ValueError(f"{video.joints_file} has no pos_img (the joints in image coordinates); its variables: {keys}; {fix}")
    pos = data["pos_img"]
    if not np.issubdtype(pos.dtype, np.number):
        raise ValueError(f"{video.joints_file}: pos_img holds {pos.dtype} values, not numbers; {fix}")
    if pos.ndim != 3 or pos.shape[:2] != (2, NUM_JOINTS):
        raise ValueError(f"{video.joints_file}: pos_img has shape {pos.shape}, expected (2, 15, frames); {fix}")
    if pos.shape[2] != len(video.frames):
        raise ValueError(
            f"{video.joints_file} annotates {pos.shape[2]} frames but {video.name} has {len(video.frames)} frames; "
            "re-extract the video's frames"
        )
    bad = np.argwhere(~np.isfinite(pos))
    if len(bad):
        where = ", ".join(f"frame {t + 1} joint {j + 1}" for _, j, t in bad[:3].tolist())
        raise ValueError(
            f"{video.joints_file}: pos_img has {len(bad)} NaN or infinite coordinate(s) ({where}); a joint without a "
            f"position cannot be propagated or scored: {fix}, or leave the video out (sequences=[...])"
        )
    return np.transpose(pos, (2, 1, 0)).astype(np.float64) - 1.0


def check_jhmdb(cfg: EvalConfig, full: bool) -> list[str]:
    """Every problem of the JHMDB root `cfg` reads, all at once: split files with test videos, each
    video's frames and joints file; `full` also reads every joints file (read_joints's rules) and
    every frame's header (one size per video)."""

    def problems_of(name: str) -> list[str]:
        video = _read_video(Path(cfg.data_root), name)
        if not full:
            return []
        read_joints(video)
        sizes = {image_hw(f) for f in video.frames}
        if len(sizes) > 1:
            return [f"frames of {name} have different sizes {sorted(sizes)}; re-extract Rename_Images.tar.gz"]
        return []

    return dataset_problems(lambda: test_video_names(cfg.data_root, cfg.jhmdb_split, cfg.sequences), problems_of)


def pck(pred: np.ndarray, gt: np.ndarray, alphas: Sequence[float] = (0.1, 0.2)) -> dict[str, float]:
    """pred, gt (M, 15, 2) over all scored frames (k > 0). A joint is correct when its distance
    divided by 0.6 x the diagonal of the frame's GT joint box is <= alpha; PCK per joint, then the
    mean over joints."""
    extent = gt.max(axis=1) - gt.min(axis=1)  # (M, 2)
    normalizer = PCK_BOX_FACTOR * np.sqrt((extent**2).sum(axis=1))  # (M,)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.linalg.norm(pred - gt, axis=2) / normalizer[:, None]  # (M, 15)
    return {f"PCK@{a}": float(np.mean((ratio <= a).mean(axis=0))) for a in alphas}


def run(e: Evaluation) -> dict[str, float]:
    """Propagate frame 0's joints through every test video; PCK@0.1 and @0.2 over all their frames."""
    # torch: imported when an evaluation runs, so that listing the tasks (status, aggregation) stays light
    from eval.keypoints import propagate_keypoints

    cfg = e.cfg
    preds, gts, per_video = [], [], {}
    for video in read_jhmdb(cfg.data_root, cfg.jhmdb_split, cfg.sequences):
        gt = read_joints(video)
        pred = propagate_keypoints(
            video.frames, gt[0], e.encoder, e.params, e.frame_size, e.device, cfg.pose_topk, cfg.pose_sigma, cfg.batch_frames
        )
        preds.append(pred)
        gts.append(gt[1:])
        per_video[video.name] = np.round(pred, 3).tolist()
    if not sum(len(p) for p in preds):
        raise ValueError("no frame after the first in any video; nothing to score")
    atomic_write_json(e.out_dir / "keypoints.json", per_video)  # video -> (frames 1.., 15, [x, y]) px
    return pck(np.concatenate(preds), np.concatenate(gts))


def protocol_fields(cfg: EvalConfig) -> dict[str, Any]:
    """JHMDB's own settings; its split is jhmdb_split (`split` does not apply)."""
    return {"pose_topk": cfg.pose_topk, "pose_sigma": cfg.pose_sigma, "jhmdb_split": cfg.jhmdb_split}


# --- generated set ------------------------------------------------------------------------------------

# JHMDB's 15 joints: neck, belly, face, r/l shoulder, r/l hip, r/l elbow, r/l knee, r/l wrist, r/l ankle,
# as offsets from the hips' centre in units of the figure's height.
JHMDB_SKELETON = np.array(
    [
        [0.0, -0.55],
        [0.0, -0.25],
        [0.0, -0.72],
        [-0.12, -0.5],
        [0.12, -0.5],
        [-0.08, 0.0],
        [0.08, 0.0],
        [-0.2, -0.3],
        [0.2, -0.3],
        [-0.1, 0.25],
        [0.1, 0.25],
        [-0.25, -0.1],
        [0.25, -0.1],
        [-0.1, 0.5],
        [0.1, 0.5],
    ]
)
JHMDB_LIMBS = [
    (2, 0),
    (0, 1),
    (1, 5),
    (1, 6),
    (0, 3),
    (0, 4),
    (3, 7),
    (4, 8),
    (7, 11),
    (8, 12),
    (5, 9),
    (6, 10),
    (9, 13),
    (10, 14),
]
SWINGING = {7: 0.06, 8: -0.06, 11: 0.1, 12: -0.1, 9: -0.05, 10: 0.05, 13: -0.09, 14: 0.09}  # joint -> amplitude


def jhmdb_joints(t: int, centre: np.ndarray, velocity: np.ndarray, scale: float, phase: float) -> np.ndarray:
    """(15, 2) x, y pixel positions (0-indexed) of the figure at frame t."""
    joints = JHMDB_SKELETON.copy()
    for j, amplitude in SWINGING.items():
        joints[j, 0] += amplitude * np.sin(0.5 * t + phase)
    return centre + velocity * t + joints * scale


def write_jhmdb(
    root: str | Path, n_videos: int = 2, n_frames: int = 10, height: int = 240, width: int = 320, seed: int = 0, split: int = 1
) -> Path:
    """A JHMDB root: Rename_Images/<cls>/<vid>/%05d.png, joint_positions/<cls>/<vid>/joint_positions.mat
    (pos_img 2 x 15 x T, 1-indexed) and splits/<cls>_test_split<split>.txt (2 = test). Each video is
    a walking stick figure cut from a texture of its background's palette (eval.synthetic), crossing
    the frame at 1-2% of its width per frame under a changing light."""
    # scipy.io and eval.synthetic (scipy.ndimage) take ~0.8 s to import; only writing a generated set needs them
    from scipy.io import savemat

    # (eval.synthetic: see above)
    from eval.synthetic import Stage

    root = Path(root)
    rng = np.random.default_rng(seed)
    cls = "walk"
    lines = []
    for v in range(n_videos):
        vid = f"synth_{v:03d}"
        stage = Stage.draw(rng, height, width)
        skin = stage.texture(rng, height, width)  # the figure's texture, carried along with it
        scale = rng.uniform(0.6, 0.8) * height
        centre = np.array([rng.uniform(0.35, 0.65) * width, 0.5 * height + 0.05 * scale])
        velocity = np.array([rng.choice([-1, 1]) * rng.uniform(0.01, 0.02) * width, 0.0])
        phase = rng.uniform(0, 2 * np.pi)
        positions = np.zeros((2, 15, n_frames))
        for t in range(n_frames):
            joints = jhmdb_joints(t, centre, velocity, scale, phase)
            positions[:, :, t] = joints.T + 1  # stored 1-indexed, as JHMDB does
            silhouette = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(silhouette)
            for a, b in JHMDB_LIMBS:
                draw.line([tuple(joints[a]), tuple(joints[b])], fill=255, width=max(3, int(scale / 12)))
            r = max(2, int(scale / 20))
            for x, y in joints:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
            inside = np.asarray(silhouette) > 0
            frame = stage.background(height, width, t)
            shift = np.round(velocity[::-1] * t).astype(int)  # (y, x) px the figure has travelled
            frame[inside] = np.roll(skin, tuple(shift), axis=(0, 1))[inside]
            path = root / "Rename_Images" / cls / vid / f"{t + 1:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(stage.lit(frame, rng, t)).save(path)
        mat = root / "joint_positions" / cls / vid / "joint_positions.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(mat, {"pos_img": positions, "scale": np.ones(n_frames), "viewpoint": np.array(["E"] * n_frames)})
        lines.append(f"{vid}.avi 2\n")
    split_file = root / "splits" / f"{cls}_test_split{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(lines))
    return root


# --- preparation --------------------------------------------------------------------------------------


def prepare_jhmdb(root: Path, base_url: str = JHMDB_BASE_URL, downloads: Path | None = None) -> list:
    """Download and extract JHMDB's frames, joints and splits (three archives)."""
    for name in JHMDB_ARCHIVES:
        extract(download(base_url.rstrip("/") + "/" + name, (downloads or root.parent) / name), root, LAYOUT)
    return read_jhmdb(root, 1)


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--downloads", type=Path, help="folder for the archives (default: next to --root)")
    parser.add_argument("--base-url", default=JHMDB_BASE_URL, help="JHMDB file server")


def prepare(args: argparse.Namespace) -> list:
    return prepare_jhmdb(args.root, args.base_url, args.downloads)


TASK = EvalTask(
    name="jhmdb",
    title="JHMDB pose propagation (PCK)",
    metrics=("PCK@0.1", "PCK@0.2"),
    headline=("PCK@0.1", "PCK@0.2"),
    best_by="PCK@0.1",
    default_preset="siammae",
    default_frame_size=320,  # square side
    run=run,
    protocol_fields=protocol_fields,
    check_data=check_jhmdb,
    write_generated=write_jhmdb,
    smoke_sizes=dict(n_videos=4, n_frames=10, height=96, width=128),
    add_prepare_arguments=add_prepare_arguments,
    prepare=prepare,
)
