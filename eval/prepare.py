"""Download and prepare the evaluation datasets (for users with network access).

    python -m eval.prepare davis --root data/DAVIS [--resize 880x480]
    python -m eval.prepare jhmdb --root data/JHMDB
    python -m eval.prepare vip --root data/VIP_Fine --archive ~/Downloads/VIP_Fine.zip

DAVIS-2017 trainval 480p comes from the official ETH server. `--resize 880x480` also writes the
frames and masks resized with NEAREST to JPEGImages/880x480 and Annotations/880x480, the
pre-resize RSP's published numbers used (evaluate with davis_resolution=880x480; the network
still sees 832x480). JHMDB's frames, joints and splits come from the dataset's file server (the
URLs as published at the time of writing; `--base-url` if they move). VIP is distributed through
cloud drives that need a browser: download VIP_Fine yourself and pass the archive.
`--downloads DIR` keeps (and reuses) the archives; an archive already there is not fetched again.
Each command ends by reading the prepared root with the evaluator's own reader.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from rsp.kinetics import DownloadError, download_file

log = logging.getLogger(__name__)

DAVIS_URL = "https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip"
JHMDB_BASE_URL = "http://files.is.tue.mpg.de/jhmdb/"
JHMDB_ARCHIVES = ("Rename_Images.tar.gz", "joint_positions.zip", "splits.zip")
RSP_DAVIS_SIZE = (880, 480)  # (width, height) of RSP's pre-resized DAVIS


def download(url: str, target: Path) -> Path:
    """Fetch `url` to `target` with rsp.kinetics.download_file: through a .part file whose size must
    match the server's, resumed by a rerun; skip when `target` exists."""
    if target.is_file():
        log.info("using %s", target)
        return target
    log.info("downloading %s", url)
    try:
        download_file(url, target)
    except DownloadError as exc:
        raise OSError(f"could not download {url} ({exc}); check the network or fetch it by hand into {target.parent}") from exc
    return target


def extract(archive: Path, into: Path) -> None:
    """Unpack a .zip or .tar(.gz) into `into`, merging a single top-level folder away (DAVIS/...)."""
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
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() and not _is_dataset_dir(entries[0]) else staging
        into.mkdir(parents=True, exist_ok=True)
        for entry in top.iterdir():
            destination = into / entry.name
            if destination.exists():
                shutil.rmtree(destination) if destination.is_dir() else destination.unlink()
            shutil.move(str(entry), destination)


def _is_dataset_dir(path: Path) -> bool:
    """Top-level folders that are part of a layout, not a wrapper to merge away."""
    return path.name in {"Rename_Images", "joint_positions", "splits", "JPEGImages", "Annotations", "Images", "lists"}


def resize_davis(root: Path, size: tuple[int, int] = RSP_DAVIS_SIZE, resolution: str = "480p") -> str:
    """Write frames and masks resized to `size` (width, height) with NEAREST; returns the new
    resolution folder name ("880x480")."""
    name = f"{size[0]}x{size[1]}"
    for kind, pattern in (("JPEGImages", "*.jpg"), ("Annotations", "*.png")):
        for source in sorted((root / kind / resolution).rglob(pattern)):
            target = root / kind / name / source.relative_to(root / kind / resolution)
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(source) as image:
                resized = image.resize(size, Image.NEAREST)
            if kind == "JPEGImages":
                resized.save(target, quality=95)
            else:
                resized.save(target)  # keeps the palette: ids stay ids
    return name


def prepare_davis(root: Path, url: str = DAVIS_URL, resize: tuple[int, int] | None = None, downloads: Path | None = None) -> list:
    from eval.davis import read_davis

    archive = download(url, (downloads or root.parent) / Path(url).name)
    extract(archive, root)
    sequences = read_davis(root, "val")
    if resize:
        read_davis(root, "val", resize_davis(root, resize))
    return sequences


def prepare_jhmdb(root: Path, base_url: str = JHMDB_BASE_URL, downloads: Path | None = None) -> list:
    from eval.jhmdb import read_jhmdb

    for name in JHMDB_ARCHIVES:
        extract(download(base_url.rstrip("/") + "/" + name, (downloads or root.parent) / name), root)
    return read_jhmdb(root, 1)


def prepare_vip(root: Path, archive: Path) -> list:
    from eval.vip import read_vip

    if not archive.is_file():
        raise FileNotFoundError(f"{archive} does not exist; download VIP_Fine (see the VIP dataset page) and pass --archive")
    extract(archive, root)
    return read_vip(root, "val")


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resize {text!r} must look like 880x480 (width x height)") from None
    return width, height


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("davis", "jhmdb", "vip"))
    parser.add_argument("--root", type=Path, required=True, help="where the prepared dataset goes")
    parser.add_argument("--downloads", type=Path, help="folder for the archives (default: next to --root)")
    parser.add_argument("--url", default=DAVIS_URL, help="DAVIS archive URL")
    parser.add_argument("--resize", type=_size, nargs="?", const=RSP_DAVIS_SIZE, help="DAVIS: also write a WxH copy (880x480)")
    parser.add_argument("--base-url", default=JHMDB_BASE_URL, help="JHMDB file server")
    parser.add_argument("--archive", type=Path, help="VIP: the downloaded VIP_Fine archive")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.dataset == "davis":
        items = prepare_davis(args.root, args.url, args.resize, args.downloads)
    elif args.dataset == "jhmdb":
        items = prepare_jhmdb(args.root, args.base_url, args.downloads)
    else:
        if args.archive is None:
            parser.error("vip needs --archive PATH to the downloaded VIP_Fine archive")
        items = prepare_vip(args.root, args.archive)
    print(f"{args.dataset}: {len(items)} evaluation videos ready in {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
