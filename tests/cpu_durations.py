"""`--cpu-durations=N`: the N tests that used the most CPU time, beside their wall time.

Wall time on a shared 2-core machine says as much about the neighbours as about the test; CPU time
(this process plus the child processes it waited for: torchrun, decoders, subprocess commands)
barely moves with the load, so it is what the tiers are decided by (tests/README.md). Jobs that
SLURM runs are not children of the test and are not counted: SLURM tests are tiered by their mark.
Works under pytest-xdist: each worker measures its own tests and the report carries the numbers.
"""

from __future__ import annotations

import resource
import time

import pytest

KEY = "cpu_s"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-durations",
        type=int,
        default=0,
        metavar="N",
        help="show the N tests with the most CPU time (this process + waited children), with their wall time",
    )


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_START = pytest.StashKey[tuple[float, float]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_START] = (_cpu_s(), time.perf_counter())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    if call.when == "teardown" and _START in item.stash:  # before the teardown report copies user_properties
        cpu, wall = item.stash[_START]
        item.user_properties.append((KEY, (_cpu_s() - cpu, time.perf_counter() - wall)))
    yield


class _Collector:
    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, float]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == KEY:
                self.seen[report.nodeid] = tuple(value)

    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config) -> None:
        n = config.getoption("--cpu-durations")
        rows = sorted(self.seen.items(), key=lambda kv: -kv[1][0])[:n]
        terminalreporter.write_sep("=", f"{len(rows)} tests with the most CPU time (cpu s, wall s)")
        for nodeid, (cpu, wall) in rows:
            terminalreporter.write_line(f"{cpu:8.1f} {wall:8.1f}  {nodeid}")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--cpu-durations") and not hasattr(config, "workerinput"):  # the controller reports
        config.pluginmanager.register(_Collector(), "cpu-durations-collector")
