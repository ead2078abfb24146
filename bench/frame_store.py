"""A per-video JPEG frame store, measured as a storage candidate by data_throughput.py (a bench
stand-in: the project does not train from it, docs/data.md#choosing-a-storage says why).

One file per video: the magic `RSPJPEG1`, the frame count (int64), count + 1 byte offsets (int64,
from the start of the data), then the JPEG frames back to back. Reading frame i is one seek and
one JPEG decode (libjpeg-turbo through torchvision.io.decode_jpeg); nothing else is decoded.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from rsp.data import FramePairDataset, sample_pair_indices
from rsp.decoders import VideoReadError
from rsp.video import LabelEntry, read_labels, write_labels

MAGIC = b"RSPJPEG1"
SUFFIX = ".jpgs"


def write_store(video: Path, store: Path, quality: int) -> int:
    """Every frame of `video` (PyAV's sequential decode) as JPEG at `quality`; returns the count."""
    blobs = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            buffer = io.BytesIO()
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(buffer, format="JPEG", quality=quality)
            blobs.append(buffer.getvalue())
    offsets = np.cumsum([0, *map(len, blobs)], dtype=np.int64)
    store.parent.mkdir(parents=True, exist_ok=True)
    with store.open("wb") as f:
        f.write(MAGIC + np.int64(len(blobs)).tobytes() + offsets.tobytes())
        f.write(b"".join(blobs))
    return len(blobs)


def read_frames(path: Path, indices: list[int]) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB frames `indices` of a store; VideoReadError when its index does not
    fit its data (a truncated or edited file)."""
    with path.open("rb") as f:
        head = f.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            raise VideoReadError(path, "not a JPEG frame store (bad magic)")
        count = int(np.frombuffer(head[8:], np.int64)[0])
        offsets = np.frombuffer(f.read(8 * (count + 1)), np.int64)
        base = 16 + 8 * (count + 1)
        if len(offsets) != count + 1 or path.stat().st_size != base + offsets[-1]:
            raise VideoReadError(path, "frame store index does not match its data (truncated or edited)")
        frames = []
        for i in indices:
            f.seek(base + int(offsets[i]))
            data = torch.frombuffer(bytearray(f.read(int(offsets[i + 1] - offsets[i]))), dtype=torch.uint8)
            frames.append(decode_jpeg(data).permute(1, 2, 0))
    return torch.stack(frames).numpy()


def build_stores(root: Path, labels: str, out: Path, quality: int) -> tuple[str, float]:
    """A store per video listed in root/labels, a labels file for them under `out`; the seconds per video."""
    entries, made = read_labels(root / labels), {}
    start = time.process_time()
    for entry in entries:
        if entry.path not in made:
            made[entry.path] = write_store(root / entry.path, out / Path(entry.path).with_suffix(SUFFIX), quality)
    seconds = (time.process_time() - start) / len(made)
    rows = [LabelEntry(str(Path(e.path).with_suffix(SUFFIX)), e.class_idx, e.class_name, made[e.path]) for e in entries]
    write_labels(out / labels, rows)
    return labels, seconds


class FrameStoreDataset(FramePairDataset):
    """FramePairDataset reading JPEG frame stores: the same sampling, crops and collation."""

    def _read(self, video: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        path, entry, cfg = self.paths[video], self.entries[video], self.cfg
        indices = sample_pair_indices(rng, entry.num_frames, cfg.repeated_sampling, cfg.min_gap, cfg.max_gap, path)
        flat = indices.reshape(-1)
        unique, inverse = np.unique(flat, return_inverse=True)
        frames = read_frames(path, unique.tolist())[inverse]
        return indices, frames.reshape(cfg.repeated_sampling, 2, *frames.shape[1:])
