"""A decoder's native crash in a loader worker costs one file, not the run (rsp/read_process.py):
real SIGSEGVs in native code while reading one generated video."""

from __future__ import annotations

import os
import signal
from itertools import islice

import numpy as np
import pytest
import torch
from crashing_probe import segfault
from fixtures_data import data_config

from rsp.data import EpochSampler, FramePairDataset, item_rng
from rsp.loading import make_loader
from rsp.read_process import ReadProcess
from rsp.video import VideoReadError


class CrashingDataset(FramePairDataset):
    """FramePairDataset whose read of one file segfaults (a real SIGSEGV, as a decoder bug would)."""

    crash_path = ""

    def _read(self, video: int, rng: np.random.Generator):
        if str(self.paths[video]) == self.crash_path:
            segfault()
        return super()._read(video, rng)


def test_a_crashing_read_fails_one_file_and_the_next_read_forks_a_fresh_process(synthetic_root):
    ds = CrashingDataset(data_config(synthetic_root), img_size=16, seed=0)
    ds.crash_path = str(ds.paths[1])
    reads = ReadProcess(ds._read)
    rng, expected_rng = item_rng(0, 0, 0), item_rng(0, 0, 0)
    indices, frames = reads(0, str(ds.paths[0]), rng)
    expected_indices, expected = ds._read(0, expected_rng)
    assert np.array_equal(indices, expected_indices) and np.array_equal(frames, expected)
    assert rng.random() == expected_rng.random()  # the generator advanced as if read here
    with pytest.raises(VideoReadError, match="crashed while reading it.*SIGSEGV") as err:
        reads(1, str(ds.paths[1]), item_rng(0, 0, 1))
    assert err.value.path == str(ds.paths[1])
    _, frames = reads(2, str(ds.paths[2]), item_rng(0, 0, 2))  # a new read process
    assert np.array_equal(frames, ds._read(2, item_rng(0, 0, 2))[1]) and reads.cpu_seconds() > 0
    os.kill(reads._pid, signal.SIGKILL)  # killed from outside between reads: the next read still succeeds
    os.waitid(os.P_PID, reads._pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: the read process reaps it
    _, frames = reads(3, str(ds.paths[3]), item_rng(0, 0, 3))
    assert np.array_equal(frames, ds._read(3, item_rng(0, 0, 3))[1])


def _batches(ds, workers: int, start: int, count: int) -> list[dict]:
    cfg = data_config(ds.cfg.root, batch_size=3, num_workers=workers, prefetch_factor=1)
    sampler = EpochSampler(len(ds), 3, rank=0, world_size=1, seed=5)
    sampler.set_position(1, start)
    return list(islice(make_loader(ds, sampler, cfg, seed=5), count))


def test_a_worker_crashing_on_one_file_counts_it_broken_and_resumes_exactly(synthetic_root):
    ds = CrashingDataset(data_config(synthetic_root), img_size=16, seed=9)
    order = EpochSampler(len(ds), 3, 0, 1, seed=5).epoch_order(1)
    ds.crash_path = str(ds.paths[order[4]])  # read by batch 1
    two = _batches(ds, workers=2, start=0, count=4)
    one = _batches(ds, workers=1, start=0, count=4)
    resumed = _batches(ds, workers=2, start=1, count=3)
    assert [b["broken_paths"] for b in two] == [[], [ds.crash_path], [], []]
    for a, b in zip(two, one, strict=True):
        assert torch.equal(a["src"], b["src"]) and torch.equal(a["tgt"], b["tgt"])
    for a, b in zip(two[1:], resumed, strict=True):
        assert torch.equal(a["src"], b["src"]) and torch.equal(a["tgt"], b["tgt"]) and a["broken"] == b["broken"]
