"""How a training process is told to stop, and how a hang becomes a failure.

`StopRequest` is the cooperative stop (docs/requeue.md#cooperative-stop): a signal handler only sets a flag; the
training loop reads it at step boundaries, all ranks agree through an all-reduce, save together
and return "stopped, resume me". Nothing is saved inside a signal handler.

`ProgressWatchdog` re-arms Python's `faulthandler` timer at every step: if no step completes for
the configured time, every thread's traceback is dumped to stderr and the process exits with
status 1, which the launcher treats as a failed attempt to resume from the last checkpoint. (A
process stuck inside a collective or a C call cannot raise; exiting is the only honest outcome.)
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)


class StopRequest:
    """A thread- and signal-safe flag with the reason it was raised."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


def install_stop_signals(stop: StopRequest, signals: Iterable[int] = (signal.SIGUSR2, signal.SIGTERM)) -> None:
    """Make `signals` set `stop` (and nothing else). Must run on the main thread."""

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        stop.request(signal.Signals(signum).name)

    for sig in signals:
        signal.signal(sig, handler)


class ProgressWatchdog:
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.armed = False

    def kick(self) -> None:
        """Progress was made: restart the countdown."""
        faulthandler.dump_traceback_later(self.timeout_s, exit=True, file=sys.stderr)
        self.armed = True

    def disarm(self) -> None:
        if self.armed:
            faulthandler.cancel_dump_traceback_later()
            self.armed = False

    def __enter__(self) -> ProgressWatchdog:
        log.debug("watchdog armed: a process making no progress for %.0f s is ended", self.timeout_s)
        self.kick()
        return self

    def __exit__(self, *exc) -> None:
        self.disarm()
