"""Hand files to an installer through its initrd: write a newc cpio archive and append it.

The Linux kernel unpacks every archive it finds in the initramfs image one after
the other, compressed or not, with zero padding between them, and later files
overwrite earlier ones. Appending a small archive holding `/preseed.cfg` to the
Debian installer's `initrd.gz` is therefore enough for the installer to find it
(d-i's initrd-preseed loads it by itself; boot with `auto=true priority=critical`).
Reading initrds back is builder/image/initrd_list.py's job.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path, PurePosixPath

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
