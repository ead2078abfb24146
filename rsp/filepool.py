"""Run one function over many files in worker processes so that no single file can stop the
batch (docs/data.md#crashes-and-hangs-in-preparation): the preparation steps and the labels probe.

Why not `concurrent.futures.ProcessPoolExecutor` with its default start method:
- It forks. A process that has run torch (or anything using GNU OpenMP) holds libgomp's thread
  pool, and a forked child that reaches OpenMP again can block forever on a lock copied in the
  locked state; it did, in torch's `copy_` under torchcodec's frame conversion. Workers here are
  *spawned*: fresh interpreters that inherit no thread, lock or OpenMP state.
- One native crash (a decoder's segfault) breaks the whole executor (`BrokenProcessPool`) and
  every pending file with it. Here each worker holds one file at a time, so a dead worker names
  exactly one file: that file is reported with the signal, the worker is replaced, and the other
  files go on.
- Nothing bounds a call. Here a worker that has not returned its file after `stall_timeout`
  seconds is killed and its file reported.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from tqdm import tqdm

START_METHOD = "spawn"  # never "fork": see the module docstring
POLL_S = 1.0  # longest wait between checks of the stall bound
START_TIMEOUT_S = 300.0  # a fresh interpreter importing torch on a loaded machine takes seconds, not minutes


class WorkerStartError(RuntimeError):
    """A worker process died before taking any item: a problem of the whole run, not of a file."""


class WorkerLost(str):
    """An item's error when its worker died (a signal: a crash in native code) or stalled, as
    opposed to an exception `fn` raised; a `str`, so callers that only report it need not care."""


def run_isolated(
    fn: Callable[[Any], Any], items: Sequence[Any], jobs: int, desc: str, stall_timeout: float | None = None
) -> Iterator[tuple[Any, Any, str]]:
    """Yield (item, result, error) as items finish, in completion order; `error` is "" or why the
    item has no result: the exception's message, the signal that killed its worker, or the stall.

    `jobs` spawned workers (at least one; `fn` and the items must pickle), each given one item at a
    time. `stall_timeout`: seconds one item may take before its worker is killed (None: no bound).
    Closing the iterator early (Ctrl-C, an exception in the consumer) ends every worker."""
    pending = deque(items)
    context = multiprocessing.get_context(START_METHOD)
    workers: list[_Worker] = []
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=None)
    try:
        while pending or any(w.item is not _IDLE for w in workers):
            missing = min(max(jobs, 1), len(pending) + _busy(workers)) - len(workers)
            started = [_Worker.start(context, fn) for _ in range(missing)]
            workers.extend(started)  # before waiting: stopped in `finally` if one cannot start
            for worker in started:
                worker.wait_ready()
            for worker in workers:
                if worker.item is _IDLE and pending:
                    worker.give(pending.popleft())
            busy = [w for w in workers if w.item is not _IDLE]
            wait([c for w in busy for c in (w.conn, w.process.sentinel)], timeout=_next_wait(busy, stall_timeout))
            for worker in busy:
                outcome = worker.outcome(stall_timeout)
                if outcome is None:
                    continue
                yield outcome
                bar.update()
                if not worker.process.is_alive() or worker.item is not _IDLE:
                    worker.stop()
                    workers.remove(worker)
    finally:
        for worker in workers:
            worker.stop()
        bar.close()


_IDLE = object()  # a worker's `item` when it holds none


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection  # the parent's end of the worker's pipe
    item: Any = _IDLE
    given_at: float = 0.0  # time.monotonic() when `item` was given

    @classmethod
    def start(cls, context, fn: Callable[[Any], Any]) -> _Worker:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_serve, args=(fn, child_end), daemon=True)
        process.start()
        child_end.close()
        return cls(process, parent_end)

    def wait_ready(self) -> None:
        """Return once the worker runs its loop; WorkerStartError when it died on the way (in
        importing `fn`'s module or the caller's main script: nothing to blame on an item)."""
        try:
            if self.conn.poll(START_TIMEOUT_S) and self.conn.recv() == _READY:
                return
        except (EOFError, OSError):
            pass
        self.process.kill()
        self.process.join()
        raise WorkerStartError(
            f"a worker process could not start (exit code {self.process.exitcode}; its error is above): "
            f"workers are started by {START_METHOD!r} and import the calling script, so a script that "
            "calls this must keep its top level under `if __name__ == '__main__':`"
        )

    def give(self, item: Any) -> None:
        self.item, self.given_at = item, time.monotonic()
        self.conn.send(item)

    def outcome(self, stall_timeout: float | None) -> tuple[Any, Any, str] | None:
        """(item, result, error) once the item is done, the worker died or it stalled; else None.
        A worker that died or stalled keeps `item` set (so the caller replaces it)."""
        item = self.item
        if self.conn.poll():
            try:
                result, error = self.conn.recv()
            except (EOFError, OSError):  # died while sending
                return item, None, WorkerLost(self._death())
            self.item = _IDLE
            return item, result, error
        if not self.process.is_alive():
            return item, None, WorkerLost(self._death())
        if stall_timeout is not None and time.monotonic() - self.given_at > stall_timeout:
            self.process.kill()
            self.process.join()
            return item, None, WorkerLost(f"no result after {stall_timeout:g} s: its worker process was killed (a stall)")
        return None

    def _death(self) -> str:
        self.process.join()
        code = self.process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return f"its worker process died by {name} while on this file (a crash in native code)"
        return f"its worker process exited with code {code} while on this file"

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(_STOP)
            except OSError:
                pass
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.conn.close()


_STOP = "__rsp.filepool.stop__"  # the message that ends a worker's loop
_READY = "__rsp.filepool.ready__"  # a worker's first message


def _busy(workers: list[_Worker]) -> int:
    return sum(w.item is not _IDLE for w in workers)


def _next_wait(busy: list[_Worker], stall_timeout: float | None) -> float:
    if stall_timeout is None:
        return POLL_S
    now = time.monotonic()
    return max(0.01, min([POLL_S] + [w.given_at + stall_timeout - now for w in busy]))


def _serve(fn: Callable[[Any], Any], conn: Connection) -> None:
    """A worker's loop: one item in, (result, error) out, until told to stop."""
    conn.send(_READY)
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent has gone
            return
        if isinstance(item, str) and item == _STOP:
            return
        try:
            outcome = (fn(item), "")
        except Exception as err:
            outcome = (None, f"{type(err).__name__}: {err}")
        conn.send(outcome)
