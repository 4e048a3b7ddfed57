"""List the files inside a Linux initrd on the host, without extracting it.

An initrd is one or more cpio archives (newc or odc), each optionally
compressed (gzip, xz, lzma, bzip2, zstd, lz4), concatenated: typically an
uncompressed early-microcode archive first, then the compressed main one.
libguestfs 1.48's ``initrd_list`` cannot read zstd, so the checker downloads
the initrd bytes and lists them here. gzip, xz, lzma and bzip2 are decoded with
the standard library; zstd and lz4 with the ``zstd``/``lz4`` commands through
builder/run.py (the ``zstandard`` module is used instead when it is installed).
"""

from __future__ import annotations

import bz2
import logging
import lzma
import re
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UsageError
from builder.run import run

log = logging.getLogger(__name__)

NEWC_MAGICS = (b"070701", b"070702")
ODC_MAGIC = b"070707"
TRAILER = "TRAILER!!!"

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
BZIP2_MAGIC = b"BZh"
LZMA_ALONE_MAGIC = b"\x5d\x00\x00"

S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFREG = 0o100000


class InitrdError(UsageError):
    """The bytes are not an initrd this module can read."""


@dataclass(frozen=True)
class InitrdEntry:
    name: str  # as stored, without a leading "./" or "/"
    mode: int
    size: int
    data: bytes  # file contents (symlink target for links); empty for directories
    archive: int  # index of the cpio archive (segment) it came from
    compression: str  # "none", "gzip", "xz", "lzma", "bzip2", "zstd" or "lz4"

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR

    @property
    def is_file(self) -> bool:
        return self.mode & S_IFMT == S_IFREG


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _parse_cpio(
    data: bytes, pos: int, archive: int, compression: str
) -> tuple[list[InitrdEntry], int]:
    """Parse one cpio archive starting at ``pos``; return its entries and the end offset."""
    entries: list[InitrdEntry] = []
    while True:
        magic = data[pos : pos + 6]
        if magic in NEWC_MAGICS:
            head = data[pos : pos + 110]
            if len(head) < 110:
                raise InitrdError(f"truncated cpio header at offset {pos}")
            try:
                fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
            except ValueError:
                raise InitrdError(f"corrupt newc cpio header at offset {pos}") from None
            mode, filesize, namesize = fields[1], fields[6], fields[11]
            name_start = pos + 110
            data_start = name_start + _align4(110 + namesize) - 110
            data_end = data_start + filesize
            next_pos = pos + _align4(data_end - pos)
        elif magic == ODC_MAGIC:
            head = data[pos : pos + 76]
            if len(head) < 76:
                raise InitrdError(f"truncated cpio header at offset {pos}")
            try:
                mode = int(head[18:24], 8)
                namesize = int(head[59:65], 8)
                filesize = int(head[65:76], 8)
            except ValueError:
                raise InitrdError(f"corrupt odc cpio header at offset {pos}") from None
            name_start = pos + 76
            data_start = name_start + namesize
            data_end = data_start + filesize
            next_pos = data_end
        else:
            raise InitrdError(f"expected a cpio header at offset {pos}, found {magic!r}")
        if data_end > len(data):
            raise InitrdError(f"cpio member at offset {pos} runs past the end of the data")
        raw_name = data[name_start : name_start + namesize].rstrip(b"\x00")
        name = raw_name.decode("utf-8", "surrogateescape")
        if name == TRAILER:
            return entries, next_pos
        while name.startswith("./"):
            name = name[2:]
        name = name.lstrip("/")
        if name not in ("", "."):
            entries.append(
                InitrdEntry(name, mode, filesize, data[data_start:data_end], archive, compression)
            )
        pos = next_pos


def _zstandard_decompress(blob: bytes) -> bytes | None:
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    out = bytearray()
    while blob.startswith(ZSTD_MAGIC):
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out += dobj.decompress(blob)
        blob = dobj.unused_data
    return bytes(out)


def _decompress_with_command(program: str, blob: bytes) -> bytes:
    """zstd and lz4 streams: the command decodes them (concatenated frames too)."""
    with tempfile.TemporaryDirectory(prefix="azbuild-initrd-") as tmp:
        src = Path(tmp) / "in"
        dst = Path(tmp) / "out"
        src.write_bytes(blob)
        out_args = ["-o", str(dst)] if program == "zstd" else [str(dst)]
        run([program, "-d", "-q", "-f", str(src), *out_args])
        return dst.read_bytes()


def _u32(data: bytes, pos: int) -> int:
    if pos + 4 > len(data):
        raise InitrdError("truncated compressed stream in the initrd")
    return int.from_bytes(data[pos : pos + 4], "little")


def _zstd_end(data: bytes, pos: int) -> int:
    """End offset of the zstd frames starting at ``pos`` (zstd refuses trailing padding)."""
    while data[pos : pos + 4] == ZSTD_MAGIC or (
        len(data) >= pos + 4 and _u32(data, pos) & 0xFFFFFFF0 == 0x184D2A50
    ):
        if data[pos : pos + 4] != ZSTD_MAGIC:  # skippable frame
            pos += 8 + _u32(data, pos + 4)
            continue
        fhd = data[pos + 4]
        single = (fhd >> 5) & 1
        fcs = (single, 2, 4, 8)[fhd >> 6]
        pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
        while True:
            if pos + 3 > len(data):
                raise InitrdError("truncated zstd frame in the initrd")
            bh = int.from_bytes(data[pos : pos + 3], "little")
            btype, bsize = (bh >> 1) & 3, bh >> 3
            pos += 3 + (1 if btype == 1 else bsize)
            if bh & 1:
                break
        pos += 4 if fhd & 4 else 0
    return min(pos, len(data))


def _lz4_end(data: bytes, pos: int) -> int:
    """End offset of the lz4 stream (legacy or frame format) starting at ``pos``."""
    if data[pos : pos + 4] == LZ4_LEGACY_MAGIC:
        pos += 4
        while pos + 4 <= len(data):
            size = _u32(data, pos)
            if size == 0 or size == _u32(LZ4_LEGACY_MAGIC, 0) or pos + 4 + size > len(data):
                break
            pos += 4 + size
        return pos
    flg = data[pos + 4]
    pos += 7 + (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0)
    while True:
        size = _u32(data, pos)
        pos += 4
        if size == 0:
            break
        pos += (size & 0x7FFFFFFF) + (4 if flg & 0x10 else 0)
    return pos + (4 if flg & 0x04 else 0)


def _decompress(data: bytes, pos: int) -> tuple[str, bytes, int]:
    """Decompress the stream at ``pos``; return (method, bytes, end offset)."""
    head = data[pos : pos + 6]
    if head.startswith(GZIP_MAGIC):
        gz = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = gz.decompress(data[pos:])
        return "gzip", out, len(data) - len(gz.unused_data)
    if head.startswith(XZ_MAGIC):
        xz = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        out = xz.decompress(data[pos:])
        return "xz", out, len(data) - len(xz.unused_data)
    if head.startswith(BZIP2_MAGIC):
        bz = bz2.BZ2Decompressor()
        out = bz.decompress(data[pos:])
        return "bzip2", out, len(data) - len(bz.unused_data)
    if head.startswith(LZMA_ALONE_MAGIC):
        lz = lzma.LZMADecompressor(lzma.FORMAT_ALONE)
        out = lz.decompress(data[pos:])
        return "lzma", out, len(data) - len(lz.unused_data)
    if head.startswith(ZSTD_MAGIC):
        end = _zstd_end(data, pos)
        blob = data[pos:end]
        out_z = _zstandard_decompress(blob)
        if out_z is None:
            out_z = _decompress_with_command("zstd", blob)
        return "zstd", out_z, end
    if head.startswith((LZ4_LEGACY_MAGIC, LZ4_FRAME_MAGIC)):
        end = _lz4_end(data, pos)
        return "lz4", _decompress_with_command("lz4", data[pos:end]), end
    raise InitrdError(f"unknown data at offset {pos} of the initrd: {head!r}")


def _skip_padding(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] == 0:
        pos += 1
    return pos


def iter_initrd(data: bytes) -> Iterator[InitrdEntry]:
    """Yield every member of every (compressed or plain) cpio archive in ``data``."""
    pos = _skip_padding(data, 0)
    archive = 0
    if pos >= len(data):
        raise InitrdError("the initrd is empty")
    while pos < len(data):
        if data[pos : pos + 6] in (*NEWC_MAGICS, ODC_MAGIC):
            entries, pos = _parse_cpio(data, pos, archive, "none")
        else:
            try:
                method, plain, pos = _decompress(data, pos)
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
                raise InitrdError(f"cannot decompress the initrd: {exc}") from None
            log.debug("initrd segment %d: %s, %d bytes uncompressed", archive, method, len(plain))
            entries = []
            inner = _skip_padding(plain, 0)
            while inner < len(plain):  # a compressed stream may hold several archives
                more, inner = _parse_cpio(plain, inner, archive, method)
                entries += more
                inner = _skip_padding(plain, inner)
        yield from entries
        archive += 1
        pos = _skip_padding(data, pos)


def list_initrd(data: bytes) -> list[InitrdEntry]:
    """All members of the initrd, in archive order."""
    return list(iter_initrd(data))


def list_initrd_file(path: Path) -> list[InitrdEntry]:
    return list_initrd(path.read_bytes())


_MODULE_RE = re.compile(r"(?:^|/)([^/]+)\.ko(?:\.(?:xz|gz|zst|bz2))?$")


def module_name(path: str) -> str | None:
    """``lib/modules/6.1.0/kernel/drivers/hv/hv_vmbus.ko.xz`` -> ``hv_vmbus``; else None.
    Dashes are folded into underscores as the kernel does."""
    m = _MODULE_RE.search(path)
    return m.group(1).replace("-", "_") if m else None


def modules_in(entries: list[InitrdEntry]) -> set[str]:
    """Names of the kernel modules an initrd holds."""
    return {n for e in entries if e.is_file and (n := module_name(e.name)) is not None}


def kernel_versions_in(entries: list[InitrdEntry]) -> set[str]:
    """Kernel versions whose module trees the initrd holds (``[usr/]lib/modules/<ver>/``)."""
    versions: set[str] = set()
    for e in entries:
        parts = e.name.split("/")
        if parts[:1] == ["usr"]:
            parts = parts[1:]
        if len(parts) >= 3 and parts[0] == "lib" and parts[1] == "modules":
            versions.add(parts[2])
    return versions

