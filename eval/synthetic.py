"""Drawing generated benchmark frames (docs/evaluation.md#generated-benchmarks): each task writes its own
generated set in its official layout with these (`write_generated` in eval/davis.py, eval/jhmdb.py,
eval/vip.py).

Every generated set is a camouflage world (rsp.scenes, the same distribution as the generated
pretraining videos): objects, figures and body parts cut from textures of the background's own
palette, moving fast, under a light that changes from frame to frame (gain, a drifting shadow
field, blur, sensor noise). Colour does not tell a region from the background, so a randomly
initialized encoder scores low and a score above it has to come from following patches. Task
modules import this module only when they write a set (scipy.ndimage costs ~0.3 s to import, and
listing the tasks must stay cheap).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rsp.scenes import Backdrop, Lighting, SceneStyle, palette, palette_texture, to_uint8

JPEG_QUALITY = 95
STYLE = SceneStyle()  # the statistics of every generated set (and of the camouflage pretraining videos)


@dataclass
class Stage:
    """The world of one generated video: its palette, a drifting backdrop and its changing light."""

    colours: np.ndarray  # (palette_size, 3)
    backdrop: Backdrop
    lighting: Lighting
    style: SceneStyle

    @classmethod
    def draw(cls, rng: np.random.Generator, height: int, width: int, style: SceneStyle = STYLE) -> Stage:
        colours = palette(rng, style)
        return cls(colours, Backdrop.draw(rng, height, width, colours, style), Lighting.draw(rng, height, width), style)

    def texture(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """(height, width, 3) float: a texture of this world's palette (for a figure or a part)."""
        return palette_texture(rng, height, width, self.colours, self.style)

    def background(self, height: int, width: int, t: int) -> np.ndarray:
        """(height, width, 3) float: the backdrop as seen at frame t (paint the regions over it)."""
        return self.backdrop.view(height, width, t)

    def lit(self, frame: np.ndarray, rng: np.random.Generator, t: int) -> np.ndarray:
        """The painted frame t under this world's light, as uint8."""
        return to_uint8(self.lighting.apply(frame, rng, self.style, t))


def save_jpeg(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path, quality=JPEG_QUALITY)
