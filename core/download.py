"""Downloading one file over HTTP(S), resumably: the bytes go to `<dest>.part`, a rerun continues it
with a Range request, and the file is renamed to `dest` only when its size equals the size the
server announced. Used by the Kinetics preparation (rsp/kinetics.py) and the evaluation datasets'
(eval/archives.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

CHUNK = 1 << 20  # bytes per read


class DownloadError(RuntimeError):
    """A download failed; a partial file is kept so that rerunning resumes it."""


def download_file(url: str, dest: Path, timeout: float = 60.0) -> bool:
    """Fetch `url` to `dest`, resuming `dest.part` with an HTTP Range request; the finished size
    must equal the size the server announced. Returns False when `dest` already existed."""
    if dest.exists():  # renamed from .part only after its size was verified
        return False
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = urlopen(Request(url, headers={"Range": f"bytes={offset}-"} if offset else {}), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and offset:  # nothing left past `offset`: complete already, or longer than the file
            part.unlink()
            return download_file(url, dest, timeout)
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (URLError, OSError) as err:
        raise DownloadError(f"{url}: cannot connect ({getattr(err, 'reason', err)})") from err
    with response:
        resumed = offset > 0 and response.status == 206
        total = _announced_size(response.headers, resumed)
        received = offset if resumed else 0
        try:
            with part.open("ab" if resumed else "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
        except OSError as err:
            raise DownloadError(f"{url}: connection lost after {received} bytes ({err}); rerun to resume") from err
    if total is not None and received != total:
        raise DownloadError(f"{url}: received {received} of {total} bytes into {part}; rerun to resume")
    os.replace(part, dest)
    return True


def _announced_size(headers: Any, resumed: bool) -> int | None:
    if resumed:  # Content-Range: bytes <first>-<last>/<total>
        total = (headers.get("Content-Range") or "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None
