"""Random state of a training process: seeding, capture into a checkpoint, exact restore.

Three sources are used during training: the global torch RNG (masking, noise, posterior samples),
and, for libraries that might touch them, Python's `random` and NumPy's legacy global RNG. Data
augmentation never touches them (items derive their own generator from seed, epoch and index),
and the prior's logging-only sample uses `derived_generator`, so neither log cadence nor worker
count shifts the stream.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

MODEL_INIT_STREAM = 0  # identical on every rank: the initial weights
TRAIN_STREAM = 1  # per rank: masking, noise, latent samples
PRIOR_LOG_STREAM = 2  # per rank and step: the prior's logging-only decoder pass


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers (stable across runs, processes and platforms)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_process(seed: int, stream: int, rank: int = 0) -> None:
    s = derive_seed(seed, stream, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def derived_generator(device: torch.device, *parts: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


def capture() -> dict:
    """This process's RNG state in weights_only-loadable types (tensors, lists, ints)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore(state: dict) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
