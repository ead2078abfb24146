"""Camouflage scenes: the generated world of the smoke run and the CPU study, shared by the
pretraining videos (rsp.synthetic) and the generated DAVIS / JHMDB / VIP sets (eval/), so both come
from one distribution (docs/data.md#generated-datasets).

Objects and background are drawn from the same statistics: one palette of a few colours per scene,
and textures made of random gratings mapped through it. No colour and no texture class tells an
object from the background; following a particular patch through the frames does. Between frames,
objects move fast (3-6% of the width per frame) and zoom, the background drifts, and the light
changes: a global gain, a drifting shadow field, blur and sensor noise. A randomly initialized ViT
matches patches by their raw colours, which the light changes from frame to frame, so it scores
low; features that ignore the light can follow the patches.

What the scenes deliberately leave out: per-frame colour casts (`cast`, default 0). A tiny RSP
model trained for minutes encodes mostly colour (its features have an effective rank of ~3) and
loses to random features when every frame gets its own cast; the knob is there to study that.

Everything is a function of the generator passed in: the same seed gives the same frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

BACKGROUND_SCALE = 2  # the background texture is this many frames wide and high: room to drift


@dataclass(frozen=True)
class SceneStyle:
    """The statistics of a camouflage scene. Lengths are fractions of the frame unless a unit is given."""

    palette_size: int = 4  # colours per scene, shared by the background and every object
    gratings: int = 2  # random gratings summed into one texture
    frequency: tuple[float, float] = (0.35, 0.9)  # radians per px of each grating (periods of 7-18 px)
    objects: tuple[int, int] = (2, 3)  # objects per scene, inclusive range
    object_height: tuple[float, float] = (0.28, 0.45)  # of the frame height; width = height x U[0.7, 1.4]
    speed: tuple[float, float] = (0.03, 0.06)  # of the frame width per frame
    zoom: float = 0.03  # largest |log scale change| per frame (objects stay within 0.7-1.4x)
    pan: float = 0.01  # background drift, of the frame width per frame
    gain: float = 0.2  # std of the log of a per-frame global brightness factor
    shadow: float = 0.35  # depth of a smooth illumination field drifting over the frame
    blur: tuple[float, float] = (0.0, 1.5)  # px, Gaussian sigma drawn per frame
    noise: float = 6.0  # std of per-pixel sensor noise, in 8-bit levels
    cast: float = 0.0  # std of a per-frame colour offset per channel, in 8-bit levels (see module doc)

    def problems(self) -> list[str]:
        out = []
        if self.palette_size < 2:
            out.append(f"palette_size ({self.palette_size}) must be >= 2 colours")
        if self.gratings < 1:
            out.append(f"gratings ({self.gratings}) must be >= 1")
        if not 1 <= self.objects[0] <= self.objects[1]:
            out.append(f"objects ({self.objects}) must be an inclusive range with 1 <= low <= high")
        for name in ("zoom", "pan", "gain", "shadow", "noise", "cast"):
            if getattr(self, name) < 0:
                out.append(f"{name} ({getattr(self, name)}) must be >= 0")
        return out


def palette(rng: np.random.Generator, style: SceneStyle) -> np.ndarray:
    """(palette_size, 3) float RGB colours of one scene."""
    return rng.uniform(20, 235, (style.palette_size, 3))


def palette_texture(rng: np.random.Generator, h: int, w: int, colours: np.ndarray, style: SceneStyle) -> np.ndarray:
    """(h, w, 3) float texture: a sum of random gratings mapped piecewise linearly through the
    palette colours (in a random order), so every texture of a scene has the same colours."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wave = np.zeros((h, w), np.float32)
    for _ in range(style.gratings):
        theta = rng.uniform(0, np.pi)
        frequency = rng.uniform(*style.frequency)
        wave += np.sin(frequency * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 2 * np.pi))
    level = (wave / style.gratings + 1) / 2 * (len(colours) - 1)  # in [0, colours - 1]
    ordered = colours[rng.permutation(len(colours))]
    low = np.clip(np.floor(level).astype(int), 0, len(colours) - 2)
    frac = (level - low)[..., None]
    return ordered[low] * (1 - frac) + ordered[low + 1] * frac


@dataclass
class Lighting:
    """The changing light of one scene: a smooth illumination field drifting over the frame."""

    field: np.ndarray  # (2H, 2W) zero-mean, unit-std smooth field
    origin: np.ndarray  # (y, x) px
    velocity: np.ndarray  # (y, x) px per frame

    @classmethod
    def draw(cls, rng: np.random.Generator, height: int, width: int) -> Lighting:
        smooth = gaussian_filter(rng.normal(size=(2 * height, 2 * width)), 10)
        smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-8)
        velocity = rng.uniform(-1, 1, 2) * 0.04 * width
        return cls(smooth, np.array([rng.uniform(0, height), rng.uniform(0, width)]), velocity)

    def apply(self, frame: np.ndarray, rng: np.random.Generator, style: SceneStyle, t: int) -> np.ndarray:
        """`frame` (H, W, 3) float seen at frame t: shadow field, global gain, colour cast, blur, noise."""
        H, W = frame.shape[:2]
        cy, cx = (int(v) for v in (self.origin + self.velocity * t) % (H, W))
        light = 1 + style.shadow * np.clip(self.field[cy : cy + H, cx : cx + W], -2, 2) / 2
        frame = frame * light[..., None] * np.exp(rng.normal(0, style.gain))
        if style.cast:
            frame = frame + rng.normal(0, style.cast, 3)
        sigma = rng.uniform(*style.blur)
        if sigma > 0.05:
            frame = gaussian_filter(frame, (sigma, sigma, 0))
        return frame + rng.normal(0, style.noise, frame.shape)


def to_uint8(frame: np.ndarray) -> np.ndarray:
    return np.clip(frame, 0, 255).astype(np.uint8)


@dataclass
class Backdrop:
    """A background texture larger than the frame, seen through a window that drifts."""

    texture: np.ndarray  # (BACKGROUND_SCALE * H, BACKGROUND_SCALE * W, 3)
    origin: np.ndarray  # (y, x) px of the window at frame 0
    velocity: np.ndarray  # (y, x) px per frame

    @classmethod
    def draw(cls, rng: np.random.Generator, height: int, width: int, colours: np.ndarray, style: SceneStyle) -> Backdrop:
        texture = palette_texture(rng, BACKGROUND_SCALE * height, BACKGROUND_SCALE * width, colours, style)
        velocity = rng.uniform(-1, 1, 2) * style.pan * width
        origin = np.array([rng.uniform(0, height), rng.uniform(0, width)]) * (BACKGROUND_SCALE - 1)
        return cls(texture, origin, velocity)

    def view(self, height: int, width: int, t: int) -> np.ndarray:
        span = np.array(self.texture.shape[:2]) - (height, width)
        y, x = np.clip(self.origin + self.velocity * t, 0, span).astype(int)
        return self.texture[y : y + height, x : x + width].copy()


@dataclass
class SceneObject:
    """An elliptic object cut from a texture twice its size (room to zoom in), moving, bouncing
    off the frame's borders, and zooming between 0.7x and 1.4x."""

    texture: np.ndarray
    height: float  # px at scale 1
    width: float
    y: float  # centre, px
    x: float
    vy: float  # px per frame
    vx: float
    scale: float
    log_zoom: float  # per frame
    label: int

    def paint(self, frame: np.ndarray, labels: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> None:
        dy = (yy - self.y) / (self.height * self.scale / 2)
        dx = (xx - self.x) / (self.width * self.scale / 2)
        inside = dy**2 + dx**2 <= 1
        ty = self.texture.shape[0] / 2 + (yy[inside] - self.y) / self.scale
        tx = self.texture.shape[1] / 2 + (xx[inside] - self.x) / self.scale
        for c in range(3):
            frame[..., c][inside] = map_coordinates(self.texture[..., c], [ty, tx], order=1, mode="reflect")
        labels[inside] = self.label

    def step(self, height: int, width: int) -> None:
        self.y, self.x = self.y + self.vy, self.x + self.vx
        self.scale *= np.exp(self.log_zoom)
        if not 0.05 * height <= self.y <= 0.95 * height:
            self.vy = -self.vy
        if not 0.05 * width <= self.x <= 0.95 * width:
            self.vx = -self.vx
        if not 0.7 <= self.scale <= 1.4:
            self.log_zoom = -self.log_zoom


def draw_objects(
    rng: np.random.Generator, height: int, width: int, style: SceneStyle, texture_of: Callable[[int, int], np.ndarray]
) -> list[SceneObject]:
    """The scene's moving objects: sizes, places and motions drawn from `rng`, each textured by
    `texture_of(texture_height, texture_width)` (drawing from the same `rng`, at the same point)."""
    objects = []
    for k in range(int(rng.integers(style.objects[0], style.objects[1] + 1))):
        h = int(rng.uniform(*style.object_height) * height)
        w = int(h * rng.uniform(0.7, 1.4))
        texture = texture_of(2 * h, 2 * w)
        speed, angle = rng.uniform(*style.speed) * width, rng.uniform(0, 2 * np.pi)
        objects.append(
            SceneObject(
                texture=texture,
                height=h,
                width=w,
                y=rng.uniform(0.1, 0.9) * height,
                x=rng.uniform(0.15, 0.85) * width,
                vy=0.6 * speed * np.sin(angle),  # mostly sideways, as in most videos
                vx=speed * np.cos(angle),
                scale=1.0,
                log_zoom=rng.uniform(-style.zoom, style.zoom),
                label=k + 1,
            )
        )
    return objects


def camouflage_scene(
    rng: np.random.Generator, num_frames: int, height: int, width: int, style: SceneStyle = SceneStyle()
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame (H, W, 3) uint8, labels (H, W) uint8) per frame: object k has label k (1, 2, ...)
    and is painted over the objects before it; 0 is the background."""
    problems = style.problems()
    if problems:
        raise ValueError("invalid scene style: " + "; ".join(problems))
    colours = palette(rng, style)
    backdrop = Backdrop.draw(rng, height, width, colours, style)
    objects = draw_objects(rng, height, width, style, lambda th, tw: palette_texture(rng, th, tw, colours, style))
    yield from film(rng, backdrop, objects, num_frames, height, width, style)


def film(
    rng: np.random.Generator,
    backdrop: Backdrop,
    objects: list[SceneObject],
    num_frames: int,
    height: int,
    width: int,
    style: SceneStyle,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The frames of a drawn scene under a light drawn next from `rng`: (frame (H, W, 3) uint8,
    labels (H, W) uint8), objects painted in order over the backdrop (label 0)."""
    lighting = Lighting.draw(rng, height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for t in range(num_frames):
        frame = backdrop.view(height, width, t)
        labels = np.zeros((height, width), np.uint8)
        for obj in objects:
            obj.paint(frame, labels, yy, xx)
            obj.step(height, width)
        yield to_uint8(lighting.apply(frame, rng, style, t)), labels


def camouflage_frames(
    rng: np.random.Generator, num_frames: int, height: int, width: int, style: SceneStyle = SceneStyle()
) -> Iterator[np.ndarray]:
    """The frames of `camouflage_scene` alone (pretraining videos)."""
    for frame, _ in camouflage_scene(rng, num_frames, height, width, style):
        yield frame
