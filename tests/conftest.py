"""Session-wide fixtures and the suite's order.

- The real local SLURM cluster (slurm_fixtures.py) and the suite-wide pool of SLURM scenarios
  (slurm_pool.py), started by the first SLURM test.
- A small generated video dataset shared by the training, launcher and pipeline tests.
- Uninterrupted reference runs, trained once per configuration for the whole pytest run
  (testkit.training.ReferenceRuns), shared by every xdist worker.

Under pytest-xdist (`./bootstrap.sh test` passes `-n 2`; pyproject.toml sets `--dist loadgroup`) every
test marked `slurm` goes to one worker group, so one worker owns the cluster while the others run the
CPU tests during SLURM's waits. Tiers and timings: tests/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_data import needs_ffmpeg, real_videos, synthetic_root  # noqa: F401  (fixtures for every module)
from slurm_fixtures import slurm_cluster, slurm_pool  # noqa: F401  (session fixtures: the cluster and its scenario pool)
from slurm_pool import scenarios_used

from rsp.synthetic import generate_dataset
from testkit.training import ReferenceRuns

pytest_plugins = ["cpu_durations"]  # --cpu-durations=N (tests/cpu_durations.py)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLURM tests form one xdist group, in this order: tests without a pooled scenario (they run while
    the pool's jobs wait), tests of pooled scenarios, then `cluster_wide` tests, which need the cluster
    alone. The other tests keep their order."""

    def rank(item: pytest.Item) -> int:
        if not item.get_closest_marker("slurm"):
            return 0
        if item.get_closest_marker("cluster_wide"):
            return 3
        return 2 if scenarios_used([item]) else 1

    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
    items.sort(key=rank)  # stable: the order within each rank is the collection order


@pytest.fixture(autouse=True)
def _slurm_pool_started(request: pytest.FixtureRequest) -> None:
    """The first SLURM test starts every pooled scenario; `cluster_wide` tests wait for them to end."""
    if request.node.get_closest_marker("slurm"):
        pool = request.getfixturevalue("slurm_pool")
        if request.node.get_closest_marker("cluster_wide"):
            pool.drain()


@pytest.fixture(scope="session")
def train_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 generated videos (64x80 px, 40 frames, keyframe every 30) with our labels file."""
    root = tmp_path_factory.mktemp("train_videos")
    generate_dataset(root, 16, num_classes=2, height=64, width=80, num_frames=40, keyint=30)
    return root


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory: pytest.TempPathFactory) -> ReferenceRuns:
    """Uninterrupted runs by configuration fingerprint and rank count, trained once per pytest run:
    the directory is shared by the xdist workers of one run (getbasetemp's parent)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base
    return ReferenceRuns(shared / "reference_runs")
