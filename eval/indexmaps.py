"""Index maps: palette PNGs on disk, one-hot label grids, and soft labels back to an index map.

An index map is a (H, W) uint8 array whose value is an object id (DAVIS, 0 = background) or a
class id (VIP). DAVIS stores them as indexed ("P" mode) PNGs; predictions are written the same
way, since the official tools read the index, never the colour (docs/evaluation.md#label-propagation).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

INDEX_MODES = ("P", "L")  # palette PNGs, or 8-bit grey PNGs that hold the index directly
VOID = 255  # DAVIS marks uncertain pixels 255; the official tool counts them as background


def davis_palette() -> list[int]:
    """The 256-colour palette of the DAVIS / PASCAL VOC annotations (768 ints): colour i spreads
    the bits of i over the high bits of R, G and B (1 -> dark red, 2 -> dark green, ...)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


def read_index_png(path: Path) -> np.ndarray:
    """(H, W) uint8 index map of an indexed or grey PNG; RGB files raise (their colours are not ids)."""
    with _open_index_png(path) as image:
        return np.array(image, dtype=np.uint8)


def read_index_png_and_palette(path: Path) -> tuple[np.ndarray, list[int]]:
    """read_index_png and read_palette of one file, opening it once."""
    with _open_index_png(path) as image:
        return np.array(image, dtype=np.uint8), _palette_of(image)


def image_hw(path: Path) -> tuple[int, int]:
    """(H, W) of an image (a frame or an index map) from its header, without decoding it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"frame {path} is missing; re-extract the dataset's frames")
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as err:  # PIL: not an image
        raise ValueError(f"{path} cannot be read as an image ({err}); re-extract the dataset's frames") from err


def read_palette(path: Path) -> list[int]:
    """The palette of an indexed PNG (the DAVIS palette when the file has none)."""
    with Image.open(path) as image:
        return _palette_of(image)


def _palette_of(image: Image.Image) -> list[int]:
    palette = image.getpalette() if image.mode == "P" else None
    return palette if palette else davis_palette()


@contextmanager
def _open_index_png(path: Path) -> Iterator[Image.Image]:
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"index map {path} is missing; every scored frame needs one") from None
    except OSError as err:  # PIL: not an image at all
        raise ValueError(f"index map {path} cannot be read as a PNG ({err}); restore the file from the dataset") from err
    with image:
        if image.mode not in INDEX_MODES:
            raise ValueError(
                f"{path} is a {image.mode} image, not an indexed (P) or grey (L) PNG: its pixel values "
                "must be object/class ids. Save index maps with Image.fromarray(ids, mode='P') and a palette."
            )
        try:
            yield image
        except OSError as err:  # PIL: truncated or damaged pixel data, found while decoding
            raise ValueError(f"index map {path} is damaged ({err}); restore the file from the dataset") from err


def id_counts(index_map: np.ndarray) -> dict[int, int]:
    """Pixels per id present in `index_map`: {0: 15000, 1: 230, 255: 12}."""
    counts = np.bincount(index_map.ravel(), minlength=1)
    return {int(i): int(counts[i]) for i in np.flatnonzero(counts)}


def describe_ids(counts: dict[int, int], ids) -> str:
    """ "id 200 (1 pixel), id 201 (3 pixels)" for `ids` of `counts` (id_counts)."""
    return ", ".join(f"id {i} ({counts[i]} pixel{'' if counts[i] == 1 else 's'})" for i in sorted(ids))


def void_to_background(index_map: np.ndarray) -> np.ndarray:
    """Sets DAVIS's void id (uncertain pixels) to background 0 in place, as the official tool
    counts them; returns `index_map`."""
    index_map[index_map == VOID] = 0
    return index_map


def write_index_png(path: Path, index_map: np.ndarray, palette: list[int]) -> None:
    image = Image.fromarray(np.ascontiguousarray(index_map, dtype=np.uint8), mode="P")
    image.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def one_hot_grid(index_map: np.ndarray, grid: tuple[int, int], num_labels: int | None = None):
    """First-frame labels (docs/evaluation.md#davis-protocol): the index map resized to the (h, w) feature grid with NEAREST
    (PIL, straight from the original size), one-hot with C = max id + 1. Returns (h*w, C) float32."""
    import torch  # torch: the J&F worker processes and the task registry import this module without it

    h, w = grid
    small = np.array(Image.fromarray(index_map).resize((w, h), Image.NEAREST), dtype=np.int64)
    num_labels = int(index_map.max()) + 1 if num_labels is None else num_labels
    return torch.nn.functional.one_hot(torch.from_numpy(small).flatten(), num_labels).float()


def soft_to_index_map(soft, patch_size: int, out_size: tuple[int, int]) -> np.ndarray:
    """Soft labels (C, h, w) at grid resolution -> (H, W) uint8 index map (docs/evaluation.md#label-propagation): bilinear
    upsampling by the patch size (align_corners False), per-channel min-max rescale of channels
    whose max is > 0, argmax over channels, NEAREST resize to the original frame size.

    The rescale is exactly the reference's (x - min) / max(x - min); a constant positive channel
    becomes NaN there and wins the argmax, as it does in the reference (torch treats NaN as max)."""
    # torch: the J&F worker processes and the task registry import this module without it
    import torch
    import torch.nn.functional as F

    up = F.interpolate(soft[None], scale_factor=patch_size, mode="bilinear", align_corners=False, recompute_scale_factor=False)[
        0
    ]  # (C, h*p, w*p)
    low, high = up.amin(dim=(1, 2)), up.amax(dim=(1, 2))  # (C,)
    span = high - low  # = max(x - min) in fp32, as the reference computes it
    for c in (high > 0).nonzero()[:, 0].tolist():
        up[c].sub_(low[c]).div_(span[c])
    index = up.argmax(dim=0).to(torch.uint8).cpu().numpy()
    H, W = out_size
    if index.shape != (H, W):
        index = np.array(Image.fromarray(index).resize((W, H), Image.NEAREST))
    return index
