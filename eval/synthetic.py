"""Generated benchmarks in the official on-disk layouts (docs/evaluation.md#generated-benchmarks), for tests and smoke runs.

- DAVIS: textured objects moving over a textured background, crossing each other (occlusion),
  with exact masks (the painter's algorithm gives each pixel the id of the topmost object).
- JHMDB: a textured stick figure whose 15 joints move (walk and sway), with exact joint positions
  stored 1-indexed in joint_positions.mat like the originals.
- VIP: a person made of body-part regions labelled with VIP's 20 classes, moving, annotated every
  `annotate_every` frames.
Sizes are parameters; a few sequences of ~10 frames at ~96x160 take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.io import savemat

from eval.indexmaps import davis_palette, write_index_png

JPEG_QUALITY = 95


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: a random base colour, smooth blobs and fine grain, so patches are distinctive."""
    coarse = rng.uniform(0, 255, (max(2, h // 12), max(2, w // 12), 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float32)
    base = rng.uniform(30, 225, 3)
    grain = rng.normal(0, 12, (h, w, 1))
    return np.clip(0.5 * smooth + 0.5 * base + grain, 0, 255).astype(np.uint8)


@dataclass
class Sprite:
    """A textured shape moving at constant velocity, bouncing off the frame's borders."""

    pixels: np.ndarray  # (h, w, 3) uint8
    shape: np.ndarray  # (h, w) bool
    label: int
    y: float
    x: float
    vy: float
    vx: float

    def step(self, H: int, W: int) -> None:
        h, w = self.shape.shape
        self.y, self.x = self.y + self.vy, self.x + self.vx
        if not -h / 3 <= self.y <= H - 2 * h / 3:
            self.vy = -self.vy
        if not -w / 3 <= self.x <= W - 2 * w / 3:
            self.vx = -self.vx


def ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1.0


def render(background: np.ndarray, sprites: list[Sprite]) -> tuple[np.ndarray, np.ndarray]:
    """(frame (H, W, 3), labels (H, W)); later sprites are drawn on top of earlier ones."""
    frame, labels = background.copy(), np.zeros(background.shape[:2], dtype=np.uint8)
    H, W = labels.shape
    for s in sprites:
        h, w = s.shape.shape
        y0, x0 = int(round(s.y)), int(round(s.x))
        ys, xs = slice(max(0, y0), min(H, y0 + h)), slice(max(0, x0), min(W, x0 + w))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        local = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        inside = s.shape[local]
        frame[ys, xs][inside] = s.pixels[local][inside]
        labels[ys, xs][inside] = s.label
    return frame, labels


def _save_jpeg(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path, quality=JPEG_QUALITY)


# --- DAVIS --------------------------------------------------------------------------------------------


def davis_sprites(rng: np.random.Generator, H: int, W: int, n_objects: int) -> list[Sprite]:
    """Object 1 drifts slowly near the centre; the others start at the sides and cross it."""
    sprites = []
    for k in range(n_objects):
        h, w = (int(rng.uniform(0.25, 0.45) * H), int(rng.uniform(0.15, 0.3) * W))
        shape = ellipse(h, w) if k % 2 == 0 else np.ones((h, w), dtype=bool)
        speed = 0.01 if k == 0 else rng.uniform(0.02, 0.04)
        side = -1 if k % 2 else 1
        x = W / 2 - w / 2 if k == 0 else (0.05 * W if side == 1 else 0.95 * W - w)
        y = rng.uniform(0.1, 0.9) * (H - h)
        sprites.append(Sprite(texture(rng, h, w), shape, k + 1, y, x, rng.uniform(-0.01, 0.01) * H, side * speed * W))
    return sprites


def write_davis(
    root: str | Path,
    n_sequences: int = 3,
    n_frames: int = 10,
    height: int = 96,
    width: int = 160,
    objects: tuple[int, int] = (2, 3),
    seed: int = 0,
    resolution: str = "480p",
) -> Path:
    """A DAVIS-2017 root with `n_sequences` generated sequences in ImageSets/2017/val.txt."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"synth-{i:03d}" for i in range(n_sequences)]
    palette = davis_palette()
    for name in names:
        background = texture(rng, height, width)
        sprites = davis_sprites(rng, height, width, int(rng.integers(objects[0], objects[1] + 1)))
        for t in range(n_frames):
            frame, labels = render(background, sprites)
            _save_jpeg(root / "JPEGImages" / resolution / name / f"{t:05d}.jpg", frame)
            write_index_png(root / "Annotations" / resolution / name / f"{t:05d}.png", labels, palette)
            for s in sprites:
                s.step(height, width)
    listing = root / "ImageSets" / "2017" / "val.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{n}\n" for n in names))
    return root


# --- JHMDB --------------------------------------------------------------------------------------------

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
    (pos_img 2 x 15 x T, 1-indexed) and splits/<cls>_test_split<split>.txt (2 = test)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    cls = "walk"
    lines = []
    for v in range(n_videos):
        vid = f"synth_{v:03d}"
        background = texture(rng, height, width)
        colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(15)]
        scale = rng.uniform(0.6, 0.8) * height
        centre = np.array([rng.uniform(0.35, 0.65) * width, 0.5 * height + 0.05 * scale])
        velocity = np.array([rng.uniform(-0.01, 0.01) * width, 0.0])
        phase = rng.uniform(0, 2 * np.pi)
        positions = np.zeros((2, 15, n_frames))
        for t in range(n_frames):
            joints = jhmdb_joints(t, centre, velocity, scale, phase)
            positions[:, :, t] = joints.T + 1  # stored 1-indexed, as JHMDB does
            image = Image.fromarray(background.copy())
            draw = ImageDraw.Draw(image)
            for a, b in JHMDB_LIMBS:
                draw.line([tuple(joints[a]), tuple(joints[b])], fill=colours[a], width=max(2, int(scale / 25)))
            r = max(2, int(scale / 30))
            for j, (x, y) in enumerate(joints):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colours[j])
            path = root / "Rename_Images" / cls / vid / f"{t + 1:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
        mat = root / "joint_positions" / cls / vid / "joint_positions.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(mat, {"pos_img": positions, "scale": np.ones(n_frames), "viewpoint": np.array(["E"] * n_frames)})
        lines.append(f"{vid}.avi 2\n")
    split_file = root / "splits" / f"{cls}_test_split{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(lines))
    return root


# --- VIP ----------------------------------------------------------------------------------------------

# (class id, top, left, height, width) of each part, in units of the person's height (VIP's classes:
# 2 hair, 13 face, 5 upper-clothes, 14/15 right/left arm, 9 pants, 18/19 right/left shoe).
VIP_PARTS = [
    (5, 0.2, 0.1, 0.35, 0.3),
    (14, 0.22, -0.02, 0.3, 0.1),
    (15, 0.22, 0.42, 0.3, 0.1),
    (9, 0.55, 0.12, 0.35, 0.26),
    (18, 0.9, 0.08, 0.08, 0.14),
    (19, 0.9, 0.28, 0.08, 0.14),
    (13, 0.05, 0.17, 0.15, 0.16),
    (2, 0.0, 0.15, 0.07, 0.2),
]


def vip_sprites(rng: np.random.Generator, H: int, W: int) -> list[Sprite]:
    size = rng.uniform(0.7, 0.9) * H
    top, left = rng.uniform(0.0, H - size), rng.uniform(0.1, 0.6) * W
    vx = rng.choice([-1, 1]) * rng.uniform(0.01, 0.02) * W
    sprites = []
    for label, dy, dx, h, w in VIP_PARTS:
        ph, pw = max(2, int(h * size)), max(2, int(w * size))
        shape = ellipse(ph, pw) if label in (13, 2) else np.ones((ph, pw), dtype=bool)
        sprites.append(Sprite(texture(rng, ph, pw), shape, label, top + dy * size, left + dx * size, 0.0, vx))
    return sprites


def write_vip(
    root: str | Path,
    n_videos: int = 2,
    n_frames: int = 11,
    height: int = 96,
    width: int = 160,
    annotate_every: int = 5,
    seed: int = 0,
    split: str = "val",
) -> Path:
    """A VIP_Fine-style root: Images/<vid>/*.jpg, Annotations/Category_ids/<vid>/*.png on every
    `annotate_every`-th frame (frame 0 included), lists/<split>_videos.txt."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"videos{v + 1}" for v in range(n_videos)]
    palette = davis_palette()
    for name in names:
        background = texture(rng, height, width)
        sprites = vip_sprites(rng, height, width)
        for t in range(n_frames):
            frame, labels = render(background, sprites)
            _save_jpeg(root / "Images" / name / f"{t:06d}.jpg", frame)
            if t % annotate_every == 0:
                write_index_png(root / "Annotations" / "Category_ids" / name / f"{t:06d}.png", labels, palette)
            for s in sprites:
                s.x += s.vx  # the parts move together: no per-part bouncing
    listing = root / "lists" / f"{split}_videos.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{n}\n" for n in names))
    return root
