"""Worker functions for tests/test_filepool.py, in a module of their own so that a spawned worker
can import them. Nothing here imports torch at module level: a worker that finds torch already
imported inherited it from its parent, which is what the pool must never allow."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rsp.decoders import DECODERS
from rsp.probe import VideoProbe, probe_video

CRASH_MARK = "crash"  # a video whose name holds this makes `probe_crashing_in_torchcodec` segfault
STALL_MARK = "stall"  # ... and this makes `probe_stalling` sleep for good


def segfault() -> None:
    """A real SIGSEGV in native code: reading address 0. Without faulthandler's dump: a process
    forked from a pytest worker inherits it, and its 50-line stack in the CI log is the intended crash."""
    faulthandler.disable()
    ctypes.string_at(0)


def square_or_crash(n: int) -> int:
    if n == 13:
        segfault()
    return n * n


def square_or_stall(n: int) -> int:
    if n == 7:
        time.sleep(3600)
    return n * n


def inherited_modules(_: object) -> tuple[int, bool]:
    """(this worker's pid, whether torch was imported before the worker ran anything)."""
    return os.getpid(), "torch" in sys.modules


def probe_crashing_in_torchcodec(path: Path, decoders: Sequence[str] = DECODERS) -> VideoProbe:
    """rsp.probe's check, except that torchcodec's decode of a file named with CRASH_MARK dies by
    SIGSEGV (as torchcodec did on a real third-party video)."""
    if CRASH_MARK in Path(path).name and "torchcodec" in decoders:
        segfault()
    return probe_video(path, decoders)


def probe_stalling(path: Path, decoders: Sequence[str] = DECODERS) -> VideoProbe:
    if STALL_MARK in Path(path).name:
        time.sleep(3600)
    return probe_video(path, decoders)
