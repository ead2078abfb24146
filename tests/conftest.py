"""Session-wide fixtures and the suite's order.

- The real local SLURM cluster (slurm_fixtures.py) and the suite-wide pool of SLURM scenarios
  (slurm_pool.py), started by the first SLURM test.
- A small generated video dataset shared by the training, launcher and pipeline tests.
- Uninterrupted reference runs, trained once per configuration for the whole pytest run
  (testkit.training.ReferenceRuns), shared by every xdist worker.

Under pytest-xdist (`./bootstrap.sh test` passes `-n 2`) every SLURM test goes to one worker
(`SlurmOnOneWorker`), so one worker owns the cluster while the others run the CPU tests during
SLURM's waits. Tiers and timings: tests/README.md.
"""

from __future__ import annotations

import os

# Before torch is imported anywhere in the session: OpenMP threads that wait sleep instead of spinning.
# Two workers, their subprocesses and the pooled SLURM jobs share 2 cores; spinning threads of one
# process burn the cycles another needs (the inner loop took 2:37 with the default policy and 2:01
# with this one, back to back on the quiet machine). It changes when threads wait, never a number.
# Subprocesses and SLURM jobs (sbatch exports the environment) inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
from fixtures_data import needs_ffmpeg, real_videos, synthetic_root  # noqa: F401  (fixtures for every module)
from slurm_fixtures import slurm_cluster, slurm_pool  # noqa: F401  (session fixtures: the cluster and its scenario pool)
from slurm_pool import scenarios_used
from xdist.scheduler import LoadScopeScheduling

from rsp.synthetic import generate_dataset
from testkit.launching import serve_commands
from testkit.training import ReferenceRuns

pytest_plugins = ["cpu_durations"]  # --cpu-durations=N (tests/cpu_durations.py)


SLURM_MODULE_SUFFIX = "_slurm.py"  # every SLURM test lives in tests/*_slurm.py: what the scheduler groups by


class SlurmOnOneWorker(LoadScopeScheduling):
    """pytest-xdist scheduling: the SLURM tests are one unit of work (one worker owns the cluster and its
    scenario pool), every other test a unit of its own. The controller sees node ids only, hence the
    module-name rule (checked at collection). xdist's own `xdist_group` mark does not group under this
    pytest (it rewrites a node id attribute pytest 9 no longer reads)."""

    def _split_scope(self, nodeid: str) -> str:
        return "slurm" if nodeid.split("::", 1)[0].endswith(SLURM_MODULE_SUFFIX) else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> SlurmOnOneWorker:
    return SlurmOnOneWorker(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLURM tests run in this order: tests without a pooled scenario (they run while the pool's jobs
    wait), tests of pooled scenarios, then `cluster_wide` tests, which need the cluster alone. The other
    tests keep their order."""

    def rank(item: pytest.Item) -> int:
        if not item.get_closest_marker("slurm"):
            return 0
        if item.get_closest_marker("cluster_wide"):
            return 3
        return 2 if scenarios_used([item]) else 1

    misplaced = [i.nodeid for i in items if i.get_closest_marker("slurm") and not i.path.name.endswith(SLURM_MODULE_SUFFIX)]
    if misplaced:
        raise pytest.UsageError(
            f"SLURM tests must live in tests/*{SLURM_MODULE_SUFFIX} (one worker runs them all): move {', '.join(misplaced)}"
        )
    items.sort(key=rank)  # stable: the order within each rank is the collection order


def pytest_runtest_setup(item: pytest.Item) -> None:
    serve_commands()  # between tests too: pooled scenarios post their commands to the main thread


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
