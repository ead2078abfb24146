"""How a training process is told to stop, and how a hang becomes a failure.

`StopRequest` is the cooperative stop (docs/requeue.md#cooperative-stop): a signal handler only sets a flag; the
training loop reads it at step boundaries, all ranks agree through an all-reduce, save together
and return "stopped, resume me". Nothing is saved inside a signal handler.

Stop signals are safe from a process's first instruction: a launcher may start Python with them
blocked and call `install_early_stop_signals()` before importing anything slow, which delivers what
arrived meanwhile to the process's one `StopRequest` (`early_stop_request()`). DataLoader workers
never act on them (`shield_loader_worker`): a scheduler signals every process of a job, and a
worker that died of it would turn a cooperative stop into a crash of the main process.

`ProgressWatchdog` re-arms Python's `faulthandler` timer at every step: if no step completes for
the configured time, every thread's traceback is dumped to stderr and the process exits with
status 1, which the launcher treats as a failed attempt to resume from the last checkpoint. (A
process stuck inside a collective or a C call cannot raise; exiting is the only honest outcome.)

Import-light on purpose (standard library only): job entry points import it before torch.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)  # the time limit / preemption signal, and the scheduler's "end now"


class StopRequest:
    """A thread- and signal-safe flag with the reason it was raised and when."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.received_at: float | None = None  # time.time() of the first request

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason, self.received_at = reason, time.time()
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


def install_stop_signals(stop: StopRequest, signals: Iterable[int] = STOP_SIGNALS) -> None:
    """Make `signals` set `stop` (and nothing else). Must run on the main thread."""

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        stop.request(signal.Signals(signum).name)

    for sig in signals:
        signal.signal(sig, handler)


_EARLY: StopRequest | None = None


def install_early_stop_signals() -> StopRequest:
    """The first thing a job's process does: handlers that only set the process's stop request,
    then unblock the stop signals (a launcher may have started the process with them blocked, so
    that one arriving during interpreter start-up waits instead of killing it; unblocking delivers
    it now, to the handler)."""
    global _EARLY
    if _EARLY is None:
        _EARLY = StopRequest()
        install_stop_signals(_EARLY)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return _EARLY


def early_stop_request() -> StopRequest | None:
    """The stop request `install_early_stop_signals` installed in this process, if any."""
    return _EARLY


def ignore_stop_signals() -> None:
    """A finished process ignores late stop signals: at interpreter exit Python restores the
    default action (terminate), and a repeated signal would make a clean exit look like a kill."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def blocked_stop_signals() -> Iterator[None]:
    """Hold the stop signals on this thread (they wait, none is lost). Processes forked meanwhile
    start with them blocked: a loader worker before it shields itself, or a short subprocess (an
    `scontrol` query) that a stop signal sent to the whole job must not kill."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shield_loader_worker() -> None:
    """In a DataLoader worker: stopping is the main process's business. SIGUSR2 and SIGINT are
    ignored. SIGTERM is taken by a thread that ends the worker only when the main process sends
    it (DataLoader shutdown, as torch's own handler does) and drops it from anyone else: the
    scheduler signals every process of the job, and torch's handler would let the worker die of
    it, which the main process reports as a crash ("DataLoader worker killed by signal")."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it
    parent = os.getppid()

    def take_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=take_sigterm, name="sigterm-filter", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2, signal.SIGINT})


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
