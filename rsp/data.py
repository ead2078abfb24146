"""Frame pairs from videos for RSP pretraining (docs/data.md#frame-pair-sampling).

An item is one video: R = data.repeated_sampling pairs (src = frame t, tgt = frame t + k), all 2R
frames decoded with one call of the configured decoder (data.decoder: torchcodec or decord, random
access where `rsp.prepare labels` verified it for the file, else decoding from the first frame:
docs/data.md, Decoding), each pair cropped (RandomResizedCrop: area scale
crop_min_scale..crop_max_scale, ratio 3/4..4/3, bicubic) and flipped the same way for both of its
frames. Crops and resizes run on uint8 tensors, not PIL images, and items and batches stay uint8
(a quarter of float32's bytes to stack, share and pin); `normalize_pairs` converts and
ImageNet-normalizes them on the training device, inside the step.

Determinism: items are addressed by `(epoch, index)` keys from `EpochSampler`, and every random
choice of an item (frames, crops, flips, the replacement of an unreadable video) comes from a
generator seeded by (seed, epoch, index, attempt). A batch is therefore fully determined by
(seed, epoch, batch_in_epoch, rank, world_size), whatever the number of loader workers, which is
what exact resume needs.

Sampling follows the reference (docs/data.md#frame-pair-sampling): with at least max_gap + 1 frames, t ~ U[0, len - 1 -
max_gap] and k ~ U[min_gap, max_gap]; shorter videos give two distinct sorted random frames, whose
gap can fall below min_gap (the reference's fallback, kept so results compare; the dataset names
such videos when it loads a labels file that records frame counts). A video needs two frames.

Unreadable videos (missing, empty, truncated, not a video, no video stream, fewer than 2 frames,
not decodable by the configured decoder, or crashing it: a loader worker reads through a forked
process, rsp/read_process.py) are replaced by another
video chosen from the item's generator, logged with their path (once per process), and reported
in the item's `broken` / `broken_paths`, so the trainer can count them (rsp.loading.BrokenVideoBudget).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from rsp.config import DataConfig
from rsp.decoders import SEQUENTIAL, UNREADABLE, require
from rsp.read_process import ReadProcess
from rsp.synthetic import ensure_synthetic_dataset
from rsp.video import (
    DataError,
    LabelEntry,
    VideoFile,
    VideoReadError,
    changed_since_labelling,
    read_labels,
    resolve_labels_file,
)

__all__ = [
    "DataError",
    "EpochSampler",
    "FramePairDataset",
    "DecodedItem",
    "normalize_pairs",
    "sample_pair_indices",
    "crop_box",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range (docs/data.md#frame-pair-sampling)
MAX_ATTEMPTS = 16  # reads per item before giving up; at 1% broken, 16 failures in a row ~ 1e-32
_STREAM_ORDER, _STREAM_ITEM = 0, 1  # seed-sequence spawn keys: epoch order vs. item randomness


def item_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The generator of one read of one item; nothing else feeds an item's randomness."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_ITEM, epoch, index, attempt)))


# --- sampler --------------------------------------------------------------------------------------


class EpochSampler(Sampler):
    """Yields (epoch, index) keys. The epoch's order is a permutation of range(num_items) seeded by
    (seed, epoch) only (different every epoch, identical on every rank), truncated to
    batches_per_epoch * batch_size * world_size items and dealt round-robin, so rank r gets a
    disjoint equal share. Once an __iter__ starts, the position moves to the start of the next
    epoch, so a plain loop over epochs needs no `set_position` call."""

    def __init__(self, num_items: int, batch_size: int, rank: int, world_size: int, seed: int):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank ({rank}) must lie in [0, world_size ({world_size})) and world_size >= 1")
        if batch_size < 1 or seed < 0:
            raise ValueError(f"batch_size ({batch_size}) must be >= 1 and seed ({seed}) >= 0")
        self.num_items, self.batch_size, self.rank, self.world_size, self.seed = (
            num_items, batch_size, rank, world_size, seed,
        )  # fmt: skip
        self.batches_per_epoch = num_items // (batch_size * world_size)  # per rank
        if self.batches_per_epoch == 0:
            raise DataError(
                f"{num_items} videos cannot fill one batch of data.batch_size ({batch_size}) on each of "
                f"{world_size} ranks; lower data.batch_size or use more videos"
            )
        self._epoch, self._start = 0, 0

    def set_position(self, epoch: int, batch_in_epoch: int) -> None:
        """The next __iter__ yields epoch `epoch` from batch `batch_in_epoch` to its end."""
        if epoch < 0 or not 0 <= batch_in_epoch <= self.batches_per_epoch:
            raise ValueError(
                f"position (epoch {epoch}, batch {batch_in_epoch}) must have epoch >= 0 and batch in "
                f"[0, {self.batches_per_epoch}]"
            )
        self._epoch, self._start = epoch, batch_in_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's video indices for the whole of `epoch`, in order."""
        seq = np.random.SeedSequence(self.seed, spawn_key=(_STREAM_ORDER, epoch))
        order = np.random.default_rng(seq).permutation(self.num_items)
        used = order[: self.batches_per_epoch * self.batch_size * self.world_size]
        return used[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self._epoch, self._start
        self._epoch, self._start = epoch + 1, 0
        order = self.epoch_order(epoch)[start * self.batch_size :]
        return iter([(epoch, int(i)) for i in order])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self._start) * self.batch_size


# --- sampling and transforms ----------------------------------------------------------------------


def sample_pair_indices(
    rng: np.random.Generator, num_frames: int, pairs: int, min_gap: int, max_gap: int, path: str | Path = ""
) -> np.ndarray:
    """(pairs, 2) frame indices [t, t + k] (module docstring: docs/data.md#frame-pair-sampling and the short-video rule)."""
    if num_frames < 2:
        raise VideoReadError(path, f"has {num_frames} frame(s); a pair needs at least 2")
    if num_frames > max_gap:
        start = rng.integers(0, num_frames - max_gap, size=pairs)
        gap = rng.integers(min_gap, max_gap + 1, size=pairs)
        return np.stack([start, start + gap], axis=1)
    return np.sort(np.stack([rng.choice(num_frames, size=2, replace=False) for _ in range(pairs)]), axis=1)


def crop_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float] = CROP_RATIO
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop: 10 tries at a random area share and log-uniform
    aspect ratio, else the largest centred crop within the ratio range (torchvision's rule)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# --- dataset --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedItem:
    video_index: int  # the video actually read: the item's own, or its replacement
    path: Path
    frame_indices: np.ndarray  # (R, 2): src and tgt frame of each pair
    frames: np.ndarray  # uint8 (R, 2, H, W, 3)
    broken_paths: list[str]  # reads that failed (and were replaced) before this one


class FramePairDataset(Dataset):
    """Videos listed in the labels file under `cfg.root`, indexed by (epoch, index) keys.

    Each video is read with the seek mode the labels file records for `cfg.decoder`; a file without
    one (labels written before seek modes were recorded, the reference's pickle) is decoded from its
    first frame, which is exact and slower, and the dataset says so when it loads."""

    def __init__(self, cfg: DataConfig, img_size: int, seed: int):
        problems = cfg.problems()
        if problems:
            raise DataError("invalid data config: " + "; ".join(problems))
        if img_size < 1 or seed < 0:
            raise ValueError(f"img_size ({img_size}) must be >= 1 and seed ({seed}) >= 0")
        if not cfg.root:
            raise DataError("data.root is empty; set it to the dataset root (the directory holding the labels file)")
        self.cfg, self.img_size, self.seed = cfg, img_size, seed
        root = Path(cfg.root)
        if cfg.synthetic_videos > 0:
            ensure_synthetic_dataset(root, cfg.synthetic_videos, scene=cfg.synthetic_scene, sources=cfg.natural_sources)
        if not root.is_dir():
            raise DataError(f"data.root ({root}) is not a directory")
        self.labels_path = resolve_labels_file(root, cfg.labels)
        self.entries = read_labels(self.labels_path)
        self.paths = [root / e.path for e in self.entries]
        self.missing = frozenset(i for i, p in enumerate(self.paths) if not p.is_file())
        self._check_missing()
        self._report_short(self.entries)
        log.info("decoding with %s", require(cfg.decoder))  # DecoderUnavailable names what to install
        self._report_seek_modes()
        self._logged: set[str] = set()
        # where crops are made: the GPU decodes in place (data.decode_device=cuda, docs/data.md#gpu-decoding)
        self._device = torch.device(cfg.decode_device) if cfg.decode_device != "cpu" else None
        self._read_process: ReadProcess | None = None  # made in each loader worker (`_read_guarded`)
        self._read_process_pid = 0

    def _check_missing(self) -> None:
        if not self.missing:
            return
        examples = ", ".join(str(self.paths[i]) for i in sorted(self.missing)[:3])
        message = f"{len(self.missing)} of {len(self.paths)} videos listed in {self.labels_path} do not exist (e.g. {examples})"
        if len(self.missing) > self.cfg.max_broken_fraction * len(self.paths):
            raise DataError(
                f"{message}: more than data.max_broken_fraction ({self.cfg.max_broken_fraction}). Point data.root "
                "at the directory the paths are relative to, or rewrite the labels file (python -m rsp.prepare labels)"
            )
        log.warning("%s; each read of one counts as broken and is replaced", message)

    def _report_short(self, entries) -> None:
        """Name videos too short for the configured gaps (their frame count is in our labels file)."""
        short = [e for e in entries if 0 <= e.num_frames <= self.cfg.min_gap]
        if short:
            examples = ", ".join(e.path for e in short[:3])
            log.warning(
                "%d of %d videos in %s have <= data.min_gap (%d) frames, e.g. %s: they give pairs closer than "
                "min_gap (the reference's fallback); drop them with `python -m rsp.prepare labels --min-frames %d`",
                len(short),
                len(entries),
                self.labels_path,
                self.cfg.min_gap,
                examples,
                self.cfg.min_gap + 1,
            )

    def seek_mode(self, entry: LabelEntry) -> str:
        """How `entry` is read: the recorded mode for data.decoder, sequential when none is recorded."""
        recorded = entry.seek(self.cfg.decoder)
        if recorded == UNREADABLE or (recorded and self.cfg.seek == "auto"):
            return recorded
        return SEQUENTIAL

    def _report_seek_modes(self) -> None:
        decoder, n = self.cfg.decoder, len(self.entries)
        unverified = sum(1 for e in self.entries if not e.seek(decoder))
        unreadable = sum(1 for e in self.entries if e.seek(decoder) == UNREADABLE)
        sequential = sum(1 for e in self.entries if self.seek_mode(e) == SEQUENTIAL)
        if unverified:
            log.warning(
                "%d of %d videos in %s have no verified seek mode for data.decoder=%s: they are decoded from their first "
                "frame (exact, several times slower). Record the modes with `python -m rsp.prepare labels --root %s "
                "--videos-dir <class folders>`",
                unverified, n, self.labels_path, decoder, self.cfg.root,
            )  # fmt: skip
        if unreadable:
            log.warning(
                "%d of %d videos in %s cannot be decoded by data.decoder=%s (rsp.prepare labels found so); each read of "
                "one counts as broken and is replaced; another data.decoder may read them",
                unreadable, n, self.labels_path, decoder,
            )  # fmt: skip
        log.info("data.decoder=%s: %d of %d videos by random access, %d decoded from the first frame", decoder,
                 n - sequential - unreadable, n, sequential)  # fmt: skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        decoded, rng = self._decode(key)
        src, tgt = self._transform(decoded.frames, rng)
        return {"src": src, "tgt": tgt, "broken": len(decoded.broken_paths), "broken_paths": decoded.broken_paths}

    def decode_item(self, key: tuple[int, int]) -> DecodedItem:
        """The frames item `key` reads, before cropping: what __getitem__ transforms."""
        item = self._decode(key)[0]
        if isinstance(item.frames, np.ndarray):  # a loader worker's are in a reused buffer
            item = dataclasses.replace(item, frames=item.frames.copy())
        return item

    def _read_guarded(self, video: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`_read`; in a loader worker, in its forked read process, where a decoder's native crash
        makes the file unreadable instead of killing the worker (rsp/read_process.py)."""
        if get_worker_info() is None:
            return self._read(video, rng)
        if self._read_process is None or self._read_process_pid != os.getpid():
            self._read_process, self._read_process_pid = ReadProcess(self._read), os.getpid()
        return self._read_process(video, str(self.paths[video]), rng)

    def read_process_cpu_seconds(self) -> float:
        """CPU seconds this process's read processes spent (0 outside loader workers)."""
        alive = self._read_process is not None and self._read_process_pid == os.getpid()
        return self._read_process.cpu_seconds() if alive else 0.0

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_read_process": None}  # a child process and its buffer belong to one process

    def _decode(self, key: tuple[int, int]) -> tuple[DecodedItem, np.random.Generator]:
        if not (isinstance(key, tuple) and len(key) == 2 and 0 <= key[1] < len(self) and key[0] >= 0):
            raise KeyError(f"FramePairDataset takes (epoch, index) keys with index < {len(self)} (EpochSampler); got {key!r}")
        epoch, index = int(key[0]), int(key[1])
        broken: list[str] = []
        for attempt in range(MAX_ATTEMPTS):
            rng = item_rng(self.seed, epoch, index, attempt)
            video = index if attempt == 0 else int(rng.integers(len(self)))
            try:
                indices, frames = self._read_guarded(video, rng)
            except VideoReadError as err:
                self._log_broken(err)
                broken.append(err.path)
                continue
            return DecodedItem(video, self.paths[video], indices, frames, broken), rng
        raise DataError(
            f"item {key}: {MAX_ATTEMPTS} videos in a row could not be read (e.g. {', '.join(broken[:3])}); "
            f"check data.root and {self.labels_path}"
        )

    def _read(self, video: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        path = self.paths[video]
        if video in self.missing:
            raise VideoReadError(path, "listed in the labels file but does not exist")
        entry, cfg = self.entries[video], self.cfg
        if changed := changed_since_labelling(path, entry):
            raise VideoReadError(path, changed)
        reader = VideoFile(path, cfg.decoder, self.seek_mode(entry), entry.num_frames, cfg.decode_device)
        indices = sample_pair_indices(rng, reader.num_frames, cfg.repeated_sampling, cfg.min_gap, cfg.max_gap, path)
        frames = reader.read(indices.reshape(-1))  # (2R, H, W, 3), one decoder call
        return indices, frames.reshape(cfg.repeated_sampling, 2, *frames.shape[1:])

    def _transform(self, frames: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (R, 2, H, W, 3) frames -> uint8 src, tgt (R, 3, S, S): one crop and flip per pair,
        written straight into the item's output (no float copy: `normalize_pairs` runs on the device)."""
        cfg, size = self.cfg, self.img_size
        pairs = torch.as_tensor(frames, device=self._device).permute(0, 1, 4, 2, 3)  # (R, 2, 3, H, W) uint8, a view
        height, width = pairs.shape[-2:]
        out = torch.empty((2, len(pairs), 3, size, size), dtype=torch.uint8, device=self._device)  # src, tgt
        scale = (cfg.crop_min_scale, cfg.crop_max_scale)
        for r, pair in enumerate(pairs):  # one crop and one flip per pair, shared by its two frames
            top, left, h, w = crop_box(rng, height, width, scale)
            crop = TF.resized_crop(pair, top, left, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True)
            out[:, r] = crop.flip(-1) if rng.random() < cfg.hflip_prob else crop  # (2, 3, S, S)
        return out[0], out[1]  # each (R, 3, S, S), contiguous without a copy

    def _log_broken(self, err: VideoReadError) -> None:
        if err.path not in self._logged:  # once per path and process: a broken file fails every time
            self._logged.add(err.path)
            log.warning("unreadable video replaced by another: %s", err)


# --- normalization (on the training device) -------------------------------------------------------


def normalize_pairs(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, S, S) crops -> float32 ImageNet-normalized, on the crops' device: what the
    model sees. (x / 255 - mean) / std as one multiply and one add, the same float operations
    (and so the same bits) as when the loader's workers normalized."""
    scale, shift = _normalization(frames.device)
    return frames.float().mul_(scale).add_(shift)


@functools.cache
def _normalization(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return (1 / (255 * std)).to(device), (-mean / std).to(device)
