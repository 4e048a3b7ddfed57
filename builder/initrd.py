"""Hand files to an installer through its initrd: write a newc cpio archive and append it.

The Linux kernel unpacks every archive it finds in the initramfs image one after
the other, compressed or not, with zero padding between them, and later files
overwrite earlier ones. Appending a small archive holding `/preseed.cfg` to the
Debian installer's `initrd.gz` is therefore enough for the installer to find it
(`auto=true priority=critical` + `file=/preseed.cfg` is d-i's default lookup).
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import zlib
from pathlib import Path, PurePosixPath

from builder.errors import BuildError

log = logging.getLogger(__name__)

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"
_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_HEADER_LEN = 110


def _pad4(length: int) -> int:
    return (4 - length % 4) % 4


def _entry(ino: int, mode: int, name: str, data: bytes, mtime: int) -> bytes:
    encoded = name.encode() + b"\0"
    nlink = 2 if mode & _S_IFDIR else 1
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = _MAGIC + b"".join(b"%08X" % value for value in fields)
    out = header + encoded + b"\0" * _pad4(_HEADER_LEN + len(encoded))
    return out + data + b"\0" * _pad4(len(data))


def newc_archive(files: dict[str, bytes], *, mtime: int = 0, mode: int = 0o644) -> bytes:
    """A cpio archive in the "new ASCII" (newc) format the kernel's initramfs unpacker reads.

    Keys are paths relative to the archive root ("preseed.cfg", "etc/x.conf");
    parent directories get their own entries (mode 0755), files are owned by
    root with `mode`. Entries are sorted, so the output is deterministic.
    """
    entries: dict[str, bytes | None] = {}
    for raw_name, content in files.items():
        path = PurePosixPath(raw_name.lstrip("/"))
        if not path.parts or ".." in path.parts:
            raise ValueError(f"bad path for a cpio archive: {raw_name!r}")
        for parent in reversed(path.parents[:-1]):
            entries.setdefault(str(parent), None)
        entries[str(path)] = content
    chunks: list[bytes] = []
    for ino, name in enumerate(sorted(entries), start=1):
        data = entries[name]
        if data is None:
            chunks.append(_entry(ino, _S_IFDIR | 0o755, name, b"", mtime))
        else:
            chunks.append(_entry(ino, _S_IFREG | mode, name, data, mtime))
    chunks.append(_entry(0, 0, _TRAILER, b"", 0))
    archive = b"".join(chunks)
    return archive + b"\0" * ((512 - len(archive) % 512) % 512)


def append_to_initrd(initrd: Path, files: dict[str, bytes], dest: Path) -> None:
    """Write `dest`: the bytes of `initrd`, padded to 4 bytes, then `files` as a gzip-compressed
    newc archive. The original initrd (usually a cached extract) is left unchanged."""
    original = initrd.read_bytes()
    addition = gzip.compress(newc_archive(files), mtime=0)
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as out:
        out.write(original)
        out.write(b"\0" * _pad4(len(original)))
        out.write(addition)
    os.replace(tmp, dest)
    log.debug("appended %s to %s -> %s", ", ".join(sorted(files)), initrd, dest)


def read_initrd(data: bytes) -> dict[str, bytes]:
    """Every regular file in an initramfs image, archive after archive, as the kernel
    unpacks it (later entries win). Handles uncompressed, gzip and xz segments; zstd and
    other compressions raise BuildError."""
    files: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        if data.startswith(_MAGIC, pos):
            pos = _read_newc(data, pos, files)
        elif data.startswith(b"\x1f\x8b", pos):
            inner, pos = _decompress(zlib.decompressobj(wbits=31), data, pos)
            _read_all_newc(inner, files)
        elif data.startswith(b"\xfd7zXZ\x00", pos):
            inner, pos = _decompress(lzma.LZMADecompressor(), data, pos)
            _read_all_newc(inner, files)
        else:
            raise BuildError(
                f"unsupported initrd segment at byte {pos} (starts {data[pos:pos + 6].hex()})"
            )
    return files


def _decompress(
    decompressor: zlib._Decompress | lzma.LZMADecompressor, data: bytes, pos: int
) -> tuple[bytes, int]:
    inner = decompressor.decompress(data[pos:])
    rest = decompressor.unused_data
    return inner, len(data) - len(rest)


def _read_all_newc(data: bytes, files: dict[str, bytes]) -> None:
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
        elif data.startswith(_MAGIC, pos):
            pos = _read_newc(data, pos, files)
        else:
            raise BuildError(f"not a newc cpio archive at byte {pos} of a decompressed segment")


def _read_newc(data: bytes, pos: int, files: dict[str, bytes]) -> int:
    """Read one archive starting at `pos` up to its trailer; return the position after it."""
    while True:
        header = data[pos:pos + _HEADER_LEN]
        if len(header) < _HEADER_LEN or not header.startswith(_MAGIC):
            raise BuildError(f"truncated or corrupt cpio header at byte {pos}")
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + _HEADER_LEN
        name = data[name_start:name_start + namesize - 1].decode(errors="replace")
        data_start = name_start + namesize + _pad4(_HEADER_LEN + namesize)
        end = data_start + filesize
        pos = end + _pad4(filesize)
        if name == _TRAILER:
            return pos
        if mode & 0o170000 == _S_IFREG:
            files[name] = data[data_start:end]
