"""A loader worker's videos read in a forked child process, so that a decoder's native crash costs
one file instead of the run (docs/data.md#broken-videos).

A decoder is native code: a SIGSEGV or abort in FFmpeg, torchcodec or decord kills the process it
runs in, and a DataLoader whose worker dies fails the whole run (and, requeued, fails again at the
same file). So each DataLoader worker reads its videos through a `ReadProcess`: a child forked from
the worker, sharing the dataset by fork (nothing is pickled but the request), which runs one read
(`FramePairDataset._read`: sample frame indices, decode) per request and writes the frames into a
buffer it shares with the worker. The crop and resize stay in the worker, on that buffer.

When the child dies during a read, that read raises `VideoReadError` naming the file and the
signal; the dataset counts the file as broken and replaces it (`rsp.data`), as it does for any
unreadable video, and the next read forks a fresh child. A read that makes no progress for
`READ_TIMEOUT_S` is killed and counted the same way.

Exactness: the read's random generator travels to the child and its state comes back, so the
worker's generator advances exactly as if it had read in-process; a crash is a property of the
file and decoder, so the same items skip the same files in a resumed run (docs/data.md#broken-videos).
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np

from rsp.decoders import VideoReadError

READ_TIMEOUT_S = 300.0  # one read's limit: a 4K clip decoded from its first frame takes seconds, not minutes
SHARED_BYTES = 64 * 2**20  # frames up to this size come back through shared memory, larger ones pickled

Read = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]  # (video, rng) -> (indices, frames)


class ReadProcess:
    """Runs `read(video, rng)` in a forked child; `read` must raise VideoReadError for a bad file.
    Returned frames are a view of the shared buffer, valid until the next call."""

    def __init__(self, read: Read):
        self._read = read
        self._pid = 0  # the child; 0 when none runs
        self._conn: Connection | None = None
        self._buffer = mmap.mmap(-1, SHARED_BYTES)  # anonymous and shared: the child writes, we read
        self._cpu_done = 0.0  # CPU seconds of children that ended
        self._cpu_live = 0.0  # of the running child, as it last reported

    def cpu_seconds(self) -> float:
        """CPU seconds the child processes spent reading (as of their last reply)."""
        return self._cpu_done + self._cpu_live

    def __call__(self, video: int, path: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        request = (video, rng.bit_generator.state)
        try:
            self._send(request)
        except OSError:  # the child died between reads (killed from outside): not this file's doing
            self._stop()
            self._send(request)
        if not self._conn.poll(READ_TIMEOUT_S):
            self._stop(signal.SIGKILL)
            raise VideoReadError(path, f"reading it made no progress for {READ_TIMEOUT_S:.0f} s; its read process was killed")
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            raise VideoReadError(path, f"the decoder crashed while reading it ({self._stop()}); skipped") from None
        kind, *rest = reply
        if kind == "error":
            raise rest[0]
        if kind == "unreadable":
            raise VideoReadError(*rest)
        indices, frames, state, self._cpu_live = rest
        rng.bit_generator.state = state
        if kind == "shared":  # frames is (shape, dtype)
            shape, dtype = frames
            frames = np.frombuffer(self._buffer, dtype, int(np.prod(shape))).reshape(shape)
        return indices, frames

    def _send(self, request: tuple) -> None:
        if not self._pid:
            self._start()
        self._conn.send(request)

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the child: serve until the worker closes its end, then leave without cleanup
            ours.close()
            try:
                _serve(Connection(theirs.detach()), self._buffer, self._read)
            finally:
                os._exit(0)
        theirs.close()
        self._pid, self._conn, self._cpu_live = pid, Connection(ours.detach()), 0.0

    def _stop(self, kill: int = 0) -> str:
        """Reap the child (killing it first with `kill`); how it ended, in words."""
        if kill:
            os.kill(self._pid, kill)
        _, status = os.waitpid(self._pid, 0)
        self._conn.close()
        self._pid, self._conn = 0, None
        self._cpu_done, self._cpu_live = self._cpu_done + self._cpu_live, 0.0
        if os.WIFSIGNALED(status):
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exit code {os.WEXITSTATUS(status)}"

    def __del__(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the child sees the end of its requests and exits


def _serve(conn: Connection, buffer: mmap.mmap, read: Read) -> None:
    rng = np.random.default_rng()
    while True:
        try:
            video, state = conn.recv()
        except EOFError:
            return
        rng.bit_generator.state = state
        try:
            indices, frames = read(video, rng)
        except VideoReadError as err:
            conn.send(("unreadable", err.path, err.reason))
            continue
        except Exception as err:  # a problem of the run, not of the file (DataError, DecoderUnavailable): the worker raises it
            conn.send(("error", _picklable(err)))
            continue
        cpu = time.process_time()
        if frames.nbytes <= len(buffer):
            np.frombuffer(buffer, frames.dtype, frames.size).reshape(frames.shape)[...] = frames
            conn.send(("shared", indices, (frames.shape, frames.dtype), rng.bit_generator.state, cpu))
        else:
            conn.send(("pickled", indices, frames, rng.bit_generator.state, cpu))


def _picklable(err: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
