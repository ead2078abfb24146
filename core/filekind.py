"""What a file is, from its first bytes: told apart so that a file given as a checkpoint that is not
one (text, an HTML error page, an image, a video, an archive, random bytes, ...) is reported as
what it looks like, and only a genuine pickle that needs it is ever pointed at trust_checkpoint.

`sniff(path)` reads at most the first 4 KiB (and, for zip archives, the archive's directory).
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

TORCH_ZIP = "torch-zip"  # torch.save's default format: a zip archive with <name>/data.pkl
TORCH_LEGACY = "torch-legacy"  # torch.save(..., _use_new_zipfile_serialization=False): a pickle of torch's magic number first
PICKLE = "pickle"  # a plain Python pickle (not written by torch.save)
OTHER = "other"
# Legacy torch.save files start with a protocol-2 pickle of this number (torch/serialization.py, MAGIC_NUMBER).
TORCH_LEGACY_PREFIX = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

# (offset, bytes, description) of formats recognized by a fixed signature.
SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (4, b"ftyp", "an MP4/MOV video"),
    (0, b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"),
    (0, b"FLV", "an FLV video"),
    (0, b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (0, b"BZh", "a bzip2-compressed file (decompress it first)"),
    (0, b"\xfd7zXZ\x00", "an xz-compressed file (decompress it first)"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd-compressed file (decompress it first)"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
    (257, b"ustar", "a tar archive"),
    (0, b"%PDF", "a PDF document"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. Keras .h5 weights)"),
    (0, b"\x93NUMPY", "a NumPy .npy array"),
    (0, b"\x7fELF", "an executable (ELF)"),
    (0, b"MATLAB 5.0 MAT-file", "a MATLAB .mat file"),
)


@dataclass(frozen=True)
class FileKind:
    kind: str  # TORCH_ZIP | TORCH_LEGACY | PICKLE | OTHER
    description: str  # "a PNG image", "text (UTF-8)", ...


def sniff(path: str | Path) -> FileKind:
    """What `path` (an existing file) looks like."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(4096)
    if not head:
        return FileKind(OTHER, "an empty file (0 bytes)")
    if head.startswith(TORCH_LEGACY_PREFIX):
        return FileKind(TORCH_LEGACY, "a torch checkpoint (legacy format)")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path, head)
    if head[:4] == b"RIFF":
        return FileKind(
            OTHER, {b"AVI ": "an AVI video", b"WAVE": "a WAV audio file", b"WEBP": "a WebP image"}.get(head[8:12], "a RIFF file")
        )
    for offset, signature, description in SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return FileKind(OTHER, description)
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return FileKind(PICKLE, "a Python pickle, not a torch checkpoint")
    if (safetensors := _safetensors_header(head)) is not None:
        return FileKind(OTHER, safetensors)
    return _text_or_binary(head)


def _zip_kind(path: Path, head: bytes) -> FileKind:
    """torch.save's zip (each entry under <name>/, data.pkl first), a NumPy .npz, or another zip."""
    name_length = struct.unpack("<H", head[26:28])[0] if len(head) >= 30 else 0
    first = head[30 : 30 + name_length].decode("utf-8", "replace")
    if first.endswith("data.pkl") or first.endswith(".format_version"):
        return FileKind(TORCH_ZIP, "a torch checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return FileKind(OTHER, f"a damaged or truncated zip archive (first entry {first!r})")
    if any(n.endswith("/data.pkl") for n in names):
        return FileKind(TORCH_ZIP, "a torch checkpoint")
    if names and all(n.endswith(".npy") for n in names):
        return FileKind(OTHER, "a NumPy .npz archive")
    shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    return FileKind(OTHER, f"a zip archive of {len(names)} file(s): {shown or 'empty'}")


def _safetensors_header(head: bytes) -> str | None:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON."""
    if len(head) < 10 or head[8:9] != b"{":
        return None
    size = struct.unpack("<Q", head[:8])[0]
    if not 2 <= size <= 100_000_000:
        return None
    return "a safetensors file (load it with safetensors.torch.load_file and save the state dict with torch.save)"


def _text_or_binary(head: bytes) -> FileKind:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        text = head[: err.start].decode("utf-8") if err.start > len(head) - 4 else None
    if text is None or sum(c.isprintable() or c in "\r\n\t" for c in text) < 0.95 * max(1, len(text)):
        return FileKind(OTHER, f"random or unknown binary data (first bytes {head[:8].hex(' ')})")
    stripped = text.lstrip().lower()
    if stripped.startswith("version https://git-lfs"):
        return FileKind(OTHER, "a Git LFS pointer, not the file itself (run `git lfs pull`)")
    if stripped.startswith(("<!doctype html", "<html", "<?xml", "<head")):
        return FileKind(OTHER, "an HTML/XML page (a failed download? the server may have sent an error or login page)")
    if stripped.startswith(("{", "[")):
        try:
            json.loads(text)
            return FileKind(OTHER, "JSON text")
        except ValueError:
            return FileKind(OTHER, "JSON text" if stripped.startswith("{") and '":' in text else "text (UTF-8)")
    return FileKind(OTHER, "text (UTF-8)")
