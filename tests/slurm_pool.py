"""One suite-wide pool of SLURM scenarios, so that their fixed waits (time limits, requeues, rungs,
evaluation jobs) overlap instead of queueing module by module.

A scenario is the part of a SLURM test that submits jobs, interferes with them and waits for them:

    @slurm_scenario
    def halving(env: ScenarioEnv) -> Result:   # runs in a background thread from the first SLURM test on
        ...submit, wait, check what can be checked while jobs run...

    def test_halving(halving):                  # the fixture of the same name: the running scenario
        result = halving.result()               # waits; re-raises the scenario's failure here
        ...compare against an uninterrupted reference (torch in the main thread only)...

When the first SLURM test of the session starts (tests/conftest.py), the pool starts every scenario
that a selected test uses, each in its own thread; the SLURM tests that need no scenario run in the
main thread meanwhile. A scenario's failure is re-raised, with its own traceback, by the test that
uses it. Tests marked `cluster_wide` (preemption, a restart of the cluster, a cluster setting) first
wait until every scenario has ended: they need the cluster to themselves.

Scenario threads never call torch training in-process (`rsp.train.train` sets process-wide state:
seeds, deterministic flags, thread counts); their tests do that in the main thread.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localslurm.cluster import LocalSlurmCluster
from testkit.launching import join_serving

SCENARIOS: dict[str, Callable[[ScenarioEnv], Any]] = {}
RESULT_TIMEOUT_S = 1800  # a scenario that has not ended by then is reported as hung


@dataclass(frozen=True)
class ScenarioEnv:
    cluster: LocalSlurmCluster
    videos: Path  # the session's 16 generated training videos (tests/conftest.py `train_videos`)
    tmp: Path  # a fresh directory of this scenario's own


def slurm_scenario(fn: Callable[[ScenarioEnv], Any]):
    """Register `fn` as a pooled scenario; returns the session fixture (same name) whose value is the
    running scenario (`.result()` waits for it and re-raises its failure in the calling test)."""
    name = fn.__name__
    if name in SCENARIOS:
        raise ValueError(f"two SLURM scenarios are named {name!r}: scenario names are suite-wide")
    SCENARIOS[name] = fn

    @pytest.fixture(name=name, scope="session")
    def running(slurm_pool: ScenarioPool) -> Scenario:
        return slurm_pool.scenario(name)

    running.__doc__ = fn.__doc__
    return running


class Scenario(threading.Thread):
    def __init__(self, name: str, fn: Callable[[ScenarioEnv], Any], env: ScenarioEnv):
        super().__init__(name=f"scenario-{name}", daemon=True)
        self.fn, self.env = fn, env
        self.value: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def result(self) -> Any:
        """Wait for the scenario to end; its value, or its failure raised here."""
        join_serving(self, RESULT_TIMEOUT_S)
        if self.is_alive():
            stack = "".join(traceback.format_stack(sys._current_frames().get(self.ident)))
            raise AssertionError(f"{self.name} still runs after {RESULT_TIMEOUT_S} s; it is at:\n{stack}")
        print(f"[slurm pool] {self.name}: {self.seconds:.0f} s")
        if self.error is not None:
            raise self.error
        return self.value

    def run(self) -> None:
        started = time.perf_counter()
        try:
            self.value = self.fn(self.env)
        except BaseException as error:  # re-raised in the test that uses it
            self.error = error
        finally:
            self.seconds = time.perf_counter() - started


class ScenarioPool:
    """The running scenarios of this session, by name."""

    def __init__(self, cluster: LocalSlurmCluster, videos: Path, tmp_factory: pytest.TempPathFactory, names: Iterable[str]):
        self.threads: dict[str, Scenario] = {}
        for name in sorted(names):
            env = ScenarioEnv(cluster, videos, tmp_factory.mktemp(name))
            self.threads[name] = Scenario(name, SCENARIOS[name], env)
            self.threads[name].start()

    def scenario(self, name: str) -> Scenario:
        if name not in self.threads:
            raise LookupError(f"scenario {name!r} was not started: no selected test uses it ({sorted(self.threads)} were)")
        return self.threads[name]

    def drain(self) -> None:
        """Wait until every scenario has ended (their failures are their own tests' to report)."""
        for thread in self.threads.values():
            join_serving(thread, RESULT_TIMEOUT_S)


def scenarios_used(items: Iterable[pytest.Item]) -> set[str]:
    """The scenarios the selected tests use (fixtures are resolved transitively at collection)."""
    return {name for item in items for name in getattr(item, "fixturenames", ()) if name in SCENARIOS}
