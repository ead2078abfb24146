"""Session-wide fixtures: the real local SLURM cluster (slurm_fixtures.py) and a small generated
video dataset shared by the training, launcher and pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_data import needs_ffmpeg, real_videos, synthetic_root  # noqa: F401  (fixtures for every module)
from slurm_fixtures import slurm_cluster  # noqa: F401  (session fixture: starts the cluster once)

from rsp.synthetic import generate_dataset


@pytest.fixture(scope="session")
def train_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 generated videos (64x80 px, 40 frames, keyframe every 30) with our labels file."""
    root = tmp_path_factory.mktemp("train_videos")
    generate_dataset(root, 16, num_classes=2, height=64, width=80, num_frames=40, keyint=30)
    return root
