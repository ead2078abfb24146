"""The `slurm_cluster` fixture: one real local SLURM cluster for the whole test session.

tests/conftest.py makes it available to every test module:

    from slurm_fixtures import slurm_cluster  # noqa: F401  (pytest fixture)

The cluster (localslurm/cluster.py) lives in the repository's .slurm-test/, wiped at the start of
each session: SLURM's saved state and its accounting database go together (docs/local-slurm.md#pitfalls,
item 11), and no job of an earlier session can come back. Its logs stay there after the session
for debugging. SLURM_CONF is exported into os.environ, so sbatch, squeue and submitit reach it.

Ports are machine-wide, so one cluster serves one test session at a time: a session waits for
another one that is using it (a lock file in the temp dir), and stops a cluster that an earlier,
ended session or a user left running (any started by localslurm/scripts/start.sh).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from fixtures_data import unavailable
from slurm_pool import ScenarioPool, scenarios_used

from localslurm.cluster import ClusterError, LocalSlurmCluster, running_clusters

TEST_STATE_DIR = Path(__file__).resolve().parents[1] / ".slurm-test"
SESSION_LOCK = Path(tempfile.gettempdir()) / "rsp-local-slurm-session.lock"
SESSION_LOCK_WAIT_S = 900  # how long a session waits for another one to finish with the cluster

log = logging.getLogger(__name__)


@contextmanager
def _one_session_at_a_time() -> Iterator[None]:
    """Hold a machine-wide lock; the kernel drops it when this process ends, even by SIGKILL."""
    with SESSION_LOCK.open("a") as lock:
        deadline = time.monotonic() + SESSION_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"another test session has held {SESSION_LOCK} for {SESSION_LOCK_WAIT_S} s") from None
                time.sleep(1)
        yield


def _start_fresh_cluster() -> LocalSlurmCluster:
    for stale in running_clusters():
        log.warning("stopping the local SLURM cluster of %s, left by an ended session or a user", stale)
        LocalSlurmCluster(stale).stop()
    shutil.rmtree(TEST_STATE_DIR, ignore_errors=True)
    cluster = LocalSlurmCluster(TEST_STATE_DIR)
    started = time.perf_counter()
    cluster.start()
    print(f"[slurm] cold start of the local cluster: {time.perf_counter() - started:.1f} s")
    return cluster


@contextmanager
def _exported(env: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    with ExitStack() as stack:
        try:
            stack.enter_context(_one_session_at_a_time())
            cluster = _start_fresh_cluster()
        except (ClusterError, OSError) as error:
            problem = str(error)
        else:
            problem = ""
        if problem:  # outside the except block: the report is the message, not a chained traceback
            unavailable(f"no local SLURM cluster: {problem}")
        stack.callback(cluster.stop)  # runs after os.environ is restored, before the lock is released
        stack.enter_context(_exported(cluster.env))
        yield cluster


@pytest.fixture(scope="session")
def slurm_pool(request: pytest.FixtureRequest, slurm_cluster, train_videos: Path, tmp_path_factory) -> ScenarioPool:
    """Every pooled scenario a selected test uses, started at once (tests/slurm_pool.py)."""
    return ScenarioPool(slurm_cluster, train_videos, tmp_path_factory, scenarios_used(request.session.items))
