"""Drawing generated benchmark frames (docs/evaluation.md#generated-benchmarks): textures, moving sprites and exact label
maps. Each task writes its own generated set in its official layout with these (DAVIS objects, a
JHMDB stick figure, VIP body parts: `write_generated` in eval/davis.py, eval/jhmdb.py, eval/vip.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

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


def save_jpeg(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path, quality=JPEG_QUALITY)
