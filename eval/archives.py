"""Fetching and unpacking evaluation-dataset archives, for the tasks' preparation steps
(`python -m eval.prepare <task>`).

`download` goes through a .part file whose size must match the server's and is resumed by a rerun;
an archive already there is not fetched again. `extract` unpacks a .zip or .tar(.gz), merging a
wrapper folder away (DAVIS/..., VIP_Fine/...) unless it is one of the layout's own folders.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Collection
from pathlib import Path

from core.download import DownloadError, download_file

log = logging.getLogger(__name__)


def download(url: str, target: Path) -> Path:
    """Fetch `url` to `target` (skipped when `target` exists); a cut transfer is resumed by a rerun."""
    if target.is_file():
        log.info("using %s", target)
        return target
    log.info("downloading %s", url)
    try:
        download_file(url, target)
    except DownloadError as exc:
        raise OSError(f"could not download {url} ({exc}); check the network or fetch it by hand into {target.parent}") from exc
    return target


def extract(archive: Path, into: Path, layout_folders: Collection[str] = ()) -> None:
    """Unpack a .zip or .tar(.gz) into `into`. A single top-level folder is a wrapper and is merged
    away, unless its name is in `layout_folders` (the dataset's own top-level folders)."""
    with tempfile.TemporaryDirectory(dir=into.parent if into.parent.exists() else None) as tmp:
        staging = Path(tmp)
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(staging, filter="data")
        else:
            raise ValueError(f"{archive} is neither a zip nor a tar archive; download it again")
        entries = [e for e in staging.iterdir() if not e.name.startswith(("__MACOSX", "."))]
        wrapped = len(entries) == 1 and entries[0].is_dir() and entries[0].name not in layout_folders
        top = entries[0] if wrapped else staging
        into.mkdir(parents=True, exist_ok=True)
        for entry in top.iterdir():
            destination = into / entry.name
            if destination.exists():
                shutil.rmtree(destination) if destination.is_dir() else destination.unlink()
            shutil.move(str(entry), destination)
